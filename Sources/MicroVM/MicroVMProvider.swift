public import FirecrackerAPI
public import Logging
public import MicroVMHost
public import SystemPackage

/// A VM as code that uses one sees it: the lifecycle and the console. ``MicroVM`` is the real
/// one; ``InMemoryMicroVM`` is its twin for users' unit tests, with the same state machine and
/// the same validation errors.
public protocol MicroVMHandle: Actor {
    nonisolated var id: VMIdentifier { get }
    nonisolated var spec: VMSpec { get }
    nonisolated var console: Console { get }
    var state: VMState { get }
    func start() async throws(MicroVMError)
    func pause() async throws(MicroVMError)
    func resume() async throws(MicroVMError)
    func sendCtrlAltDel() async throws(MicroVMError)
    func snapshot(to destination: FilePath, type: SnapshotType) async throws(MicroVMError) -> Snapshot
    @discardableResult func stop(grace: Duration) async -> ExitReason
    @discardableResult func kill() async -> ExitReason
    func waitForExit() async -> ExitReason
    nonisolated func write(_ text: String)
}

/// Makes VMs. Code written against this protocol runs on real Firecracker with
/// ``FirecrackerProvider`` and in unit tests with ``InMemoryProvider``.
public protocol MicroVMProvider: Sendable {
    associatedtype VM: MicroVMHandle
    /// Configured, not started.
    func create(_ spec: VMSpec) async throws(MicroVMError) -> VM
    /// Created and started.
    func run(_ spec: VMSpec) async throws(MicroVMError) -> VM
    func restore(_ snapshot: Snapshot, id: String, resume: Bool, networkOverrides: [String: String]) async throws(MicroVMError) -> VM
}

extension MicroVM: MicroVMHandle {}

/// Real VMs, under Firecracker (and the jailer, as the policy decides).
public struct FirecrackerProvider: MicroVMProvider {
    public var configuration: DriverConfiguration
    public var logger: Logger
    /// How its restores bring the guest's memory in (``RestoreMemory``): a ``WarmPool`` of
    /// lazily restored VMs is a pool over a provider with `.lazy`.
    public var restoreMemory: RestoreMemory

    public init(configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm"), restoreMemory: RestoreMemory = .file) {
        self.configuration = configuration
        self.logger = logger
        self.restoreMemory = restoreMemory
    }

    public func create(_ spec: VMSpec) async throws(MicroVMError) -> MicroVM {
        try await MicroVM.create(spec, configuration: configuration, logger: logger)
    }

    public func run(_ spec: VMSpec) async throws(MicroVMError) -> MicroVM {
        try await MicroVM.run(spec, configuration: configuration, logger: logger)
    }

    public func restore(
        _ snapshot: Snapshot, id: String, resume: Bool = true, networkOverrides: [String: String] = [:]
    ) async throws(MicroVMError) -> MicroVM {
        try await MicroVM.restore(
            snapshot, id: id, resume: resume, networkOverrides: networkOverrides, memory: restoreMemory, configuration: configuration,
            logger: logger)
    }
}
