import CMicroVMSys
package import Foundation
import MicroVMHost
import Synchronization
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
    ///
    /// The directory is claimed (``CreationClaim``) in the same step: until the caller releases
    /// the claim, once the first record is written, other drivers see a VM being created; if
    /// the caller dies first, they see an interrupted creation that `gc` cleans up.
    ///
    /// `jail`, given when the VM's spec puts its jail elsewhere than the driver's configuration,
    /// is noted on the directory (an extended attribute: no file more to make while the VM
    /// launches) so that `gc` finds the jail of an interrupted creation where the spec put it.
    func create(id: String, monitored: Bool = false, jail: CreationJail? = nil) throws(MicroVMError) -> CreationClaim {
        try ensureRoot(id: id)
        return try withLock(root, id: id) { () throws(MicroVMError) -> CreationClaim in
            let directory = directory(for: id).string
            if mkdir(directory, 0o700) != 0 {
                if errno == EEXIST {
                    // Under the root's lock already: read without taking it again.
                    let detail: String
                    if let data = FileManager.default.contents(atPath: recordPath(for: id).string), let owner = try? decode(data, id: id) {
                        detail = "a VM with this id is recorded (state \(owner.state.name), driver pid \(owner.driverPID))"
                    } else {
                        switch creationProgressHoldingRootLock(id: id) {
                        case .inProgress: detail = "a live driver is creating a VM with this id"
                        case .interrupted: detail = "a driver died while creating a VM with this id; gc removes what it left"
                        case nil: detail = "the directory exists"
                        }
                    }
                    throw .stateConflict(id: id, path: directory, detail: detail)
                }
                throw .file(id: id, SystemCallError(call: "mkdir", subject: directory, errno: errno))
            }
            if monitored, mkfifo(stdinFIFO(for: id), 0o600) != 0 {
                let error = SystemCallError(call: "mkfifo", subject: stdinFIFO(for: id), errno: errno)
                remove(id: id)
                throw .file(id: id, error)
            }
            let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fd >= 0, cmv_ofd_read_lock(fd) == 0 else {
                let error = SystemCallError(call: fd < 0 ? "open" : "fcntl(F_OFD_SETLK)", subject: directory, errno: errno)
                if fd >= 0 { close(fd) }
                remove(id: id)
                throw .file(id: id, error)
            }
            // Best effort: a filesystem without user attributes leaves gc the configuration's jail.
            if let note = jail?.note { _ = note.withUnsafeBytes { cmv_fset_xattr(fd, CreationJail.attribute, $0.baseAddress, $0.count) } }
            return CreationClaim(fd: fd)
        }
    }

    /// Whether the VM's directory, which has no record, is still being created by a live driver
    /// or was left by one that died first; nil when it has a record (or no directory). Decided
    /// under the root's lock, which covers a directory's creation and its claim together.
    func creationProgress(id: String) -> CreationProgress? {
        guard access(recordPath(for: id).string, F_OK) != 0,
            let progress = try? withLock(root, id: id, { () -> CreationProgress? in creationProgressHoldingRootLock(id: id) })
        else { return nil }
        return progress
    }

    /// ``creationProgress(id:)`` for a caller that holds the root's lock (a second `flock` of
    /// the root from this process would wait for the first forever).
    private func creationProgressHoldingRootLock(id: String) -> CreationProgress? {
        let fd = open(directory(for: id).string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if access(recordPath(for: id).string, F_OK) == 0 { return nil }
        return cmv_ofd_lock_held(fd) == 1 ? .inProgress : .interrupted
    }

    /// Writes `record` atomically under the VM's lock.
    func write(_ record: VMRecord) throws(MicroVMError) {
        try write(encoded(record))
    }

    /// `record` as it is written, dated now: encoding apart from writing lets a launch encode
    /// its first record while Firecracker builds the VM and write it once Firecracker is ready.
    func encoded(_ record: VMRecord) throws(MicroVMError) -> EncodedRecord {
        var record = record
        record.updatedAt = Date()
        do {
            return EncodedRecord(id: record.id, data: try JSONEncoder.stateRecords.encode(record))
        } catch {
            throw .corruptRecord(id: record.id, path: recordPath(for: record.id).string, detail: "cannot encode: \(error)")
        }
    }

    /// Writes an encoded record atomically (a temporary file renamed into place) under the
    /// VM's lock.
    func write(_ record: EncodedRecord) throws(MicroVMError) {
        try withLock(directory(for: record.id), id: record.id) { () throws(MicroVMError) in try writeHoldingLock(record) }
    }

    private func writeHoldingLock(_ record: EncodedRecord) throws(MicroVMError) {
        let final = recordPath(for: record.id).string
        let temporary = final + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .file(id: record.id, SystemCallError(call: "open", subject: temporary, errno: errno)) }
        let written = record.data.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let writeError = errno
        close(fd)
        guard written == record.data.count else {
            unlink(temporary)
            throw .file(id: record.id, SystemCallError(call: "write", subject: temporary, errno: written < 0 ? writeError : EIO))
        }
        guard rename(temporary, final) == 0 else {
            throw .file(id: record.id, SystemCallError(call: "rename", subject: final, errno: errno))
        }
    }

    /// Makes this process the VM's driver in its record, under the VM's lock, unless another
    /// live driver supervises it: two processes attaching at once (two `microvm stop` of one
    /// VM) cannot both pass the check. Returns the record as it was.
    func takeOver(id: String) throws(MicroVMError) -> VMRecord {
        try withLock(directory(for: id), id: id) { () throws(MicroVMError) in
            let record = try read(id: id)
            if record.driverIsAlive, record.driverPID != getpid() {
                throw .notAttachable(id: id, reason: "driver pid \(record.driverPID) still supervises it")
            }
            var taken = record
            taken.driverPID = getpid()
            taken.driverStartTime = MicroVM.driverStartTime
            try writeHoldingLock(encoded(taken))
            return record
        }
    }

    /// Puts back the record a failed ``takeOver(id:)`` replaced, unless another driver has
    /// taken the VM since.
    func undoTakeOver(_ previous: VMRecord) {
        try? withLock(directory(for: previous.id), id: previous.id) { () throws(MicroVMError) in
            guard let current = try? read(id: previous.id), current.driverPID == getpid() else { return }
            try writeHoldingLock(encoded(previous))
        }
    }

    /// Reads a VM's record; a missing one is `.notFound`, a torn or corrupt one `.corruptRecord`.
    public func read(id: String) throws(MicroVMError) -> VMRecord {
        let path = recordPath(for: id).string
        guard let data = FileManager.default.contents(atPath: path) else {
            switch creationProgress(id: id) {
            case .inProgress:
                throw .notAttachable(id: id, reason: "a live driver is creating it (its record is written once Firecracker is ready)")
            case .interrupted:
                throw .notAttachable(id: id, reason: "the driver creating it died before writing its record; gc removes what it left")
            case nil:
                if access(directory(for: id).string, F_OK) == 0 {
                    throw .corruptRecord(id: id, path: path, detail: "the VM's directory has no readable state.json")
                }
            }
            throw .notFound(id: id, stateRoot: root.string)
        }
        return try decode(data, id: id)
    }

    private func decode(_ data: Data, id: String) throws(MicroVMError) -> VMRecord {
        let path = recordPath(for: id).string
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
    /// Returns the error when the directory stays (it holds files of someone else's).
    @discardableResult
    func remove(id: String) -> JailError? {
        let directory = directory(for: id)
        let monitorFiles = [
            "monitor.sock", "exit", "exit.tmp", "console.log", "console.log.1", "firecracker.log", "firecracker.log.1", "stderr.log",
            "stderr.log.1", "monitor.err", "lazy-memory",
        ]
        for name in ["state.json", "state.json.tmp", "stdin", "stdout", "stderr"] + monitorFiles {
            unlink(directory.appending(name).string)
        }
        guard rmdir(directory.string) != 0, errno != ENOENT else { return nil }
        let error = errno
        let left = (try? FileManager.default.contentsOfDirectory(atPath: directory.string))?.sorted() ?? []
        let subject = left.isEmpty ? directory.string : "\(directory) (it holds files the driver did not make: \(left.joined(separator: ", ")))"
        return .system(id: nil, SystemCallError(call: "rmdir", subject: subject, errno: error))
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

/// A VM's record as its file holds it.
struct EncodedRecord: Sendable {
    let id: String
    let data: Data
}

/// Where a VM being created has its jail (or, unjailed, its directory) and cgroups: noted on its
/// state directory until its record says it.
struct CreationJail: Sendable, Hashable {
    static let attribute = "user.microvm.jail"

    var layout: JailLayout
    var parentCgroup: String

    /// The chroot base, the exec file name and the parent cgroup, NUL-separated.
    var note: [UInt8] {
        Array([layout.chrootBase.string, layout.execFileName, parentCgroup].joined(separator: "\0").utf8)
    }

    init(layout: JailLayout, parentCgroup: String) {
        self.layout = layout
        self.parentCgroup = parentCgroup
    }

    /// The note on `directory`, for the VM `id`; nil when there is none or it does not parse.
    init?(notedOn directory: FilePath, id: VMIdentifier) {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let size = buffer.withUnsafeMutableBytes { cmv_get_xattr(directory.string, Self.attribute, $0.baseAddress, $0.count) }
        guard size > 0 else { return nil }
        let fields = buffer[..<Int(size)].split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
        guard fields.count == 3, fields[0].hasPrefix("/"), !fields[1].isEmpty, !fields[1].contains("/"), !fields[2].isEmpty else { return nil }
        self.init(layout: JailLayout(chrootBase: FilePath(fields[0]), execFileName: fields[1], id: id), parentCgroup: fields[2])
    }
}

/// A VM's directory whose first record is not written yet.
public enum CreationProgress: Sendable, Hashable {
    /// A live driver is creating the VM.
    case inProgress
    /// The driver that was creating it died first: whatever it had started (a jail, cgroups,
    /// a running Firecracker) has no record, and `gc` removes it.
    case interrupted
}

/// A driver's claim on the VM directory it is creating, held from the directory's creation until
/// the first record is written (create's end): an open-file-description lock on the directory,
/// which the kernel drops when the process dies however it dies. Independent of the `flock` that
/// record writes take, so the creator's own writes never wait for it.
final class CreationClaim: Sendable {
    private let fd: Mutex<Int32>

    init(fd: Int32) {
        self.fd = Mutex(fd)
    }

    /// Ends the claim (the record is written, or the creation was undone).
    func release() {
        let fd = self.fd.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        if fd >= 0 { close(fd) }
    }

    deinit { release() }
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
        encoder.dateEncodingStrategy = .iso8601Seconds
        return encoder
    }

    static var records: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.dateEncodingStrategy = .iso8601Seconds
        return encoder
    }
}

extension JSONDecoder {
    static var records: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601Seconds
        return decoder
    }
}

extension JSONEncoder.DateEncodingStrategy {
    /// What `.iso8601` writes (`2026-12-02T00:35:55Z`), formatted by Foundation's Swift format
    /// style. `.iso8601` goes through `ISO8601DateFormatter` and ICU: at launch, with the caches
    /// cold after Firecracker's start, a record's two dates took about 120 µs that way against
    /// about 15 µs this way (the record's whole encoding: 167 µs against 46 µs).
    package static var iso8601Seconds: Self {
        .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(date.formatted(.iso8601))
        }
    }
}

extension JSONDecoder.DateDecodingStrategy {
    /// Reads what `JSONEncoder.DateEncodingStrategy.iso8601Seconds` (and `.iso8601`) writes.
    package static var iso8601Seconds: Self {
        .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            do {
                return try Date.ISO8601FormatStyle().parse(text)
            } catch {
                throw DecodingError.dataCorruptedError(
                    in: container, debugDescription: "not an ISO 8601 date and time (like 2026-12-02T00:35:55Z): \(text)")
            }
        }
    }
}
