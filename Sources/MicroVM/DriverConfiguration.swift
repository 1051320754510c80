import Logging
public import Metrics
public import MicroVMHost
import SystemPackage
import Synchronization

/// What the driver needs from the host, shared by every VM it runs: where Firecracker and the
/// jailer are, the default jail settings and sandbox policy. A VM's spec can override the jail
/// settings and the policy for itself.
public struct DriverConfiguration: Sendable, Hashable {
    /// Binaries, VM user, chroot base, cgroup parent, namespaces.
    public var jailer: JailerConfiguration
    /// Applied when a spec names none.
    public var policy: SandboxPolicy
    /// How long a new Firecracker has to answer its API.
    public var readinessTimeout: Duration
    /// Where VMs are recorded (one directory each), so a later driver finds them.
    public var stateStore: StateStore
    /// When the driver starts reading a VM's console.
    public var consoleReading: ConsoleReading = .always

    public enum ConsoleReading: Sendable, Hashable {
        /// From the launch: the ring holds everything, the guest never waits on its console.
        case always
        /// Only once the console is asked for (a line awaited, a subscription, the ring read).
        /// For a process that creates VMs and hands them to others (`microvm run -d`): what the
        /// guest writes waits in its FIFO (64 KiB, then the guest waits) for whoever attaches,
        /// instead of being read into a ring that dies with this process. A spec with a console
        /// file is always read.
        case onDemand
    }
    /// The per-VM monitor that detached VMs run under; nil (the default): each VM is supervised
    /// by this process alone, and a VM whose driver is gone keeps running unwatched (its console
    /// waits in a 64 KiB FIFO, its exit status is lost). `microvm` always uses one.
    public var monitor: MonitorSettings?
    /// The host side of VM networks (for specs with `network`); nil: the defaults, with the
    /// leases under `<state root>/.network` (a dot: no VM id can name it).
    public var network: VMNetworkConfiguration?

    /// Where the driver's own metrics go (launches, exits, stops, snapshots, teardowns; see
    /// README, "Metrics"); nil: swift-metrics' bootstrapped backend. Not part of a
    /// configuration's equality.
    public var metricsFactory: (any MetricsFactory)? {
        get { metricsBackend.factory }
        set { metricsBackend = MetricsBackend(factory: newValue) }
    }
    private var metricsBackend = MetricsBackend(factory: nil)

    /// A metrics factory held in a `Hashable` configuration: every backend compares equal, as
    /// where figures go does not change what a VM is.
    private struct MetricsBackend: Sendable, Hashable {
        let factory: (any MetricsFactory)?
        static func == (lhs: Self, rhs: Self) -> Bool { true }
        func hash(into hasher: inout Hasher) {}
    }

    var metrics: DriverMetrics { DriverMetrics(factory: metricsBackend.factory) }

    /// ``network``, or the defaults with the leases under the state root.
    public var networkConfiguration: VMNetworkConfiguration {
        network ?? VMNetworkConfiguration(stateDirectory: stateStore.root.appending(".network"))
    }

    public init(
        jailer: JailerConfiguration, policy: SandboxPolicy = .required, stateStore: StateStore = StateStore(),
        readinessTimeout: Duration = .seconds(5)
    ) {
        self.jailer = jailer
        self.policy = policy
        self.stateStore = stateStore
        self.readinessTimeout = readinessTimeout
    }

    /// From `MICROVM_FIRECRACKER_BIN`, `MICROVM_JAILER_*`, `MICROVM_SANDBOX_POLICY` and
    /// `MICROVM_STATE_DIR`; a value that cannot be used is an error naming the variable.
    public init(environment: [String: String]) throws(JailError) {
        var store = StateStore()
        if let root = environment[StateStore.environmentVariable], !root.isEmpty {
            guard root.hasPrefix("/") else {
                throw .invalidSetting(
                    name: StateStore.environmentVariable, value: root, reason: "not an absolute path",
                    fix: "set it to an absolute directory such as /run/microvm, or unset it")
            }
            store = StateStore(root: FilePath(root))
        }
        self.init(jailer: try JailerConfiguration(environment: environment), policy: try SandboxPolicy(environment: environment), stateStore: store)
    }

    /// The jailer configuration for `spec`: the driver's, with the spec's overrides.
    func jailerConfiguration(for spec: VMSpec) -> JailerConfiguration {
        var configuration = jailer
        guard let overrides = spec.jail else { return configuration }
        if let uid = overrides.uid { configuration.uid = uid }
        if let gid = overrides.gid { configuration.gid = gid }
        if let base = overrides.chrootBase { configuration.chrootBase = FilePath(base) }
        if let parent = overrides.parentCgroup { configuration.parentCgroup = parent }
        if let newPID = overrides.newPidNamespace { configuration.newPIDNamespace = newPID }
        if let netns = overrides.netns { configuration.networkNamespace = FilePath(netns) }
        return configuration
    }
}

/// Sandbox preflight results that found nothing wrong, kept per configuration and limits: the
/// check runs `jailer --version` and reads cgroup files, which a fleet launching many VMs with
/// one configuration should not repeat for each. A failed check is never cached.
enum PreflightCache {
    private struct Key: Hashable {
        let configuration: JailerConfiguration
        let controllers: Set<String>
    }

    private static let passed = Mutex<Set<Key>>([])

    /// The decision without running anything, when a preflight for this configuration passed.
    static func cached(policy: SandboxPolicy, configuration: JailerConfiguration, limits: ResourceLimits) -> SandboxDecision? {
        let key = Key(configuration: configuration, controllers: limits.requiredControllers(numaNode: configuration.numaNode))
        guard policy != .disabled, passed.withLock({ $0.contains(key) }) else { return nil }
        return .jailed(PreflightReport(problems: []))
    }

    static func decide(
        policy: SandboxPolicy, configuration: JailerConfiguration, limits: ResourceLimits, logger: Logger
    ) throws(JailError) -> SandboxDecision {
        let key = Key(configuration: configuration, controllers: limits.requiredControllers(numaNode: configuration.numaNode))
        if let cached = cached(policy: policy, configuration: configuration, limits: limits) { return cached }
        let decision = try policy.evaluate(configuration: configuration, limits: limits, logger: logger)
        if decision.isSandboxed { _ = passed.withLock { $0.insert(key) } }
        return decision
    }
}

/// What the host's cgroup mounts and CPU topology are, read once per process: they do not
/// change while a driver runs, and reading them for every VM cost a launch a few hundred µs.
enum HostFacts {
    static let cgroupHost: Result<CgroupHost, JailError> = Result { () throws(JailError) in try CgroupHost.detect() }
    static let topology = HostTopology.detect()
}
