public import FirecrackerAPI
public import Foundation
import MicroVMHost
import NIOPosix
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A snapshot on disk: a directory holding Firecracker's state file (`state`), the guest memory
/// (`memory`), copies of the writable drives (`drive-<id>`) and `snapshot.json`, this value,
/// which says what the files are and the spec of the VM they came from.
public struct Snapshot: Codable, Sendable, Hashable {
    public var directory: String
    public var type: SnapshotType
    /// The spec of the VM it was taken from; a restore starts from it.
    public var spec: VMSpec
    public var firecrackerVersion: String?
    /// Drive id to the file name (in `directory`) of that writable drive's copy.
    public var driveFiles: [String: String]
    public var createdAt: Date
    /// The network lease index of a VM whose driver-made network was in TAP mode: its guest
    /// keeps that allocation's address, so a restore takes the same lease (namespace mode needs
    /// none: every guest there has the same address).
    public var networkIndex: Int?
    /// Whether the VM it was taken from was jailed (nil in snapshots of earlier versions): its
    /// Firecracker recorded its drives at in-jail paths (`/drives/rootfs`), which only a jailed
    /// VMM finds again.
    public var sandboxed: Bool?

    public static let descriptionFile = "snapshot.json"

    init(
        directory: FilePath, type: SnapshotType, spec: VMSpec, firecrackerVersion: String?, driveCopies: [String: String], createdAt: Date,
        networkIndex: Int? = nil, sandboxed: Bool? = nil
    ) {
        self.networkIndex = networkIndex
        self.sandboxed = sandboxed
        self.directory = directory.string
        self.type = type
        self.spec = spec
        self.firecrackerVersion = firecrackerVersion
        self.driveFiles = driveCopies.mapValues { FilePath($0).lastComponent?.string ?? $0 }
        // Whole seconds: what snapshot.json keeps (ISO 8601).
        self.createdAt = Date(timeIntervalSince1970: createdAt.timeIntervalSince1970.rounded(.down))
    }

    enum CodingKeys: String, CodingKey {
        case directory, type, spec
        case firecrackerVersion = "firecracker_version"
        case driveFiles = "drive_files"
        case createdAt = "created_at"
        case networkIndex = "network_index"
        case sandboxed
    }

    public var statePath: FilePath { FilePath(directory).appending("state") }
    public var memoryPath: FilePath { FilePath(directory).appending("memory") }
    /// Host paths of the writable drives' copies, by drive id.
    public var driveCopies: [String: String] { driveFiles.mapValues { FilePath(directory).appending($0).string } }

    /// Reads `snapshot.json` from a snapshot directory (which may have been moved since).
    public static func load(from directory: FilePath) throws(MicroVMError) -> Snapshot {
        let file = directory.appending(descriptionFile)
        let hint = "give the directory that `microvm snapshot` or MicroVM.snapshot(to:) wrote"
        guard let data = FileManager.default.contents(atPath: file.string) else {
            var isDirectory: ObjCBool = false
            let why =
                !FileManager.default.fileExists(atPath: directory.string, isDirectory: &isDirectory) ? "\(directory) does not exist"
                : !isDirectory.boolValue ? "\(directory) is not a directory"
                : access(file.string, F_OK) != 0 ? "\(directory) holds no \(descriptionFile): it is not a snapshot (or one whose writing did not finish)"
                : "\(file) exists but cannot be read (check its permissions)"
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: "", message: why, hint: hint)])
        }
        do {
            var snapshot = try JSONDecoder.records.decode(Snapshot.self, from: data)
            snapshot.directory = directory.string
            return snapshot
        } catch {
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: file.string, message: "not a snapshot description this driver wrote: \(error)", hint: hint)])
        }
    }

    /// Where ``writePendingDescription()`` puts the description until the snapshot is complete.
    var pendingDescriptionPath: FilePath { FilePath(directory).appending(".snapshot.json.pending") }

    /// Writes the description, synced, under a temporary name in the snapshot's directory:
    /// while Firecracker writes the memory, so that once the snapshot's files are in place only
    /// a rename (``publishDescription()``) remains. Off Swift's cooperative threads.
    func writePendingDescription() async throws(MicroVMError) {
        let data: Data
        do {
            data = try JSONEncoder.records.encode(self)
        } catch {
            throw .snapshotFailed(id: spec.id, step: "encoding \(Self.descriptionFile)", detail: "\(error)")
        }
        let path = pendingDescriptionPath
        try await SnapshotFiles.offPool(id: spec.id, step: "writing \(path)") { () throws(SystemCallError) in
            let fd = try SystemCallError.check("open", path.string) { open(path.string, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644) }
            defer { close(fd) }
            var offset = 0
            while offset < data.count {
                let written = try SystemCallError.check("write", path.string) {
                    data.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
                }
                offset += written
            }
            _ = try SystemCallError.check("fsync", path.string) { fsync(fd) }
        }
    }

    /// Renames the pending description into place: the snapshot is complete from then on.
    func publishDescription() throws(MicroVMError) {
        let file = FilePath(directory).appending(Self.descriptionFile)
        guard rename(pendingDescriptionPath.string, file.string) == 0 else {
            throw .snapshotFailed(id: spec.id, step: "writing \(file)", detail: String(cString: strerror(errno)))
        }
    }

    /// Writes (or rewrites) the description: pending, synced, then renamed into place.
    func writeDescription() async throws(MicroVMError) {
        unlink(pendingDescriptionPath.string)  // a stale one from an interrupted write
        try await writePendingDescription()
        try publishDescription()
    }

    /// The spec of a VM restored from this snapshot as `id`, its interfaces moved to the TAP
    /// devices `networkOverrides` names (interface id to TAP).
    func spec(restoredAs id: String, networkOverrides: [String: String]) throws(MicroVMError) -> VMSpec {
        var restored = spec
        restored.id = id
        for index in restored.networkInterfaces.indices {
            if let tap = networkOverrides[restored.networkInterfaces[index].id] { restored.networkInterfaces[index].tap = tap }
        }
        if let unknown = networkOverrides.keys.sorted().first(where: { name in !restored.networkInterfaces.contains { $0.id == name } }) {
            throw .invalidSpec(id: id, problems: [SpecProblem(field: "network_overrides.\(unknown)", message: "the snapshot has no interface '\(unknown)'")])
        }
        return restored
    }

    /// The files a restore needs that are not there.
    func missingFiles() -> [SpecProblem] {
        var problems: [SpecProblem] = []
        for (name, path) in [("state", statePath.string), ("memory", memoryPath.string)] + driveCopies.sorted(by: { $0.key < $1.key }).map({ ("drive \($0.key)", $0.value) })
        where access(path, R_OK) != 0 {
            problems.append(SpecProblem(field: "snapshot.\(name)", message: "\(path) is missing or unreadable"))
        }
        return problems
    }

    /// Merges this diff snapshot with the full snapshot it was taken after (`base`): its memory
    /// becomes base's memory with the dirtied pages written over, and the result, in this
    /// snapshot's directory, is a full snapshot that can be restored.
    public func applyingDiff(onto base: Snapshot) async throws(MicroVMError) -> Snapshot {
        guard type == .diff else {
            throw .snapshotFailed(id: spec.id, step: "merging", detail: "\(directory) is already a full snapshot")
        }
        guard base.type == .full else {
            throw .snapshotFailed(id: spec.id, step: "merging", detail: "the base \(base.directory) is not a full snapshot")
        }
        let merged = memoryPath.string + ".merged"
        let diff = memoryPath.string
        let baseMemory = base.memoryPath.string
        let id = spec.id
        try await SnapshotFiles.offPool(id: id, step: "merging the memory") { () throws(SystemCallError) in
            // The merged file replaces the diff's memory with its owner and mode (a jailed VM's
            // snapshot belongs to the VM user, who must be able to read it to restore it).
            var status = stat()
            try SystemCallError.check("stat", diff) { stat(diff, &status) }
            unlink(merged)
            try SparseFile.copy(baseMemory, to: merged)
            try SparseFile.overlay(diff, onto: merged)
            try SystemCallError.check("chown", merged) { chown(merged, status.st_uid, status.st_gid) }
            try SystemCallError.check("chmod", merged) { chmod(merged, status.st_mode & 0o7777) }
            try SystemCallError.check("rename", merged) { rename(merged, diff) }
        }
        var result = self
        result.type = .full
        try await result.writeDescription()
        return result
    }
}

/// Moving snapshot files out of the VM's directory, off Swift's cooperative threads (a memory
/// file is as large as the guest's RAM).
enum SnapshotFiles {
    /// The step a destination's refusal names; ``MicroVMError/isSnapshotDestinationProblem``
    /// tells it by this form.
    static func destinationStep(_ verb: String, _ destination: FilePath) -> String { "\(verb) the destination \(destination)" }

    static func isDestinationStep(_ step: String) -> Bool {
        step.hasPrefix("creating the destination ") || step.hasPrefix("checking the destination ")
    }

    /// `destination` must be a new or empty directory.
    /// Creates `destination`, or checks that it is an empty directory. Returns whether it made
    /// it, so that a snapshot that fails removes it again.
    @discardableResult
    static func prepareDestination(_ destination: FilePath, id: String) throws(MicroVMError) -> Bool {
        if mkdir(destination.string, 0o700) == 0 { return true }
        let code = errno
        guard code == EEXIST else {
            throw .snapshotFailed(id: id, step: destinationStep("creating", destination), detail: String(cString: strerror(code)))
        }
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: destination.string) else {
            throw .snapshotFailed(id: id, step: destinationStep("checking", destination), detail: "it exists and is not a directory")
        }
        if !entries.isEmpty {
            throw .snapshotFailed(id: id, step: destinationStep("checking", destination), detail: "the directory is not empty; give a new or empty directory so no earlier snapshot is overwritten")
        }
        return false
    }

    /// What a failed snapshot wrote into its destination (the only files there, which was new
    /// or empty), and the directory itself when the snapshot made it.
    static func removeFailed(_ snapshot: Snapshot, createdDirectory: Bool) {
        let written = [snapshot.statePath, snapshot.memoryPath, snapshot.pendingDescriptionPath].map(\.string) + snapshot.driveCopies.values
        for path in written { unlink(path) }
        if createdDirectory { rmdir(snapshot.directory) }
    }

    /// Moves a file Firecracker wrote: a rename on the same filesystem, else an extent-exact
    /// copy and unlink. The snapshot's file then belongs to this process's user, read-only to
    /// every other: a jailed VMM wrote it as the jail's user, and every VM restored from it is
    /// given a hard link to the same inode, which that user could otherwise write, changing the
    /// memory or state of every later restore. (A VMM only reads them; the snapshot's directory
    /// is 0700, and each jail's root is its own user's.)
    static func move(_ source: FilePath, to destination: FilePath, id: String) async throws(MicroVMError) {
        if rename(source.string, destination.string) != 0 {
            guard errno == EXDEV else {
                throw .snapshotFailed(id: id, step: "moving \(source) to \(destination)", detail: String(cString: strerror(errno)))
            }
            try await copy(source, to: destination, id: id)
            unlink(source.string)
        }
        guard chown(destination.string, geteuid(), getegid()) == 0, chmod(destination.string, 0o644) == 0 else {
            throw .snapshotFailed(id: id, step: "taking \(destination) from the VM's user", detail: String(cString: strerror(errno)))
        }
    }

    static func copy(_ source: FilePath, to destination: FilePath, id: String) async throws(MicroVMError) {
        try await offPool(id: id, step: "copying \(source) to \(destination)") { () throws(SystemCallError) in
            try SparseFile.copy(source.string, to: destination.string)
        }
    }

    static func offPool(id: String, step: String, _ body: @escaping @Sendable () throws(SystemCallError) -> Void) async throws(MicroVMError) {
        do {
            try await NIOThreadPool.singleton.runIfActive {
                do throws(SystemCallError) { try body() } catch { throw error }
            }
        } catch let error as SystemCallError {
            throw .snapshotFailed(id: id, step: step, detail: error.description)
        } catch {
            throw .snapshotFailed(id: id, step: step, detail: "\(error)")
        }
    }
}
