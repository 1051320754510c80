#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys
public import Logging
public import SystemPackage

/// One thing to put into a jail before the launch, at `jailPath` (the path Firecracker is given).
public struct StagingRequest: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// A host file the VM only reads (kernel, initrd, read-only drive, snapshot to load): hard
        /// linked when it is on the jail's filesystem, otherwise copied. A link shares the inode,
        /// so the host file's owner and mode are never changed: the VM user must already be able
        /// to read it.
        case readOnly(source: FilePath)
        /// Like `readOnly`, but always a private copy owned by the VM user (mode 0400), for host
        /// files the VM user may not read.
        case readOnlyCopy(source: FilePath)
        /// A drive the VM writes: always a private per-VM copy owned by the VM user (mode 0600),
        /// so the guest never writes the host's image. Reflinked when the filesystem can,
        /// otherwise copied with holes preserved.
        case writableCopy(source: FilePath)
        /// An empty regular file owned by the VM user (mode 0600) for Firecracker to write: its
        /// log and metrics targets must exist beforehand (it opens them without O_CREAT).
        case emptyFile
        /// A FIFO owned by the VM user (mode 0600), for streaming the log or metrics.
        case fifo
        /// A directory owned by the VM user (mode 0700) where Firecracker creates files (snapshot
        /// output, vsock sockets).
        case directory
    }

    public var kind: Kind
    public var jailPath: FilePath

    public init(_ kind: Kind, at jailPath: FilePath) {
        self.kind = kind
        self.jailPath = jailPath
    }

    /// A read-only file at `/<its file name>` unless told otherwise.
    public static func readOnly(_ source: FilePath, at jailPath: FilePath? = nil) -> StagingRequest {
        StagingRequest(.readOnly(source: source), at: jailPath ?? defaultJailPath(for: source))
    }

    public static func readOnlyCopy(_ source: FilePath, at jailPath: FilePath? = nil) -> StagingRequest {
        StagingRequest(.readOnlyCopy(source: source), at: jailPath ?? defaultJailPath(for: source))
    }

    public static func writableCopy(_ source: FilePath, at jailPath: FilePath? = nil) -> StagingRequest {
        StagingRequest(.writableCopy(source: source), at: jailPath ?? defaultJailPath(for: source))
    }

    public static func emptyFile(at jailPath: FilePath) -> StagingRequest { StagingRequest(.emptyFile, at: jailPath) }
    public static func fifo(at jailPath: FilePath) -> StagingRequest { StagingRequest(.fifo, at: jailPath) }
    public static func directory(at jailPath: FilePath) -> StagingRequest { StagingRequest(.directory, at: jailPath) }

    static func defaultJailPath(for source: FilePath) -> FilePath {
        FilePath("/").appending(source.lastComponent?.string ?? "file")
    }

    var source: FilePath? {
        switch kind {
        case .readOnly(let source), .readOnlyCopy(let source), .writableCopy(let source): source
        case .emptyFile, .fifo, .directory: nil
        }
    }
}

/// How a staged item got into the jail.
public enum StagingMethod: String, Sendable, Hashable {
    /// Same inode as the host file (nothing copied, nothing changed on it).
    case hardLink
    /// A copy sharing the host file's extents (FICLONE), copy-on-write.
    case reflink
    /// A byte copy that skipped the source's holes and zero blocks.
    case sparseCopy
    /// Created empty (file, FIFO, directory).
    case created
}

/// A staged item: give Firecracker `jailPath`; the host sees it at `hostPath`.
public struct StagedFile: Sendable, Hashable {
    public var request: StagingRequest
    public var jailPath: FilePath
    public var hostPath: FilePath
    public var method: StagingMethod

    /// True when the jail holds its own inode (removed with the jail), false for a hard link to a
    /// host file (removing the link leaves the host file).
    public var isPerVMCopy: Bool { method != .hardLink }
}

/// Puts files into a jail's root before the jailer runs. The jailer accepts a pre-created root
/// with files in it (it only creates what is missing, then chmods root/ to 0700 and chowns it to
/// the VM user); it fails if `dev/*`, the pid file or `old_root` exist, so those are never
/// created here.
public struct JailStager: Sendable {
    public var layout: JailLayout
    public var uid: UInt32
    public var gid: UInt32
    public var logger: Logger

    public init(layout: JailLayout, uid: UInt32, gid: UInt32, logger: Logger) {
        self.layout = layout
        self.uid = uid
        self.gid = gid
        self.logger = logger
    }

    /// Stages every request in order. On failure, what this call staged is removed again, so
    /// the jail holds nothing half-made.
    public func stage(_ requests: [StagingRequest]) throws(JailError) -> [StagedFile] {
        var staged: [StagedFile] = []
        // The root is opened (and the path to it walked) once for all of them.
        let root = try openRoot()
        defer { close(root) }
        for request in requests {
            do {
                staged.append(try stage(request, root: root))
            } catch {
                for item in staged.reversed() { unstage(item) }
                throw error
            }
        }
        return staged
    }

    /// Stages one request and returns where it is.
    public func stage(_ request: StagingRequest) throws(JailError) -> StagedFile {
        let root = try openRoot()
        defer { close(root) }
        return try stage(request, root: root)
    }

    /// Stages one request under the jail root open at `root`.
    private func stage(_ request: StagingRequest, root: Int32) throws(JailError) -> StagedFile {
        let jailPath = try layout.validatedJailPath(request.jailPath)
        let hostPath = try layout.hostPath(forJailPath: jailPath)
        let id = layout.id.rawValue
        guard let name = jailPath.lastComponent?.string else {
            throw .invalidJailPath(jailPath.string, reason: "has no file name")
        }
        let parents = jailPath.removingLastComponent().components.map(\.string)

        let directory: Int32
        do {
            directory = try JailFileSystem.openOrCreateDirectories(
                at: root, parents, display: layout.rootDirectory.string, mode: 0o700, owner: (uid, gid))
        } catch {
            throw .stagingFailed(id: id, source: request.source?.string ?? "-", destination: hostPath.string, error)
        }
        defer { close(directory) }

        let method: StagingMethod
        switch request.kind {
        case .readOnly(let source):
            method = try stageReadOnly(source: source, into: directory, name: name, hostPath: hostPath)
        case .readOnlyCopy(let source):
            method = try copy(source: source, into: directory, name: name, hostPath: hostPath, mode: 0o400)
        case .writableCopy(let source):
            method = try copy(source: source, into: directory, name: name, hostPath: hostPath, mode: 0o600)
        case .emptyFile:
            method = try create(hostPath: hostPath) { () throws(SystemCallError) in
                let fd = try SystemCallError.check("openat(O_CREAT|O_EXCL)", hostPath.string) {
                    openat(directory, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                }
                defer { close(fd) }
                try SystemCallError.check("fchown", hostPath.string) { fchown(fd, uid, gid) }
                try SystemCallError.check("fchmod", hostPath.string) { fchmod(fd, 0o600) }
            }
        case .fifo:
            method = try create(hostPath: hostPath) { () throws(SystemCallError) in
                try SystemCallError.check("mkfifoat", hostPath.string) { mkfifoat(directory, name, 0o600) }
                try SystemCallError.check("fchownat", hostPath.string) {
                    fchownat(directory, name, uid, gid, AT_SYMLINK_NOFOLLOW)
                }
                try SystemCallError.check("fchmodat", hostPath.string) { fchmodat(directory, name, 0o600, 0) }
            }
        case .directory:
            method = try create(hostPath: hostPath) { () throws(SystemCallError) in
                try SystemCallError.check("mkdirat", hostPath.string) { mkdirat(directory, name, 0o700) }
                try SystemCallError.check("fchownat", hostPath.string) {
                    fchownat(directory, name, uid, gid, AT_SYMLINK_NOFOLLOW)
                }
                try SystemCallError.check("fchmodat", hostPath.string) { fchmodat(directory, name, 0o700, 0) }
            }
        }
        logger.debug(
            "staged into jail",
            metadata: [
                "vm": "\(id)", "jail_path": "\(jailPath)", "host_path": "\(hostPath)", "method": "\(method.rawValue)",
                "source": "\(request.source?.string ?? "-")",
            ])
        return StagedFile(request: request, jailPath: jailPath, hostPath: hostPath, method: method)
    }

    /// Removes a staged item from the jail (a hard link only loses its jail name).
    public func unstage(_ item: StagedFile) {
        var failures: [JailError] = []
        guard let root = try? JailFileSystem.openDirectory(layout.rootDirectory.string) else { return }
        defer { close(root) }
        let parents = item.jailPath.removingLastComponent().components.map(\.string)
        guard let name = item.jailPath.lastComponent?.string,
            let directory = try? JailFileSystem.openOrCreateDirectories(
                at: root, parents, display: layout.rootDirectory.string, mode: 0o700, owner: nil, create: false)
        else { return }
        defer { close(directory) }
        var rootStatus = stat()
        guard fstat(root, &rootStatus) == 0 else { return }
        JailFileSystem.removeTree(
            at: directory, name, display: item.hostPath.string, device: UInt64(rootStatus.st_dev), failures: &failures)
        for failure in failures {
            logger.warning("could not remove staged item", metadata: ["vm": "\(layout.id)", "error": "\(failure)"])
        }
    }

    /// Creates `<base>/<exec>/<id>/root` (an unjailed VM's: `<base>/<exec>/<id>`) as needed
    /// (the base itself must exist, as for the jailer) and opens it.
    func openRoot() throws(JailError) -> Int32 {
        let id = layout.id.rawValue
        let base: Int32
        do {
            base = try JailFileSystem.openDirectory(layout.chrootBase.string)
        } catch {
            throw .chrootBaseUnusable(path: layout.chrootBase.string, reason: error.description)
        }
        defer { close(base) }
        // A teardown removes `<base>/<exec>` when it leaves it empty. If that happens between
        // this making (or finding) it and making `<id>` in it, `<id>` fails with ENOENT: the
        // directory is made again.
        var attempt = 0
        while true {
            attempt += 1
            do {
                if layout.kind == .directory {
                    let exec = try JailFileSystem.openOrCreateDirectories(
                        at: base, [layout.execFileName], display: layout.chrootBase.string, mode: 0o755, owner: nil)
                    defer { close(exec) }
                    return try JailFileSystem.openOrCreateDirectories(
                        at: exec, [id], display: layout.execDirectory.string, mode: 0o700, owner: nil)
                }
                let jail = try JailFileSystem.openOrCreateDirectories(
                    at: base, [layout.execFileName, id], display: layout.chrootBase.string, mode: 0o755, owner: nil)
                defer { close(jail) }
                // The jailer chmods root/ to 0700 and chowns it to the VM user when it runs.
                return try JailFileSystem.openOrCreateDirectories(
                    at: jail, ["root"], display: layout.jailDirectory.string, mode: 0o700, owner: nil)
            } catch {
                if error.errno == ENOENT, attempt < 5 { continue }
                throw .system(id: id, error)
            }
        }
    }

    private func create(hostPath: FilePath, _ body: () throws(SystemCallError) -> Void) throws(JailError) -> StagingMethod {
        do {
            try body()
        } catch {
            throw .stagingFailed(id: layout.id.rawValue, source: "-", destination: hostPath.string, error)
        }
        return .created
    }

    private func stageReadOnly(source: FilePath, into directory: Int32, name: String, hostPath: FilePath)
        throws(JailError) -> StagingMethod
    {
        let id = layout.id.rawValue
        let (resolved, sourceStatus) = try resolveSource(source, hostPath: hostPath)
        var directoryStatus = stat()
        if fstat(directory, &directoryStatus) != 0 {
            throw .stagingFailed(
                id: id, source: source.string, destination: hostPath.string,
                SystemCallError(call: "fstat", subject: hostPath.string, errno: errno))
        }
        guard sourceStatus.st_dev == directoryStatus.st_dev else {
            return try copy(source: source, into: directory, name: name, hostPath: hostPath, mode: 0o400)
        }
        try checkReadable(resolved, status: sourceStatus)
        // Link the resolved file, never a symlink: a link to a host path means nothing in the jail.
        if linkat(AT_FDCWD, resolved, directory, name, 0) == 0 {
            return .hardLink
        }
        let code = errno
        switch code {
        case EXDEV, EPERM, EMLINK:
            // Same device number but not linkable (a bind mount boundary, protected_hardlinks,
            // too many links): a copy is correct too.
            logger.debug(
                "hard link refused; copying instead",
                metadata: ["vm": "\(id)", "source": "\(resolved)", "errno": "\(code)"])
            return try copy(source: source, into: directory, name: name, hostPath: hostPath, mode: 0o400)
        default:
            throw .stagingFailed(
                id: id, source: source.string, destination: hostPath.string,
                SystemCallError(call: "linkat", subject: "\(resolved) -> \(hostPath)", errno: code))
        }
    }

    private func resolveSource(_ source: FilePath, hostPath: FilePath) throws(JailError) -> (String, stat) {
        let id = layout.id.rawValue
        guard let resolved = JailerConfiguration.canonicalPath(source)?.string else {
            throw .stagingFailed(
                id: id, source: source.string, destination: hostPath.string,
                SystemCallError(call: "realpath", subject: source.string, errno: errno))
        }
        let status: stat
        do {
            status = try JailFileSystem.statPath(resolved)
        } catch {
            throw .stagingFailed(id: id, source: source.string, destination: hostPath.string, error)
        }
        guard JailFileSystem.isRegular(status) else {
            throw .stagingFailed(
                id: id, source: source.string, destination: hostPath.string,
                SystemCallError(call: "stage (regular files only)", subject: resolved, errno: EINVAL))
        }
        return (resolved, status)
    }

    /// The jailer drops supplementary groups (Rust's `Command::uid` calls setgroups(0)), so only
    /// the owner, group and other bits for uid:gid count.
    private func checkReadable(_ path: String, status: stat) throws(JailError) {
        let mode = UInt32(status.st_mode)
        let readable: Bool
        if status.st_uid == uid {
            readable = mode & 0o400 != 0
        } else if status.st_gid == gid {
            readable = mode & 0o040 != 0
        } else {
            readable = mode & 0o004 != 0
        }
        if readable { return }
        if cmv_has_access_acl(path) == 1 {
            logger.debug("file has an ACL; leaving the read check to the kernel", metadata: ["path": "\(path)"])
            return
        }
        throw .stagedFileUnreadable(
            id: layout.id.rawValue, path: path, uid: uid, gid: gid, ownerUID: status.st_uid, ownerGID: status.st_gid,
            mode: mode)
    }

    /// Copies into a new file owned by the VM user: reflink first, else a copy that keeps the
    /// source's holes and does not write zero blocks.
    private func copy(source: FilePath, into directory: Int32, name: String, hostPath: FilePath, mode: mode_t)
        throws(JailError) -> StagingMethod
    {
        let id = layout.id.rawValue
        let (resolved, _) = try resolveSource(source, hostPath: hostPath)
        func fail(_ error: SystemCallError) -> JailError {
            .stagingFailed(id: id, source: source.string, destination: hostPath.string, error)
        }
        let input: Int32
        do {
            input = try SystemCallError.check("open", resolved) { open(resolved, O_RDONLY | O_CLOEXEC) }
        } catch {
            throw fail(error)
        }
        defer { close(input) }
        let output: Int32
        do {
            output = try SystemCallError.check("openat(O_CREAT|O_EXCL)", hostPath.string) {
                openat(directory, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            }
        } catch {
            throw fail(error)
        }
        var keep = false
        defer {
            close(output)
            if !keep { unlinkat(directory, name, 0) }
        }
        do {
            try SystemCallError.check("fchown", hostPath.string) { fchown(output, uid, gid) }
            let method = try Self.copyContents(from: input, to: output, subject: hostPath.string)
            try SystemCallError.check("fchmod", hostPath.string) { fchmod(output, mode) }
            keep = true
            return method
        } catch {
            throw fail(error)
        }
    }

    /// Reflink first; else a copy that keeps the source's holes and leaves zero blocks as holes.
    static func copyContents(from input: Int32, to output: Int32, subject: String) throws(SystemCallError) -> StagingMethod {
        if cmv_ficlone(output, input) == 0 { return .reflink }
        let size = try JailFileSystem.fstatDescriptor(input, subject).st_size
        _ = try SparseFile.copyExtents(from: input, to: output, source: subject, destination: subject, skippingZeroBlocks: true)
        try SystemCallError.check("ftruncate", subject) { ftruncate(output, size) }
        return .sparseCopy
    }
}
