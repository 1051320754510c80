public import FirecrackerAPI
import Foundation
public import MicroVMHost
import Synchronization
public import SystemPackage

/// VMs that live only in memory, for users' unit tests: the same state machine, the same spec
/// validation and the same errors as ``MicroVM``, no Firecracker. What the guest would do is up
/// to the test: ``InMemoryMicroVM/guestWrites(_:)`` puts text on the console,
/// ``InMemoryMicroVM/guestExits(_:)`` ends the VM as a guest or a crash would.
public final class InMemoryProvider: MicroVMProvider {
    /// Whether spec validation checks that the host files exist (tests often use made-up paths).
    public let checksFiles: Bool
    private let live = Mutex<Set<String>>([])

    public init(checksFiles: Bool = false) {
        self.checksFiles = checksFiles
    }

    public func create(_ spec: VMSpec) async throws(MicroVMError) -> InMemoryMicroVM {
        try await make(spec, state: .created)
    }

    public func run(_ spec: VMSpec) async throws(MicroVMError) -> InMemoryMicroVM {
        try await make(spec, state: .running)
    }

    public func restore(
        _ snapshot: Snapshot, id: String, resume: Bool = true, networkOverrides: [String: String] = [:]
    ) async throws(MicroVMError) -> InMemoryMicroVM {
        let spec = try snapshot.spec(restoredAs: id, networkOverrides: networkOverrides)
        return try await make(spec, state: resume ? .running : .paused)
    }

    /// Ids of the VMs whose "VMM" is alive.
    public var liveIDs: Set<String> { live.withLock { $0 } }

    private func make(_ spec: VMSpec, state: VMState) async throws(MicroVMError) -> InMemoryMicroVM {
        var problems = spec.validate()
        if !checksFiles { problems.removeAll { $0.isAboutHostFile } }
        if !problems.isEmpty { throw .invalidSpec(id: spec.id, problems: problems) }
        let id: VMIdentifier
        do {
            id = try VMIdentifier(spec.id)
        } catch {
            throw .sandbox(id: spec.id, error)
        }
        let claimed = live.withLock { $0.insert(spec.id).inserted }
        if !claimed {
            throw .createFailed(
                id: spec.id, step: "staging files", cause: JailError.jailBusy(id: spec.id, pid: 0, jailDirectory: "(in memory)"), exit: nil)
        }
        return InMemoryMicroVM(id: id, spec: spec, state: state) { [weak self] in
            _ = self?.live.withLock { $0.remove(spec.id) }
        }
    }
}

/// A VM of ``InMemoryProvider``.
public actor InMemoryMicroVM: MicroVMHandle {
    public nonisolated let id: VMIdentifier
    public nonisolated let spec: VMSpec
    public nonisolated let console = Console()
    public private(set) var state: VMState
    /// Text written to the guest's serial input, in order.
    public var input: String { inputLog.withLock { $0 } }

    private let inputLog = Mutex("")
    private let ended = ExitState<ExitReason>()
    private let release: @Sendable () -> Void

    init(id: VMIdentifier, spec: VMSpec, state: VMState, release: @escaping @Sendable () -> Void) {
        self.id = id
        self.spec = spec
        self.state = state
        self.release = release
    }

    public func start() async throws(MicroVMError) {
        try VMOperation.start.check(in: state, id: id.rawValue)
        state = .running
    }

    public func pause() async throws(MicroVMError) {
        try VMOperation.pause.check(in: state, id: id.rawValue)
        state = .paused
    }

    public func resume() async throws(MicroVMError) {
        try VMOperation.resume.check(in: state, id: id.rawValue)
        state = .running
    }

    public func sendCtrlAltDel() async throws(MicroVMError) {
        try VMOperation.sendCtrlAltDel.check(in: state, id: id.rawValue)
    }

    /// Writes a snapshot description (and empty state and memory files) so a restore works.
    public func snapshot(to destination: FilePath, type: SnapshotType = .full) async throws(MicroVMError) -> Snapshot {
        try VMOperation.snapshot.check(in: state, id: id.rawValue)
        try SnapshotFiles.prepareDestination(destination, id: id.rawValue)
        for name in ["state", "memory"] {
            _ = FileManager.default.createFile(atPath: destination.appending(name).string, contents: nil)
        }
        let snapshot = Snapshot(
            directory: destination, type: type, spec: spec, firecrackerVersion: nil, driveCopies: [:], createdAt: Date())
        try await snapshot.writeDescription()
        return snapshot
    }

    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> ExitReason {
        if let reason = state.exitReason { return reason }
        let wasRunning = state != .created
        return await end(ExitReason(kind: wasRunning ? .guestShutdown : .killedByDriver, exit: wasRunning ? .exited(code: 0) : .signaled(signal: 9)))
    }

    @discardableResult
    public func kill() async -> ExitReason {
        if let reason = state.exitReason { return reason }
        return await end(ExitReason(kind: .killedByDriver, exit: .signaled(signal: 9)))
    }

    public func waitForExit() async -> ExitReason {
        await ended.wait(timeout: nil) ?? ExitReason(kind: .unknown, exit: .unknown)
    }

    public nonisolated func write(_ text: String) {
        inputLog.withLock { $0 += text }
    }

    /// What the guest prints on its console.
    public func guestWrites(_ text: String) async {
        await console.append(Array(text.utf8))
    }

    /// Ends the VM as if its VMM had exited for `reason` (a guest shutdown, a crash...).
    @discardableResult
    public func guestExits(_ kind: ExitReason.Kind, exit: VMMExit = .exited(code: 0)) async -> ExitReason {
        if let reason = state.exitReason { return reason }
        return await end(ExitReason(kind: kind, exit: exit))
    }

    private func end(_ reason: ExitReason) async -> ExitReason {
        state = .ended(reason)
        release()
        await console.finish()
        await ended.resolve(reason)
        return reason
    }
}

extension SpecProblem {
    /// Problems that come from looking at the host's files (existence, kind).
    var isAboutHostFile: Bool {
        (field.hasPrefix("boot.kernel") || field.hasPrefix("boot.initrd") || (field.hasPrefix("drives[") && field.hasSuffix(".path")))
            && !message.contains("not an absolute path")
    }
}
