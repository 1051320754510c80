import FirecrackerAPI
import Logging
import MicroVMHost
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// Shared plumbing of the device operations (drives, network, vsock, MMDS, balloon, metrics):
// API calls that return a value, blocking file work kept off Swift's cooperative pool, and the
// identity Firecracker runs as (what a file or socket it must open has to be owned by).

extension MicroVM {
    /// Runs one API call that returns a value, keeping Firecracker's error as the cause (the
    /// value-returning twin of ``call(_:id:isolation:_:)``).
    static func request<T: Sendable>(
        _ operation: String, id: String, isolation: isolated (any Actor)? = #isolation,
        _ body: () async throws(FirecrackerAPIError) -> T
    ) async throws(MicroVMError) -> T {
        do {
            return try await body()
        } catch {
            throw .api(id: id, operation: operation, error)
        }
    }

    /// The uid and gid Firecracker runs as: the jail's user, or this process's for an unjailed
    /// VMM. Files and sockets the VMM must open are handed to this user.
    nonisolated var vmmOwner: (uid: UInt32, gid: UInt32) {
        isSandboxed ? (executor.jail.configuration.uid, executor.jail.configuration.gid) : (getuid(), getgid())
    }

    /// Stages files into the VM's directory the way create did (owned by ``vmmOwner``).
    nonisolated var stager: JailStager {
        let owner = vmmOwner
        return JailStager(layout: layout, uid: owner.uid, gid: owner.gid, logger: logger)
    }

    /// The host path of a path under the VM's root.
    nonisolated func hostPath(_ path: FilePath) -> FilePath {
        executor.hostPath(path)
    }

    /// Runs blocking file work on NIO's thread pool: copies and link/rename/unlink calls must not
    /// stall the cooperative pool that every VM's supervision shares.
    static func deviceOffPool<T: Sendable>(
        id: String, _ body: @escaping @Sendable () throws(MicroVMError) -> T
    ) async throws(MicroVMError) -> T {
        do {
            return try await NIOThreadPool.singleton.runIfActive {
                do throws(MicroVMError) { return try body() } catch { throw error }
            }
        } catch let error as MicroVMError {
            throw error
        } catch {
            throw .file(id: id, SystemCallError(call: "NIOThreadPool.runIfActive", subject: "\(error)", errno: ECANCELED))
        }
    }
}

/// A directory inside a VM's root, opened without following symbolic links at any step below
/// the root: a jailed VMM owns the directories of its jail and could plant a link that points a
/// root-run unlink or rename at a host file.
struct VMDirectory: ~Copyable {
    let descriptor: Int32
    let display: String

    /// Opens `relative` (e.g. `drives`) under `root`.
    init(root: FilePath, relative: [String], vmID: String) throws(MicroVMError) {
        var current = open(root.string, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard current >= 0 else { throw .file(id: vmID, SystemCallError(call: "open(O_DIRECTORY|O_NOFOLLOW)", subject: root.string, errno: errno)) }
        var display = root.string
        for component in relative {
            display += "/" + component
            let next = openat(current, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let code = errno
            close(current)
            guard next >= 0 else { throw .file(id: vmID, SystemCallError(call: "openat(O_DIRECTORY|O_NOFOLLOW)", subject: display, errno: code)) }
            current = next
        }
        self.descriptor = current
        self.display = display
    }

    deinit { close(descriptor) }

    /// Removes `name` if it is there (a missing file is not an error).
    func removeIfPresent(_ name: String, vmID: String) throws(MicroVMError) {
        if unlinkat(descriptor, name, 0) != 0 && errno != ENOENT {
            throw .file(id: vmID, SystemCallError(call: "unlinkat", subject: "\(display)/\(name)", errno: errno))
        }
    }

    func link(_ name: String, to newName: String, vmID: String) throws(MicroVMError) {
        if linkat(descriptor, name, descriptor, newName, 0) != 0 {
            throw .file(id: vmID, SystemCallError(call: "linkat", subject: "\(display)/\(name) -> \(newName)", errno: errno))
        }
    }

    func rename(_ name: String, to newName: String, vmID: String) throws(MicroVMError) {
        if renameat(descriptor, name, descriptor, newName) != 0 {
            throw .file(id: vmID, SystemCallError(call: "renameat", subject: "\(display)/\(name) -> \(newName)", errno: errno))
        }
    }
}

/// Per-VM device state that outlives one call but has no place in the actor (extensions cannot
/// add stored properties): keyed by the VM's directory, which no two live VMs share, and
/// dropped at the VM's teardown.
final class DeviceRegistry<Value: Sendable>: Sendable {
    private let values = Mutex<[String: Value]>([:])

    /// Inserts `value` under `key` unless one is there; true when it was inserted.
    func insert(_ value: Value, for key: String) -> Bool {
        values.withLock { values in
            if values[key] != nil { return false }
            values[key] = value
            return true
        }
    }

    func remove(_ key: String) -> Value? {
        values.withLock { $0.removeValue(forKey: key) }
    }

    func update<R>(_ key: String, _ body: (inout Value?) -> R) -> R {
        values.withLock { body(&$0[key]) }
    }
}
