/// A jailer release number, from `jailer --version` ("Jailer v1.12.1").
public struct JailerVersion: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var major: Int
    public var minor: Int
    public var patch: Int

    public init(major: Int, minor: Int, patch: Int) {
        self.major = major
        self.minor = minor
        self.patch = patch
    }

    /// Parses the first `vX.Y.Z` (or `X.Y.Z`) in `text`.
    public init?(parsing text: String) {
        for word in text.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }) {
            var candidate = Substring(word)
            if candidate.first == "v" { candidate = candidate.dropFirst() }
            let core = candidate.split(separator: "-", maxSplits: 1).first ?? candidate
            let parts = core.split(separator: ".")
            guard parts.count == 3, let major = Int(parts[0]), let minor = Int(parts[1]), let patch = Int(parts[2]) else {
                continue
            }
            self.init(major: major, minor: minor, patch: patch)
            return
        }
        return nil
    }

    /// From 1.13 on the jailer no longer requires "firecracker" in the exec file name.
    public var requiresFirecrackerInExecName: Bool { self < JailerVersion(major: 1, minor: 13, patch: 0) }

    public static func < (lhs: JailerVersion, rhs: JailerVersion) -> Bool {
        (lhs.major, lhs.minor, lhs.patch) < (rhs.major, rhs.minor, rhs.patch)
    }

    public var description: String { "v\(major).\(minor).\(patch)" }
}

/// Turns a failed jailer run into a typed error that keeps the jailer's own message verbatim and
/// adds what to do.
public enum JailerFailure {
    /// v1.12.1 reports setup failures by panicking: stderr holds
    /// `thread 'main' panicked at ...:` then `Jailer error: <message>`, and the process dies of
    /// SIGABRT (a shell shows 134). Command-line errors instead print
    /// `Failed to parse arguments: ...` and exit with status 1.
    public static func classify(id: String, termination: ProcessTermination, standardError: String) -> JailError {
        let message = jailerMessage(in: standardError)
        return .jailerFailed(id: id, termination: termination, kind: kind(of: message), message: message)
    }

    /// The jailer's message: the text after `Jailer error: `, else the first line that is not
    /// panic boilerplate, else the whole (trimmed) stderr.
    public static func jailerMessage(in standardError: String) -> String {
        let lines = standardError.split(separator: "\n").map { String($0).trimmingWhitespace() }
        if let line = lines.first(where: { $0.hasPrefix("Jailer error: ") }) {
            return String(line.dropFirst("Jailer error: ".count))
        }
        let meaningful = lines.filter { line in
            !line.isEmpty && !line.hasPrefix("thread 'main' panicked") && !line.hasPrefix("note: run with")
                && !line.hasPrefix("Error: ")
        }
        if let first = meaningful.first { return first }
        let trimmed = standardError.trimmingWhitespace()
        return trimmed.isEmpty ? "(no message on stderr)" : trimmed
    }

    /// Which known failure the message describes (see `JailerError` in the jailer's main.rs).
    public static func kind(of message: String) -> JailerFailureKind {
        func has(_ text: String) -> Bool { message.contains(text) }
        if has("Failed to parse arguments") || has("Argument '") { return .invalidArguments }
        if has("Invalid instance ID") { return .invalidIdentifier }
        if has("must contain \"firecracker\"") { return .execFileName }
        if has("via mknod inside the jail: File exists") || (has(".pid") && has("File exists"))
            || has("Failed to create the jail root directory before pivoting root")
        {
            return .staleJail
        }
        if (has("Controller ") && has(" is unavailable")) || has("Hierarchy not found") || has("cgroupsv2 hierarchy missing")
            || has("configurations not found in") || has("Failed to inherit cgroups configurations")
        {
            return .cgroupUnavailable
        }
        if has("Failed to write to cgroups file") || has("Invalid format for cgroups") || has("Cgroup invalid file")
            || has("Parent cgroup path is invalid") || has("invalid cgroup version")
            || (has("Failed to write to") && has("/sys/fs/cgroup"))
        {
            return .cgroupWrite
        }
        if has("Invalid resource argument") || has("Invalid format for resources limits")
            || has("Invalid limit value for resource") || has("Failed to set limit for resource")
        {
            return .resourceLimit
        }
        if has("netns") || has("/netns/") { return .networkNamespace }
        if has("Failed to exec into Firecracker") { return .execFailed }
        if has("is not a directory") { return .chrootBaseMissing }
        if has("is not a file") { return .firecrackerMissing }
        if message.hasPrefix("Failed to canonicalize path ") {
            // The same message covers --exec-file and --chroot-base-dir; the configuration-aware
            // overload decides exactly, this one goes by the file name.
            let path = message.dropFirst("Failed to canonicalize path ".count).split(separator: ":").first ?? ""
            let name = path.split(separator: "/").last ?? ""
            return name.contains("firecracker") ? .firecrackerMissing : .chrootBaseMissing
        }
        if has("Permission denied") || has("Operation not permitted") || has("Failed to copy")
            || has("Failed to pivot root") || has("Failed to bind mount") || has("Failed to change owner")
            || has("Failed to create directory") || has("Failed to unshare")
        {
            return .chrootPermission
        }
        return .other
    }

    /// Like `classify`, but tells a missing chroot base from a missing Firecracker (both are
    /// "Failed to canonicalize path X") by comparing X with the configuration.
    public static func classify(
        id: String, termination: ProcessTermination, standardError: String, configuration: JailerConfiguration
    ) -> JailError {
        let message = jailerMessage(in: standardError)
        var kind = kind(of: message)
        if message.hasPrefix("Failed to canonicalize path ") {
            let path = message.dropFirst("Failed to canonicalize path ".count)
            if path.hasPrefix(configuration.chrootBase.string + ":") {
                kind = .chrootBaseMissing
            } else if path.hasPrefix(configuration.firecrackerBinary.string + ":") {
                kind = .firecrackerMissing
            }
        }
        return .jailerFailed(id: id, termination: termination, kind: kind, message: message)
    }
}
