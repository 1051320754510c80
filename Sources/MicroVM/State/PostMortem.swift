public import Foundation
import MicroVMHost
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// What is known about a VM that failed, kept after its record is gone.
///
/// A VM's directory goes with the VM (and a failed create removes everything it made), so
/// without this nothing is left to diagnose once the command that saw the failure has
/// exited: Firecracker's log lives in a FIFO, whose contents die with the last reader.
/// Kept under `<state root>/.postmortem/<id>.json` (a dot entry: never listed as a VM).
public struct PostMortem: Codable, Sendable, Hashable {
    public enum Outcome: String, Codable, Sendable, Hashable {
        /// `create`/`run`/`restore` failed; everything it had made was removed.
        case createFailed = "create-failed"
        /// The VM ran and ended uncleanly (crash, triple fault, kill, KVM error).
        case ended
    }

    public var id: String
    public var outcome: Outcome
    public var recordedAt: Date
    /// The create step that failed (`createFailed` only).
    public var step: String?
    /// The error as the driver reported it.
    public var message: String
    public var hint: String?
    public var exitReason: ExitReason?
    public var spec: VMSpec?
    /// Firecracker's last log lines and its standard error, as far as the driver read them.
    public var firecrackerLog: [String]

    public init(
        id: String, outcome: Outcome, recordedAt: Date = Date(), step: String? = nil, message: String, hint: String? = nil,
        exitReason: ExitReason? = nil, spec: VMSpec? = nil, firecrackerLog: [String] = []
    ) {
        self.id = id
        self.outcome = outcome
        self.recordedAt = recordedAt
        self.step = step
        self.message = message
        self.hint = hint
        self.exitReason = exitReason
        self.spec = spec
        self.firecrackerLog = firecrackerLog
    }

    enum CodingKeys: String, CodingKey {
        case id, outcome
        case recordedAt = "recorded_at"
        case step, message, hint
        case exitReason = "exit_reason"
        case spec
        case firecrackerLog = "firecracker_log"
    }

    /// The post-mortem of a failed create, or of a VM that ended uncleanly under an operation,
    /// from the error the driver threw; nil for other errors.
    public init?(error: MicroVMError, spec: VMSpec? = nil) {
        switch error {
        case .createFailed(let id, let step, _, let exit):
            self.init(
                id: id, outcome: .createFailed, step: step, message: error.description, hint: error.hint, exitReason: exit, spec: spec,
                firecrackerLog: exit?.evidence ?? [])
        case .vmEnded(let id, let operation, let reason) where !reason.isClean:
            self.init(
                id: id, outcome: .ended, step: operation, message: error.description, hint: error.hint, exitReason: reason, spec: spec,
                firecrackerLog: reason.evidence)
        default:
            return nil
        }
    }
}

extension StateStore {
    /// How many post-mortems are kept: the oldest go first.
    public static let postMortemLimit = 64

    public var postMortemDirectory: FilePath { root.appending(".postmortem") }

    /// Writes (or replaces) the post-mortem of `postMortem.id`, keeping the newest
    /// ``postMortemLimit``.
    public func writePostMortem(_ postMortem: PostMortem) throws(MicroVMError) {
        let directory = postMortemDirectory.string
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let data = try JSONEncoder.records.encode(postMortem)
            let path = directory + "/" + postMortem.id + ".json"
            try data.write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw .file(id: postMortem.id, SystemCallError(call: "write", subject: directory + "/" + postMortem.id + ".json", errno: errno == 0 ? EIO : errno))
        }
        let entries = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".json") }
        guard entries.count > Self.postMortemLimit else { return }
        let dated = entries.map { name -> (String, Date) in
            let attributes = try? FileManager.default.attributesOfItem(atPath: directory + "/" + name)
            return (name, attributes?[.modificationDate] as? Date ?? .distantPast)
        }
        for (name, _) in dated.sorted(by: { $0.1 < $1.1 }).prefix(entries.count - Self.postMortemLimit) {
            unlink(directory + "/" + name)
        }
    }

    /// The post-mortem of `id`, if one was written (nil also for an unreadable one).
    public func postMortem(id: String) -> PostMortem? {
        guard !id.contains("/"), let data = FileManager.default.contents(atPath: postMortemDirectory.string + "/" + id + ".json") else { return nil }
        return try? JSONDecoder.records.decode(PostMortem.self, from: data)
    }

    /// Every post-mortem kept, newest first.
    public func postMortems() -> [PostMortem] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: postMortemDirectory.string)) ?? []).filter { $0.hasSuffix(".json") }
        return names.compactMap { postMortem(id: String($0.dropLast(5))) }.sorted { $0.recordedAt > $1.recordedAt }
    }

    /// Removes the post-mortem of `id` (`microvm rm ID`), and the directory once it holds no
    /// other: a host whose failures were all cleared keeps nothing of them.
    public func removePostMortem(id: String) {
        guard !id.contains("/") else { return }
        unlink(postMortemDirectory.string + "/" + id + ".json")
        rmdir(postMortemDirectory.string)
    }
}
