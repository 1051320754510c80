/// A request body that can be checked before it is sent: values Firecracker (or the spec) can
/// never accept fail locally, with ``FirecrackerAPIError/invalidArgument(_:hint:)``, instead of
/// costing a round trip (or, for a snapshot load, the VMM). ``APIRequest/json(_:_:_:since:)``
/// runs the check for every body that conforms.
public protocol LocallyValidated {
    /// Throws `.invalidArgument` naming the first field out of range.
    func validate() throws(FirecrackerAPIError)
}

/// An integer passed to one of the `Int` convenience initializers that the field's wire type
/// (unsigned, as Firecracker reads it) cannot hold. The initializer stores the value clamped
/// and remembers this; ``LocallyValidated/validate()`` reports it, so nothing is sent.
/// Assigning the property afterwards forgets it.
struct UnrepresentableInteger: Sendable, Hashable {
    var field: String
    var value: Int
    var range: String
}

extension FixedWidthInteger where Self: UnsignedInteger {
    /// `value` as this wire type; a value out of range is clamped and recorded in `problems`.
    static func wire(_ value: Int, field: String, into problems: inout [UnrepresentableInteger]) -> Self {
        if let exact = Self(exactly: value) { return exact }
        problems.append(UnrepresentableInteger(field: field, value: value, range: "0...\(Self.max)"))
        return Self(clamping: value)
    }
}

enum Check {
    /// Throws for the first recorded unrepresentable input.
    static func representable(_ problems: [UnrepresentableInteger], in type: String) throws(FirecrackerAPIError) {
        guard let problem = problems.first else { return }
        throw .invalidArgument(
            "\(type).\(problem.field) = \(problem.value) is outside \(problem.range), the range Firecracker reads it in",
            hint: "pass a value in \(problem.range)")
    }

    /// Throws unless `value` lies in `range` (nil passes: the field is unset).
    static func range<T: BinaryInteger & Sendable>(
        _ value: T?, _ range: ClosedRange<T>, field: String, in type: String, hint: String? = nil
    ) throws(FirecrackerAPIError) {
        guard let value, !range.contains(value) else { return }
        throw .invalidArgument(
            "\(type).\(field) = \(value) is outside \(range.lowerBound)...\(range.upperBound)",
            hint: hint ?? "Firecracker refuses it; pass a value in \(range.lowerBound)...\(range.upperBound)")
    }

    /// Throws unless `value` is at least `minimum` (nil passes).
    static func atLeast<T: BinaryInteger & Sendable>(
        _ value: T?, _ minimum: T, field: String, in type: String, hint: String? = nil
    ) throws(FirecrackerAPIError) {
        guard let value, value < minimum else { return }
        throw .invalidArgument(
            "\(type).\(field) = \(value) is below the minimum of \(minimum)",
            hint: hint ?? "Firecracker's API spec requires at least \(minimum)")
    }
}
