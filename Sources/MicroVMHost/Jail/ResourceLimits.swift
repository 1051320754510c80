/// One `--cgroup <controller>.<file>=<value>` argument of the jailer.
public struct CgroupSetting: Sendable, Hashable, CustomStringConvertible {
    public var file: String
    public var value: String

    public init(_ file: String, _ value: String) {
        self.file = file
        self.value = value
    }

    /// The controller the jailer derives from the file name (text before the first dot).
    public var controller: String { String(file.split(separator: ".", maxSplits: 1).first ?? "") }

    /// The jailer's argument form.
    public var argument: String { "\(file)=\(value)" }

    public var description: String { argument }
}

/// What the guest is given; limits are checked against it.
public struct GuestResources: Sendable, Hashable {
    public var memoryMiB: Int
    public var vcpuCount: Int

    public init(memoryMiB: Int, vcpuCount: Int) {
        self.memoryMiB = memoryMiB
        self.vcpuCount = vcpuCount
    }
}

/// A CPU bandwidth cap, in CPUs' worth of time per period (1.5 = one and a half CPUs).
public struct CPUQuota: Sendable, Hashable {
    public var cpus: Double
    public var periodMicroseconds: Int

    public init(cpus: Double, periodMicroseconds: Int = 100_000) {
        self.cpus = cpus
        self.periodMicroseconds = periodMicroseconds
    }

    /// The kernel's bounds: period 1 ms to 1 s, quota at least 1 ms.
    public static let periodRange = 1_000...1_000_000
    public static let minimumQuotaMicroseconds = 1_000

    public var quotaMicroseconds: Int {
        guard cpus.isFinite, cpus > 0 else { return 0 }
        let quota = (cpus * Double(periodMicroseconds)).rounded()
        return quota >= Double(Int.max) ? Int.max : Int(quota)
    }
}

/// The memory cgroup limit. The cgroup charges everything the VMM process touches — guest RAM,
/// Firecracker's own heap and threads, KVM's page tables for the guest, and page cache of drive
/// and snapshot I/O — so a limit equal to the guest's RAM gets the VMM OOM-killed as soon as the
/// guest uses its memory. Every form here keeps headroom above the guest's RAM.
public enum MemoryLimit: Sendable, Hashable {
    /// Guest RAM + `defaultOverheadMiB` + guest RAM / `proportionalOverheadDivisor`.
    case automatic
    /// Guest RAM + this many MiB (at least `minimumHeadroomMiB`).
    case headroom(mebibytes: Int)
    /// An absolute limit; it must exceed the guest RAM by at least `minimumHeadroomMiB`.
    case bytes(UInt64)

    /// Fixed part of the automatic headroom. Firecracker itself targets under 5 MiB of overhead;
    /// the rest covers page cache of I/O through the VMM, thread stacks, the API server and
    /// allocator slack, so a busy VM is throttled by reclaim instead of being OOM-killed.
    public static let defaultOverheadMiB = 64
    /// Proportional part of the automatic headroom (1/64 of guest RAM), for KVM's page tables and
    /// the dirty-page bitmap, which grow with the guest.
    public static let proportionalOverheadDivisor = 64
    /// The least headroom an explicit limit may leave.
    public static let minimumHeadroomMiB = 16

    /// The limit in bytes for a guest of `guestMemoryMiB`.
    public func bytes(guestMemoryMiB: Int) throws(JailError) -> UInt64 {
        let mib: UInt64 = 1 << 20
        let guest = UInt64(max(guestMemoryMiB, 0)) * mib
        switch self {
        case .automatic:
            let overhead = UInt64(Self.defaultOverheadMiB + guestMemoryMiB / Self.proportionalOverheadDivisor)
            return guest + overhead * mib
        case .headroom(let headroom):
            guard headroom >= Self.minimumHeadroomMiB else {
                throw .invalidResourceLimits(
                    "memory headroom of \(headroom) MiB is below the minimum of \(Self.minimumHeadroomMiB) MiB",
                    fix: "leave at least \(Self.minimumHeadroomMiB) MiB above the guest RAM, or use .automatic")
            }
            return guest + UInt64(headroom) * mib
        case .bytes(let limit):
            let minimum = guest + UInt64(Self.minimumHeadroomMiB) * mib
            guard limit >= minimum else {
                let relation = limit <= guest ? "at or below" : "less than \(Self.minimumHeadroomMiB) MiB above"
                throw .invalidResourceLimits(
                    "memory limit of \(limit) bytes is \(relation) the guest's \(guestMemoryMiB) MiB of RAM; the VMM would be OOM-killed",
                    fix: "set at least \(minimum) bytes (guest RAM + \(Self.minimumHeadroomMiB) MiB), or use MemoryLimit.automatic")
            }
            return limit
        }
    }
}

/// CPUs (and memory nodes) the VMM may run on.
public struct CPUSet: Sendable, Hashable {
    public var cpus: [Int]
    /// nil: every memory node of the host (cgroup v1 needs a value, so the host's nodes are
    /// written; on v2 nothing is written and the parent's nodes apply).
    public var memoryNodes: [Int]?

    public init(cpus: [Int], memoryNodes: [Int]? = nil) {
        self.cpus = cpus
        self.memoryNodes = memoryNodes
    }
}

/// Per-VM cgroup limits, translated into the jailer's `--cgroup` arguments for either version.
public struct ResourceLimits: Sendable, Hashable {
    public var cpu: CPUQuota?
    public var memory: MemoryLimit?
    /// Tasks (threads) the VMM may have; at least vCPUs + `nonVCPUThreads`.
    public var pids: Int?
    public var cpuset: CPUSet?

    public init(cpu: CPUQuota? = nil, memory: MemoryLimit? = nil, pids: Int? = nil, cpuset: CPUSet? = nil) {
        self.cpu = cpu
        self.memory = memory
        self.pids = pids
        self.cpuset = cpuset
    }

    /// No limits at all.
    public static let none = ResourceLimits()
    /// A memory limit with automatic headroom; the other resources are left to the parent cgroup.
    public static let recommended = ResourceLimits(memory: .automatic)

    /// Tasks a running VMM has besides its vCPU threads, all charged to its pids cgroup:
    /// Firecracker's main thread, its API thread, and KVM's `kvm-nx-lpage-recovery` worker, which
    /// recent x86 kernels run as a task of the VM's process (measured with v1.12.1 here: 1 vCPU
    /// gives pids.current = 4).
    public static let nonVCPUThreads = 3

    /// The controllers these limits write, for the preflight check.
    public func requiredControllers(numaNode: Int? = nil) -> Set<String> {
        var result: Set<String> = []
        if cpu != nil { result.insert("cpu") }
        if memory != nil { result.insert("memory") }
        if pids != nil { result.insert("pids") }
        if cpuset != nil || numaNode != nil { result.insert("cpuset") }
        return result
    }

    /// The `--cgroup` settings for `version`, in the order the jailer should write them (cpuset
    /// first; on v1 the period before the quota). Throws for limits that cannot work: a memory
    /// limit without headroom above the guest RAM, a quota the cpuset can never give, a pids
    /// limit below the VMM's thread count, CPUs or nodes the host does not have.
    public func cgroupSettings(
        version: CgroupVersion, guest: GuestResources, topology: HostTopology, numaNode: Int? = nil
    ) throws(JailError) -> [CgroupSetting] {
        guard guest.memoryMiB > 0, guest.vcpuCount > 0 else {
            throw .invalidResourceLimits(
                "guest with \(guest.memoryMiB) MiB and \(guest.vcpuCount) vCPUs",
                fix: "give the guest at least 1 MiB of memory and 1 vCPU")
        }
        var settings: [CgroupSetting] = []

        if let pinning = try effectiveCPUSet(topology: topology, numaNode: numaNode) {
            if let cpu, cpu.cpus > Double(pinning.cpus.count) {
                throw .invalidResourceLimits(
                    "a CPU quota of \(cpu.cpus) CPUs can never be used on a cpuset of \(pinning.cpus.count) CPU(s)",
                    fix: "lower the quota to at most \(pinning.cpus.count) CPUs or add CPUs to the cpuset")
            }
            settings.append(CgroupSetting("cpuset.cpus", HostTopology.formatList(pinning.cpus)))
            switch (version, pinning.memoryNodes) {
            case (.v1, let nodes):
                // v1 refuses to attach a task to a cpuset whose mems are empty (ENOSPC).
                let mems = nodes ?? topology.memoryNodes
                guard !mems.isEmpty else {
                    throw .invalidResourceLimits(
                        "cgroup v1 cpusets need memory nodes and none are known",
                        fix: "set CPUSet.memoryNodes explicitly (e.g. [0])")
                }
                settings.append(CgroupSetting("cpuset.mems", HostTopology.formatList(mems)))
            case (.v2, let nodes?):
                settings.append(CgroupSetting("cpuset.mems", HostTopology.formatList(nodes)))
            case (.v2, nil):
                break
            }
        }

        if let cpu {
            guard cpu.cpus.isFinite, cpu.cpus > 0 else {
                throw .invalidResourceLimits(
                    "CPU quota of \(cpu.cpus) CPUs", fix: "use a positive number of CPUs, e.g. 0.5 or 2")
            }
            guard CPUQuota.periodRange.contains(cpu.periodMicroseconds) else {
                throw .invalidResourceLimits(
                    "CPU period of \(cpu.periodMicroseconds) µs is outside the kernel's 1000-1000000 µs",
                    fix: "use a period between 1 ms and 1 s (100000 µs is the kernel default)")
            }
            let quota = cpu.quotaMicroseconds
            guard quota >= CPUQuota.minimumQuotaMicroseconds else {
                throw .invalidResourceLimits(
                    "CPU quota of \(cpu.cpus) CPUs is \(quota) µs per \(cpu.periodMicroseconds) µs period, below the kernel's 1000 µs",
                    fix: "raise the CPU fraction or lengthen the period")
            }
            if !topology.onlineCPUs.isEmpty, cpu.cpus > Double(topology.onlineCPUs.count) {
                throw .invalidResourceLimits(
                    "a CPU quota of \(cpu.cpus) CPUs exceeds the host's \(topology.onlineCPUs.count) online CPUs",
                    fix: "use at most \(topology.onlineCPUs.count) CPUs, or no quota")
            }
            switch version {
            case .v1:
                settings.append(CgroupSetting("cpu.cfs_period_us", "\(cpu.periodMicroseconds)"))
                settings.append(CgroupSetting("cpu.cfs_quota_us", "\(quota)"))
            case .v2:
                settings.append(CgroupSetting("cpu.max", "\(quota) \(cpu.periodMicroseconds)"))
            }
        }

        if let memory {
            let bytes = try memory.bytes(guestMemoryMiB: guest.memoryMiB)
            settings.append(CgroupSetting(version == .v1 ? "memory.limit_in_bytes" : "memory.max", "\(bytes)"))
        }

        if let pids {
            let minimum = guest.vcpuCount + Self.nonVCPUThreads
            guard pids >= minimum else {
                throw .invalidResourceLimits(
                    "a pids limit of \(pids) is below the \(minimum) threads Firecracker needs for \(guest.vcpuCount) vCPU(s)",
                    fix: "allow at least vCPUs + \(Self.nonVCPUThreads) = \(minimum) tasks")
            }
            settings.append(CgroupSetting("pids.max", "\(pids)"))
        }
        return settings
    }

    /// The cpuset from `cpuset` and/or a NUMA node, checked against the host.
    func effectiveCPUSet(topology: HostTopology, numaNode: Int?) throws(JailError) -> CPUSet? {
        var result = cpuset
        if let node = numaNode {
            guard let nodeCPUs = topology.nodeCPUs[node] else { throw .numaNodeMissing(node) }
            if let nodes = cpuset?.memoryNodes, nodes != [node] {
                throw .invalidResourceLimits(
                    "cpuset memory nodes \(HostTopology.formatList(nodes)) contradict NUMA node \(node)",
                    fix: "leave CPUSet.memoryNodes unset when a NUMA node is configured, or set it to [\(node)]")
            }
            let cpus = cpuset?.cpus ?? nodeCPUs
            if let outside = cpus.first(where: { !nodeCPUs.contains($0) }) {
                throw .invalidResourceLimits(
                    "CPU \(outside) is not on NUMA node \(node) (its CPUs are \(HostTopology.formatList(nodeCPUs)))",
                    fix: "pick CPUs of node \(node) or leave CPUSet.cpus unset to use all of them")
            }
            result = CPUSet(cpus: cpus, memoryNodes: [node])
        }
        guard let result else { return nil }
        guard !result.cpus.isEmpty else {
            throw .invalidResourceLimits("the cpuset has no CPUs", fix: "list at least one CPU")
        }
        if let negative = (result.cpus + (result.memoryNodes ?? [])).first(where: { $0 < 0 }) {
            throw .invalidResourceLimits("negative CPU or node number \(negative)", fix: "use numbers from the host's lists")
        }
        if !topology.onlineCPUs.isEmpty, let missing = result.cpus.first(where: { !topology.onlineCPUs.contains($0) }) {
            throw .invalidResourceLimits(
                "CPU \(missing) is not online on this host (online: \(HostTopology.formatList(topology.onlineCPUs)))",
                fix: "pick CPUs listed in /sys/devices/system/cpu/online")
        }
        if let nodes = result.memoryNodes {
            if nodes.isEmpty {
                throw .invalidResourceLimits("the cpuset has an empty list of memory nodes", fix: "list at least one node or leave it unset")
            }
            if !topology.memoryNodes.isEmpty, let missing = nodes.first(where: { !topology.memoryNodes.contains($0) }) {
                throw .invalidResourceLimits(
                    "memory node \(missing) does not exist on this host (nodes: \(HostTopology.formatList(topology.memoryNodes)))",
                    fix: "pick nodes listed in /sys/devices/system/node/has_memory")
            }
        }
        return result
    }
}

/// The jailer's `--resource-limit` values (rlimits of the Firecracker process).
public struct ProcessLimits: Sendable, Hashable {
    /// RLIMIT_FSIZE in bytes. Firecracker writes guest data into its drive files, so this must be
    /// at least the size of the largest writable drive, or a guest write past it kills the VMM
    /// with SIGXFSZ (exit 151).
    public var fileSizeBytes: UInt64?
    /// RLIMIT_NOFILE; the jailer's own default is 2048.
    public var openFiles: UInt64?

    public init(fileSizeBytes: UInt64? = nil, openFiles: UInt64? = nil) {
        self.fileSizeBytes = fileSizeBytes
        self.openFiles = openFiles
    }

    public var arguments: [String] {
        var result: [String] = []
        if let fileSizeBytes { result += ["--resource-limit", "fsize=\(fileSizeBytes)"] }
        if let openFiles { result += ["--resource-limit", "no-file=\(openFiles)"] }
        return result
    }
}
