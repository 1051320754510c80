/// A Firecracker release, as `GET /version` reports it (`1.12.1`).
///
/// The client compares it against the minimum version of every call and field it sends, so a
/// request the server would not understand fails locally, naming the release that added it.
public struct FirecrackerVersion: Sendable, Hashable, Comparable, Codable, CustomStringConvertible,
    LosslessStringConvertible
{
    public var major: Int
    public var minor: Int
    public var patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int = 0) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// Parses `1.12.1`, `v1.12.1` and `1.13.0-dev` (pre-release suffixes are ignored).
    public init?(_ description: String) {
        var text = Substring(description)
        if text.hasPrefix("v") { text = text.dropFirst() }
        if let dash = text.firstIndex(where: { $0 == "-" || $0 == "+" }) { text = text[..<dash] }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (2...3).contains(parts.count), let major = Int(parts[0]), let minor = Int(parts[1]) else {
            return nil
        }
        let patch = parts.count == 3 ? Int(parts[2]) : 0
        guard let patch else { return nil }
        self.init(major, minor, patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let version = FirecrackerVersion(text) else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(text)' is not a Firecracker version")
        }
        self = version
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    /// The oldest release this client is written and tested against; calls that exist in it
    /// need no version check.
    public static let baseline = FirecrackerVersion(1, 12, 0)
    public static let v1_13 = FirecrackerVersion(1, 13, 0)
    public static let v1_14 = FirecrackerVersion(1, 14, 0)
    public static let v1_15 = FirecrackerVersion(1, 15, 0)
    public static let v1_16 = FirecrackerVersion(1, 16, 0)
}

/// A request body whose fields did not all exist in the baseline release.
///
/// `requiredVersion` returns the newest minimum version among the fields that are actually set,
/// so that a caller on 1.12 can still send the type as long as it leaves the newer fields nil.
public protocol VersionGated {
    /// The oldest Firecracker that accepts this value as populated, and the field that needs it.
    var requiredVersion: (version: FirecrackerVersion, feature: String)? { get }
}

extension VersionGated {
    /// Combines the requirements of several fields; the newest one wins.
    public static func newest(
        _ requirements: (version: FirecrackerVersion, feature: String)?...
    ) -> (version: FirecrackerVersion, feature: String)? {
        requirements.compactMap { $0 }.max { $0.version < $1.version }
    }
}
