import Foundation
import MicroVMHost
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The driver's state on disk, one directory per VM under a root (the runc `state.json`
/// pattern): `state.json` (a ``VMRecord``) and, for a VM under a monitor, the FIFO of its
/// standard input and what the monitor keeps. (The standard streams of a VM without a monitor
/// are pipes the VMM holds, reopened through `/proc/<pid>/fd` by a later driver.)
///
/// Records are written atomically (temporary file, then rename), so a reader sees the old record
/// or the new one, and either outlives a crash of the driver (the page cache outlives any
/// process). They are not fsync'd: they describe running processes, which a crash of the host
/// ends too, as it empties the default tmpfs root; on a 2-CPU host the fsyncs of the first
/// record cost `create` 1.1-1.2 ms (BENCHMARKS.md). A torn or
/// corrupt record is reported with its path, never silently replaced. Every change to a
/// VM's directory happens under a `flock` of that directory, and creating one under the root's, so two
/// drivers on one root never corrupt a VM or create the same id twice.
public struct StateStore: Sendable, Hashable {
    public let root: FilePath

    /// Root's default: `/run/microvm` (tmpfs: it goes away with the processes it describes).
    public static let defaultRoot: FilePath = "/run/microvm"
    public static let environmentVariable = "MICROVM_STATE_DIR"

    public init(root: FilePath = StateStore.defaultRoot) {
        self.root = root
    }

    public func directory(for id: String) -> FilePath { root.appending(id) }
    func recordPath(for id: String) -> FilePath { directory(for: id).appending("state.json") }

    /// The FIFO of a monitored VM's standard input (the monitor holds its stdout and stderr).
    func stdinFIFO(for id: String) -> String {
        directory(for: id).appending("stdin").string
    }

    /// Creates the VM's directory, under the root's lock, with the `stdin` FIFO of a VM under a
    /// monitor (`monitored`). Fails when the id already has a directory: live VMs are never
    /// replaced, and a dead one's leftovers are `gc`'s to remove.
    func create(id: String, monitored: Bool = false) throws(MicroVMError) {
        try ensureRoot(id: id)
        try withLock(root, id: id) { () throws(MicroVMError) in
            let directory = directory(for: id).string
            if mkdir(directory, 0o700) != 0 {
                if errno == EEXIST {
                    let owner = (try? read(id: id))
                    throw .stateConflict(
                        id: id, path: directory,
                        detail: owner.map { "a VM with this id is recorded (state \($0.state.name), driver pid \($0.driverPID))" }
                            ?? "the directory exists")
                }
                throw .file(id: id, SystemCallError(call: "mkdir", subject: directory, errno: errno))
            }
            if monitored, mkfifo(stdinFIFO(for: id), 0o600) != 0 {
                let error = SystemCallError(call: "mkfifo", subject: stdinFIFO(for: id), errno: errno)
                remove(id: id)
                throw .file(id: id, error)
            }
        }
    }

    /// Writes `record` atomically under the VM's lock.
    func write(_ record: VMRecord) throws(MicroVMError) {
        var record = record
        record.updatedAt = Date()
        let final = recordPath(for: record.id).string
        let temporary = final + ".tmp"
        let data: Data
        do {
            data = try JSONEncoder.stateRecords.encode(record)
        } catch {
            throw .corruptRecord(id: record.id, path: final, detail: "cannot encode: \(error)")
        }
        try withLock(directory(for: record.id), id: record.id) { () throws(MicroVMError) in
            let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw .file(id: record.id, SystemCallError(call: "open", subject: temporary, errno: errno)) }
            let written = data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            let writeError = errno
            close(fd)
            guard written == data.count else {
                unlink(temporary)
                throw .file(id: record.id, SystemCallError(call: "write", subject: temporary, errno: written < 0 ? writeError : EIO))
            }
            guard rename(temporary, final) == 0 else {
                throw .file(id: record.id, SystemCallError(call: "rename", subject: final, errno: errno))
            }
        }
    }

    /// Reads a VM's record; a missing one is `.notFound`, a torn or corrupt one `.corruptRecord`.
    public func read(id: String) throws(MicroVMError) -> VMRecord {
        let path = recordPath(for: id).string
        guard let data = FileManager.default.contents(atPath: path) else {
            if access(directory(for: id).string, F_OK) == 0 {
                throw .corruptRecord(id: id, path: path, detail: "the VM's directory has no readable state.json (a driver died while creating it?)")
            }
            throw .notFound(id: id, stateRoot: root.string)
        }
        do {
            let record = try JSONDecoder.records.decode(VMRecord.self, from: data)
            guard record.id == id else {
                throw MicroVMError.corruptRecord(id: id, path: path, detail: "it describes VM '\(record.id)'")
            }
            return record
        } catch let error as MicroVMError {
            throw error
        } catch {
            throw .corruptRecord(id: id, path: path, detail: "\(error)")
        }
    }

    /// Every VM directory under the root, with its record or the error reading it.
    public func list() -> [(id: String, record: Result<VMRecord, MicroVMError>)] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: root.string)) ?? []
        return entries.filter { !$0.hasPrefix(".") }.sorted().map { id in
            (id, Result { () throws(MicroVMError) in try read(id: id) })
        }
    }

    /// Removes the VM's directory (record, lock, FIFOs, and what its monitor kept): only the
    /// files the driver and the monitor make, so a directory holding anything else stays.
    func remove(id: String) {
        let directory = directory(for: id)
        let monitorFiles = [
            "monitor.sock", "exit", "exit.tmp", "console.log", "console.log.1", "firecracker.log", "firecracker.log.1", "stderr.log",
            "stderr.log.1", "monitor.err",
        ]
        for name in ["state.json", "state.json.tmp", "stdin", "stdout", "stderr"] + monitorFiles {
            unlink(directory.appending(name).string)
        }
        rmdir(directory.string)
    }

    private func ensureRoot(id: String) throws(MicroVMError) {
        if mkdir(root.string, 0o700) != 0, errno != EEXIST {
            // A missing parent (e.g. a fresh XDG runtime directory) is created too.
            do {
                try FileManager.default.createDirectory(atPath: root.string, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw .file(id: id, SystemCallError(call: "mkdir", subject: root.string, errno: errno))
            }
        }
    }

    /// Runs `body` holding an exclusive `flock` on the directory `path` (a lock on the directory
    /// itself: no lock file to leave behind, and it goes away with the directory).
    private func withLock<T>(_ path: FilePath, id: String, _ body: () throws(MicroVMError) -> T) throws(MicroVMError) -> T {
        let fd = open(path.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw .file(id: id, SystemCallError(call: "open", subject: path.string, errno: errno)) }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else { throw .file(id: id, SystemCallError(call: "flock", subject: path.string, errno: errno)) }
        }
        return try body()
    }
}

/// The driver's own files (records, `snapshot.json`): stable key order for diffs, ISO 8601 dates.
extension JSONEncoder {
    /// A VM's `state.json`, rewritten at every change of state and first while its VM boots:
    /// compact, in the record's declaration order (as stable as sorted keys). Pretty-printed
    /// and sorted, its encoding took 140 µs against 118 µs (p50 at launch, this project's
    /// 2-core test host), CPU the booting VM competes for.
    static var stateRecords: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }

    static var records: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601
        return encoder
    }
}

extension JSONDecoder {
    static var records: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}
