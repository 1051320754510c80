/// What `GET /vm/config` answers: every resource configured so far, in the same shapes the
/// PUT calls take (and the layout of Firecracker's `--config-file`, except `cpu-config`, which
/// a config file gives as the path of a JSON file holding the template: Firecracker 1.12
/// refuses the object there with "expected path string").
///
/// After a snapshot restore the boot source, `smt` and the CPU template are empty. Firecracker
/// does not report the logger, metrics or CPU configuration here even though the spec lists
/// them. `memory-hotplug` and `pmem` come from Firecracker 1.14+.
public struct FullVmConfiguration: Codable, Sendable, Hashable {
    public var balloon: Balloon?
    public var drives: [Drive]?
    public var bootSource: BootSource?
    public var cpuConfig: CpuConfig?
    public var logger: LoggerConfiguration?
    public var machineConfig: MachineConfiguration?
    public var metrics: MetricsConfiguration?
    public var memoryHotplug: MemoryHotplugConfig?
    public var mmdsConfig: MmdsConfig?
    public var networkInterfaces: [NetworkInterface]?
    public var pmem: [Pmem]?
    public var vsock: Vsock?
    public var entropy: EntropyDevice?

    public init(
        balloon: Balloon? = nil, drives: [Drive]? = nil, bootSource: BootSource? = nil,
        cpuConfig: CpuConfig? = nil, logger: LoggerConfiguration? = nil,
        machineConfig: MachineConfiguration? = nil, metrics: MetricsConfiguration? = nil,
        memoryHotplug: MemoryHotplugConfig? = nil, mmdsConfig: MmdsConfig? = nil,
        networkInterfaces: [NetworkInterface]? = nil, pmem: [Pmem]? = nil, vsock: Vsock? = nil,
        entropy: EntropyDevice? = nil
    ) {
        self.balloon = balloon
        self.drives = drives
        self.bootSource = bootSource
        self.cpuConfig = cpuConfig
        self.logger = logger
        self.machineConfig = machineConfig
        self.metrics = metrics
        self.memoryHotplug = memoryHotplug
        self.mmdsConfig = mmdsConfig
        self.networkInterfaces = networkInterfaces
        self.pmem = pmem
        self.vsock = vsock
        self.entropy = entropy
    }

    enum CodingKeys: String, CodingKey {
        case balloon
        case drives
        case bootSource = "boot-source"
        case cpuConfig = "cpu-config"
        case logger
        case machineConfig = "machine-config"
        case metrics
        case memoryHotplug = "memory-hotplug"
        case mmdsConfig = "mmds-config"
        case networkInterfaces = "network-interfaces"
        case pmem
        case vsock
        case entropy
    }
}
