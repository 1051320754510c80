public import SystemPackage

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Where the jailer puts one VM's jail, and how paths inside the jail map to the host. Firecracker
/// sees only the jail's `root/` as `/`, so every path it is given (kernel, drives, sockets, log)
/// must be the in-jail path, while the host reaches the same file under `root/`.
public struct JailLayout: Sendable, Hashable {
    /// Default `--api-sock` inside the jail; the jailer creates `/run` for it, owned by the VM user.
    public static let defaultAPISocket: FilePath = "/run/firecracker.socket"
    /// `sun_path` holds 108 bytes including the terminating NUL (107 usable), but SwiftNIO,
    /// which the driver connects with, refuses more than 103: the stricter limit applies.
    public static let maximumSocketPathLength = 103

    /// What is under `<base>/<exec file name>/<id>`.
    public enum Kind: Sendable, Hashable {
        /// A jail: `root/` inside it is the VMM's `/` (what the jailer makes and chroots into).
        case jail
        /// An unjailed VMM's directory, its working directory itself: with no chroot there is
        /// no `root/` to make. Each directory a launch makes costs 60-90 µs on an ext4 without
        /// a journal once VMs have been torn down in the last minutes, and its removal again.
        case directory
    }

    public let chrootBase: FilePath
    /// The Firecracker binary's file name (never assumed to be "firecracker").
    public let execFileName: String
    public let id: VMIdentifier
    public let kind: Kind

    public init(chrootBase: FilePath, execFileName: String, id: VMIdentifier, kind: Kind = .jail) {
        self.chrootBase = chrootBase
        self.execFileName = execFileName
        self.id = id
        self.kind = kind
    }

    /// This layout with `kind`.
    public func with(kind: Kind) -> JailLayout {
        JailLayout(chrootBase: chrootBase, execFileName: execFileName, id: id, kind: kind)
    }

    /// The layout of what is on disk for this id: a VM directory without `root/` is an unjailed
    /// VM's. For a VM whose kind nothing recorded (a creation its driver did not finish).
    public func matchingDisk() -> JailLayout {
        var status = stat()
        guard lstat(jailDirectory.string, &status) == 0 else { return self }
        return with(kind: lstat(jailDirectory.appending("root").string, &status) == 0 ? .jail : .directory)
    }

    /// `<base>/<exec file name>`: shared by every VM of this binary.
    public var execDirectory: FilePath { chrootBase.appending(execFileName) }
    /// `<base>/<exec file name>/<id>`: what teardown removes.
    public var jailDirectory: FilePath { execDirectory.appending(id.rawValue) }
    /// `<jail>/root`: the VMM's `/`; for an unjailed VMM its directory (``Kind/directory``).
    public var rootDirectory: FilePath { kind == .jail ? jailDirectory.appending("root") : jailDirectory }
    /// Written by the jailer: the VMM's pid (in the caller's pid namespace).
    public var pidFile: FilePath { rootDirectory.appending(execFileName + ".pid") }
    /// The jailer's copy of the Firecracker binary.
    public var executableCopy: FilePath { rootDirectory.appending(execFileName) }
    /// The host path of the default API socket.
    public var apiSocketHostPath: FilePath { rootDirectory.pushing(Self.defaultAPISocket.removingRoot()) }

    /// Names directly under the jail root that the jailer creates and fails on if they exist.
    public var reservedTopLevelNames: Set<String> {
        ["dev", "run", "old_root", execFileName, execFileName + ".pid"]
    }

    /// Checks and normalizes an in-jail path: absolute, no `..`, not `/` itself, and not one of
    /// the names the jailer creates (`/dev`, `/run`, `/old_root`, the binary and its pid file) —
    /// pre-creating those makes the jailer fail with EEXIST.
    public func validatedJailPath(_ path: FilePath) throws(JailError) -> FilePath {
        guard path.isAbsolute else {
            throw .invalidJailPath(path.string, reason: "not absolute (in-jail paths start at the jail's /)")
        }
        if path.components.contains(where: { $0.kind == .parentDirectory }) {
            throw .invalidJailPath(path.string, reason: "contains '..'")
        }
        let normalized = path.lexicallyNormalized()
        guard let first = normalized.components.first else {
            throw .invalidJailPath(path.string, reason: "is the jail root itself")
        }
        if reservedTopLevelNames.contains(first.string) {
            throw .invalidJailPath(path.string, reason: "/\(first.string) is created by the jailer, which fails if it already exists")
        }
        return normalized
    }

    /// The host path of an in-jail path (any in-jail path, including `/run/...`).
    public func hostPath(forJailPath path: FilePath) throws(JailError) -> FilePath {
        guard path.isAbsolute, !path.components.contains(where: { $0.kind == .parentDirectory }) else {
            throw .invalidJailPath(path.string, reason: "must be absolute and without '..'")
        }
        return rootDirectory.pushing(path.lexicallyNormalized().removingRoot())
    }

    /// The in-jail path of a host path under the jail root; throws for paths outside it.
    public func jailPath(forHostPath path: FilePath) throws(JailError) -> FilePath {
        let normalized = path.lexicallyNormalized()
        guard normalized.isAbsolute, !normalized.components.contains(where: { $0.kind == .parentDirectory }),
            normalized.starts(with: rootDirectory)
        else {
            throw .invalidJailPath(path.string, reason: "is not under the jail root \(rootDirectory)")
        }
        var relative = FilePath("/")
        for component in normalized.components.dropFirst(rootDirectory.components.count) {
            relative.append(component)
        }
        return relative
    }

    /// The host path of an in-jail Unix socket (API socket, vsock), checked against `sun_path`'s
    /// size: with a long chroot base and a 64-character id the host path can exceed it even
    /// though Firecracker's in-jail path is short, and connecting would fail.
    public func socketHostPath(forJailPath path: FilePath = Self.defaultAPISocket) throws(JailError) -> FilePath {
        let host = try hostPath(forJailPath: path)
        let length = host.string.utf8.count
        guard length <= Self.maximumSocketPathLength else {
            throw .socketPathTooLong(path: host.string, length: length, limit: Self.maximumSocketPathLength)
        }
        guard path.string.utf8.count <= Self.maximumSocketPathLength else {
            throw .socketPathTooLong(path: path.string, length: path.string.utf8.count, limit: Self.maximumSocketPathLength)
        }
        return host
    }
}
