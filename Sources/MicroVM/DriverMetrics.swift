import FirecrackerAPI
import Metrics
import Synchronization

/// The driver's own figures, through swift-metrics: what an operator alerts on and plots
/// (launch latency and failures by step, how VMs end, stops that needed a kill, snapshots,
/// teardowns that left something behind) without parsing logs.
///
/// They go to `DriverConfiguration.metricsFactory`, or to the bootstrapped backend when it
/// names none (swift-metrics' no-op until the application bootstraps one). Every dimension
/// takes a small fixed set of values (never an id or a path), so a Prometheus backend's series
/// stay few however many VMs come and go:
///
/// | label | kind | dimensions |
/// | --- | --- | --- |
/// | `microvm_vm_launch_duration` | timer | `mode` (create, run, restore), `sandbox` (jailed, unjailed) |
/// | `microvm_vm_launch_failures` | counter | `mode`, `step` (the step that failed) |
/// | `microvm_vm_exits` | counter | `reason` (``ExitReason/Kind``) |
/// | `microvm_vm_stop_duration` | timer | `outcome` (shutdown: the VM ended within the grace; killed: it was killed) |
/// | `microvm_vm_snapshot_duration` | timer | `type` (full, diff) |
/// | `microvm_vm_teardown_failures` | counter | (none): a VM's jail, cgroups or directory could not all be removed |
/// | `microvm_vms` | gauge | (none): VMs this process supervises now |
struct DriverMetrics: Sendable {
    private let factory: any MetricsFactory

    init(factory: (any MetricsFactory)?) {
        self.factory = factory ?? MetricsSystem.factory
    }

    enum Mode: String, Sendable {
        case create, run, restore
    }

    func launched(mode: Mode, sandboxed: Bool, duration: Duration) {
        Timer(
            label: "microvm_vm_launch_duration", dimensions: [("mode", mode.rawValue), ("sandbox", sandboxed ? "jailed" : "unjailed")],
            factory: factory
        ).recordNanoseconds(duration.nanoseconds)
    }

    func launchFailed(mode: Mode, error: MicroVMError) {
        Counter(label: "microvm_vm_launch_failures", dimensions: [("mode", mode.rawValue), ("step", Self.step(of: error))], factory: factory)
            .increment()
    }

    func stopped(escalated: Bool, duration: Duration) {
        Timer(label: "microvm_vm_stop_duration", dimensions: [("outcome", escalated ? "killed" : "shutdown")], factory: factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    func snapshotted(type: SnapshotType, duration: Duration) {
        Timer(label: "microvm_vm_snapshot_duration", dimensions: [("type", type == .diff ? "diff" : "full")], factory: factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    /// A supervised VM's VMM was seen for the first time (a launch, or an attach).
    func supervising() {
        let count = Self.supervised.withLock { count in
            count += 1
            return count
        }
        Gauge(label: "microvm_vms", factory: factory).record(count)
    }

    /// A supervised VM ended, and its teardown ran.
    func ended(_ reason: ExitReason, teardownComplete: Bool) {
        let count = Self.supervised.withLock { count in
            count = max(0, count - 1)
            return count
        }
        Gauge(label: "microvm_vms", factory: factory).record(count)
        Counter(label: "microvm_vm_exits", dimensions: [("reason", reason.kind.rawValue)], factory: factory).increment()
        if !teardownComplete { Counter(label: "microvm_vm_teardown_failures", factory: factory).increment() }
    }

    /// VMs supervised by this process, whatever configuration each came from.
    private static let supervised = Mutex(0)

    /// The failed step of a launch, as a metric's dimension: one of a fixed set (a step that
    /// names a drive or an interface is counted under its kind).
    static func step(of error: MicroVMError) -> String {
        switch error {
        case .createFailed(_, let step, let cause, _):
            if cause is CancellationError { return "cancelled" }
            if step.hasPrefix("configuring drive ") { return "configuring a drive" }
            if step.hasPrefix("configuring network interface ") { return "configuring a network interface" }
            return step
        case .invalidSpec: return "validating the spec"
        case .sandbox: return "checking the host"
        case .stateConflict: return "claiming the id"
        case .network: return "setting up the network"
        case .api: return "configuring through the API"
        case .file: return "files"
        default: return "other"
        }
    }
}

extension Duration {
    /// Whole nanoseconds, as swift-metrics' timers take them.
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
