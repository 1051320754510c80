#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import SystemPackage

/// A file's identity on the host; two paths name the same file exactly when these match.
struct FileIdentity: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64

    init(_ status: stat) {
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
    }
}

/// Low-level file operations for the jail, all relative to directory descriptors opened with
/// O_NOFOLLOW, so a symlink planted in a jail can never redirect them outside it.
enum JailFileSystem {
    static func lstatPath(_ path: String) throws(SystemCallError) -> stat {
        var status = stat()
        try SystemCallError.check("lstat", path) { lstat(path, &status) }
        return status
    }

    static func statPath(_ path: String) throws(SystemCallError) -> stat {
        var status = stat()
        try SystemCallError.check("stat", path) { stat(path, &status) }
        return status
    }

    static func fstatDescriptor(_ fd: Int32, _ subject: String) throws(SystemCallError) -> stat {
        var status = stat()
        try SystemCallError.check("fstat", subject) { fstat(fd, &status) }
        return status
    }

    static func isDirectory(_ status: stat) -> Bool { status.st_mode & S_IFMT == S_IFDIR }
    static func isRegular(_ status: stat) -> Bool { status.st_mode & S_IFMT == S_IFREG }

    /// Opens an existing directory without following a final symlink.
    static func openDirectory(_ path: String) throws(SystemCallError) -> Int32 {
        try SystemCallError.check("open(O_DIRECTORY|O_NOFOLLOW)", path) {
            open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
    }

    static func openDirectory(at parent: Int32, _ name: String, display: String) throws(SystemCallError) -> Int32 {
        try SystemCallError.check("openat(O_DIRECTORY|O_NOFOLLOW)", display) {
            openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        }
    }

    /// Opens `components` below `parent`, creating missing directories with `mode` (and owner,
    /// when given). Returns the innermost directory's descriptor; the caller closes it.
    static func openOrCreateDirectories(
        at parent: Int32, _ components: [String], display: String, mode: mode_t, owner: (uid_t, gid_t)?,
        create: Bool = true
    ) throws(SystemCallError) -> Int32 {
        var current = try SystemCallError.check("dup", display) { dup(parent) }
        var path = display
        for component in components {
            path += "/" + component
            let created = create && mkdirat(current, component, mode) == 0
            if create, !created, errno != EEXIST {
                let code = errno
                close(current)
                throw SystemCallError(call: "mkdirat", subject: path, errno: code)
            }
            let next: Int32
            do {
                next = try openDirectory(at: current, component, display: path)
            } catch {
                close(current)
                throw error
            }
            close(current)
            current = next
            if created {
                // mkdir applies the umask; the jail's directories get exactly the mode asked for.
                if fchmod(current, mode) != 0 || (owner.map { fchown(current, $0.0, $0.1) } ?? 0) != 0 {
                    let code = errno
                    close(current)
                    throw SystemCallError(call: "fchmod/fchown", subject: path, errno: code)
                }
            }
        }
        return current
    }

    /// Removes `name` below `parent` and everything under it without following symlinks (a link
    /// is unlinked, never entered) and without crossing into another filesystem (a mount point is
    /// reported and left alone: we unmount nothing we did not mount). Failures are appended to
    /// `failures`; removal continues with the siblings.
    static func removeTree(
        at parent: Int32, _ name: String, display: String, device: UInt64, failures: inout [JailError]
    ) {
        var status = stat()
        if fstatat(parent, name, &status, AT_SYMLINK_NOFOLLOW) != 0 {
            if errno != ENOENT {
                failures.append(.system(id: nil, SystemCallError(call: "fstatat", subject: display, errno: errno)))
            }
            return
        }
        if isDirectory(status) {
            if UInt64(status.st_dev) != device {
                failures.append(.unsafeJailPath(path: display, reason: "a mount point inside the jail (another filesystem); it was not entered or removed"))
                return
            }
            let fd: Int32
            do {
                fd = try openDirectory(at: parent, name, display: display)
            } catch {
                failures.append(.system(id: nil, error))
                return
            }
            // The directory could have been swapped between fstatat and openat.
            var opened = stat()
            guard fstat(fd, &opened) == 0, FileIdentity(opened) == FileIdentity(status) else {
                close(fd)
                failures.append(.unsafeJailPath(path: display, reason: "changed while being removed"))
                return
            }
            for entry in directoryEntries(fd, display: display, failures: &failures) {
                removeTree(at: fd, entry, display: display + "/" + entry, device: device, failures: &failures)
            }
            close(fd)
            if unlinkat(parent, name, AT_REMOVEDIR) != 0, errno != ENOENT {
                failures.append(.system(id: nil, SystemCallError(call: "rmdir", subject: display, errno: errno)))
            }
        } else if unlinkat(parent, name, 0) != 0, errno != ENOENT {
            failures.append(.system(id: nil, SystemCallError(call: "unlink", subject: display, errno: errno)))
        }
    }

    /// Names in a directory (without `.` and `..`); the descriptor stays open.
    static func directoryEntries(_ fd: Int32, display: String, failures: inout [JailError]) -> [String] {
        let copy = dup(fd)
        guard copy >= 0, let directory = fdopendir(copy) else {
            if copy >= 0 { close(copy) }
            failures.append(.system(id: nil, SystemCallError(call: "fdopendir", subject: display, errno: errno)))
            return []
        }
        defer { closedir(directory) }
        rewinddir(directory)
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) {
                    String(cString: $0)
                }
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    /// Names in a directory path, or nil if it cannot be read.
    static func directoryEntries(_ path: String) -> [String]? {
        guard let directory = opendir(path) else { return nil }
        defer { closedir(directory) }
        var names: [String] = []
        while let entry = readdir(directory) {
            let name = withUnsafePointer(to: entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) {
                    String(cString: $0)
                }
            }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }
}
