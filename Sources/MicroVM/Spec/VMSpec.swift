public import FirecrackerAPI
public import MicroVMHost

/// Everything about one VM, as a value: what the guest gets (vCPUs, memory, kernel, devices) and
/// how the host runs it (jail, limits, sandbox policy, console). Read it from JSON or YAML with
/// ``VMSpec/load(from:)`` (strict: an unknown key is an error naming its path) and check it with
/// ``validate()``; the driver validates it again before it touches the host.
///
/// Host paths (kernel, initrd, drive images) are the caller's files: the driver links or copies
/// them into the VM's own directory and never changes them (writable drives are per-VM copies).
public struct VMSpec: Codable, Sendable, Hashable {
    /// The VM's id: 1-64 ASCII letters, digits or `-` (what the jailer accepts).
    public var id: String
    public var machine: Machine
    public var boot: Boot
    public var drives: [DriveSpec]
    public var networkInterfaces: [NetworkInterfaceSpec]
    /// An isolated network the driver makes for the VM (namespace, TAP, addresses, egress
    /// firewall); its interface is added to `network_interfaces`.
    public var network: NetworkSpec?
    public var vsock: VsockSpec?
    public var mmds: MMDSSpec?
    public var balloon: Balloon?
    public var entropy: EntropyDevice?
    /// A custom CPU template (Firecracker's `cpu-config`): CPUID bits, MSRs and KVM
    /// capabilities the guest gets, beyond what a static `machine.cpu_template` offers.
    public var cpuConfig: CpuConfig?
    public var logging: LoggingSpec?
    public var console: ConsoleSpec?
    public var jail: JailSpec?
    public var limits: LimitsSpec?
    /// nil: the driver's configured policy (`required` unless told otherwise).
    public var sandbox: SandboxPolicy?

    public init(
        id: String, machine: Machine, boot: Boot, drives: [DriveSpec] = [],
        networkInterfaces: [NetworkInterfaceSpec] = [], network: NetworkSpec? = nil, vsock: VsockSpec? = nil, mmds: MMDSSpec? = nil,
        balloon: Balloon? = nil, entropy: EntropyDevice? = nil, cpuConfig: CpuConfig? = nil, logging: LoggingSpec? = nil,
        console: ConsoleSpec? = nil, jail: JailSpec? = nil, limits: LimitsSpec? = nil, sandbox: SandboxPolicy? = nil
    ) {
        self.id = id
        self.machine = machine
        self.boot = boot
        self.drives = drives
        self.networkInterfaces = networkInterfaces
        self.network = network
        self.vsock = vsock
        self.mmds = mmds
        self.balloon = balloon
        self.entropy = entropy
        self.cpuConfig = cpuConfig
        self.logging = logging
        self.console = console
        self.jail = jail
        self.limits = limits
        self.sandbox = sandbox
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, machine, boot, drives
        case networkInterfaces = "network_interfaces"
        case network, vsock, mmds, balloon, entropy
        case cpuConfig = "cpu_config"
        case logging, console, jail, limits, sandbox
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        id = try container.decodeIfPresent(String.self, forKey: .id) ?? ""  // the caller gives it (the CLI: --id, or one it makes); validate() names a missing one
        machine = try container.decode(Machine.self, forKey: .machine)
        boot = try container.decode(Boot.self, forKey: .boot)
        drives = try container.decodeIfPresent([DriveSpec].self, forKey: .drives) ?? []
        networkInterfaces = try container.decodeIfPresent([NetworkInterfaceSpec].self, forKey: .networkInterfaces) ?? []
        network = try container.decodeIfPresent(NetworkSpec.self, forKey: .network)
        vsock = try container.decodeIfPresent(VsockSpec.self, forKey: .vsock)
        mmds = try container.decodeIfPresent(MMDSSpec.self, forKey: .mmds)
        balloon = try container.decodeIfPresent(Balloon.self, forKey: .balloon)
        entropy = try container.decodeIfPresent(EntropyDevice.self, forKey: .entropy)
        cpuConfig = try container.decodeIfPresent(CpuConfig.self, forKey: .cpuConfig)
        logging = try container.decodeIfPresent(LoggingSpec.self, forKey: .logging)
        console = try container.decodeIfPresent(ConsoleSpec.self, forKey: .console)
        jail = try container.decodeIfPresent(JailSpec.self, forKey: .jail)
        limits = try container.decodeIfPresent(LimitsSpec.self, forKey: .limits)
        sandbox = try container.decodeIfPresent(SandboxPolicy.self, forKey: .sandbox)
    }

    /// vCPUs, memory and CPU features.
    public struct Machine: Codable, Sendable, Hashable {
        /// 1...32.
        public var vcpus: Int
        public var memoryMiB: Int
        /// Simultaneous multithreading (x86_64); with it, `vcpus` must be 1 or even.
        public var smt: Bool?
        /// Deprecated by Firecracker in favour of custom CPU templates.
        public var cpuTemplate: CpuTemplate?
        /// Needed for diff snapshots on Firecracker 1.12 (1.13+ can diff without it).
        public var trackDirtyPages: Bool?
        public var hugePages: HugePages?

        public init(
            vcpus: Int = 1, memoryMiB: Int = 128, smt: Bool? = nil, cpuTemplate: CpuTemplate? = nil,
            trackDirtyPages: Bool? = nil, hugePages: HugePages? = nil
        ) {
            self.vcpus = vcpus
            self.memoryMiB = memoryMiB
            self.smt = smt
            self.cpuTemplate = cpuTemplate
            self.trackDirtyPages = trackDirtyPages
            self.hugePages = hugePages
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case vcpus
            case memoryMiB = "memory_mib"
            case smt
            case cpuTemplate = "cpu_template"
            case trackDirtyPages = "track_dirty_pages"
            case hugePages = "huge_pages"
        }
    }

    /// The kernel and its command line.
    public struct Boot: Codable, Sendable, Hashable {
        /// Host path of the uncompressed kernel (ELF vmlinux).
        public var kernel: String
        public var initrd: String?
        /// The kernel command line as an ordered list of words (order matters to the kernel;
        /// the last occurrence of an option usually wins).
        public var args: [String]

        /// The command line of a spec that gives none: the serial console (the driver's console
        /// reads it), a reboot that ends the VMM (Firecracker has no reset), a panic that reboots.
        public static let defaultArgs = ["console=ttyS0", "reboot=k", "panic=1"]

        public init(kernel: String, initrd: String? = nil, args: [String] = defaultArgs) {
            self.kernel = kernel
            self.initrd = initrd
            self.args = args
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case kernel, initrd, args
        }

        public init(from decoder: any Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            kernel = try container.decode(String.self, forKey: .kernel)
            initrd = try container.decodeIfPresent(String.self, forKey: .initrd)
            args = try container.decodeIfPresent([String].self, forKey: .args) ?? Self.defaultArgs
        }
    }

    /// Firecracker's log level (what the driver forwards to swift-log) and metrics.
    public struct LoggingSpec: Codable, Sendable, Hashable {
        /// Lines at this level or above are re-emitted through swift-log (default Info).
        public var level: LogLevel?
        /// The level Firecracker itself logs at (default: Info, or `level` when more verbose).
        /// Exit reasons and readiness read its Info lines: at Warning a triple fault is no longer
        /// told apart from a guest shutdown (both exit 0) and readiness polls the API socket;
        /// in exchange each API call costs less (Firecracker logs every request at Info;
        /// measured here: 4,200 vs 6,400 GET/s).
        public var vmmLevel: LogLevel?
        /// Firecracker's metrics, written to the VM's directory (`metrics.json`).
        public var metrics: Bool?

        public init(level: LogLevel? = nil, vmmLevel: LogLevel? = nil, metrics: Bool? = nil) {
            self.level = level
            self.vmmLevel = vmmLevel
            self.metrics = metrics
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case level
            case vmmLevel = "vmm_level"
            case metrics
        }

        /// What Firecracker is told.
        var firecrackerLevel: LogLevel {
            if let vmmLevel { return vmmLevel }
            switch level?.swiftLogLevel ?? .info {
            case .trace: return .trace
            case .debug: return .debug
            default: return .info
            }
        }
    }

    /// The serial console's in-memory ring and optional file.
    public struct ConsoleSpec: Codable, Sendable, Hashable {
        public var ringLines: Int?
        public var ringBytes: Int?
        /// Host path of a console log file (raw bytes, rotated at `maxFileBytes`).
        public var file: String?
        public var maxFileBytes: Int?
        public var keepFiles: Int?

        public init(ringLines: Int? = nil, ringBytes: Int? = nil, file: String? = nil, maxFileBytes: Int? = nil, keepFiles: Int? = nil) {
            self.ringLines = ringLines
            self.ringBytes = ringBytes
            self.file = file
            self.maxFileBytes = maxFileBytes
            self.keepFiles = keepFiles
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case ringLines = "ring_lines"
            case ringBytes = "ring_bytes"
            case file
            case maxFileBytes = "max_file_bytes"
            case keepFiles = "keep_files"
        }
    }

    /// Overrides of the driver's jailer settings for this VM.
    public struct JailSpec: Codable, Sendable, Hashable {
        public var uid: UInt32?
        public var gid: UInt32?
        public var chrootBase: String?
        public var parentCgroup: String?
        public var newPidNamespace: Bool?
        /// A network namespace file the VMM joins (e.g. `/var/run/netns/vm1`).
        public var netns: String?

        public init(
            uid: UInt32? = nil, gid: UInt32? = nil, chrootBase: String? = nil, parentCgroup: String? = nil,
            newPidNamespace: Bool? = nil, netns: String? = nil
        ) {
            self.uid = uid
            self.gid = gid
            self.chrootBase = chrootBase
            self.parentCgroup = parentCgroup
            self.newPidNamespace = newPidNamespace
            self.netns = netns
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case uid, gid
            case chrootBase = "chroot_base"
            case parentCgroup = "parent_cgroup"
            case newPidNamespace = "new_pid_ns"
            case netns
        }
    }

    /// cgroup limits of the VMM (jailed VMs only).
    public struct LimitsSpec: Codable, Sendable, Hashable {
        /// CPU time as a number of CPUs (0.5 = half of one).
        public var cpus: Double?
        /// The memory limit in MiB, which must exceed guest RAM by 16 MiB; nil: automatic headroom.
        public var memoryMiB: Int?
        /// Tasks (threads) the VMM may have: at least vCPUs + 3.
        public var pids: Int?
        /// CPUs the VMM may run on.
        public var cpuset: [Int]?

        public init(cpus: Double? = nil, memoryMiB: Int? = nil, pids: Int? = nil, cpuset: [Int]? = nil) {
            self.cpus = cpus
            self.memoryMiB = memoryMiB
            self.pids = pids
            self.cpuset = cpuset
        }

        enum CodingKeys: String, CodingKey, CaseIterable {
            case cpus
            case memoryMiB = "memory_mib"
            case pids, cpuset
        }

        /// The limits the jailer is given for this spec (doctor compares them with the cgroup files).
        public var resourceLimits: ResourceLimits {
            ResourceLimits(
                cpu: cpus.map { CPUQuota(cpus: $0) },
                memory: memoryMiB.map { .bytes(UInt64($0) << 20) } ?? .automatic,
                pids: pids, cpuset: cpuset.map { CPUSet(cpus: $0) })
        }
    }
}

/// A block device backed by a host image.
public struct DriveSpec: Codable, Sendable, Hashable {
    /// Letters, digits and `_` (Firecracker's path ids).
    public var id: String
    /// Host path of the image. Read-only drives are linked into the VM's directory; writable
    /// ones are per-VM copies (reflinked where the filesystem can), so the image is never written.
    public var path: String
    public var readOnly: Bool?
    /// The guest boots from it (`root=/dev/vda`).
    public var root: Bool?
    public var partuuid: String?
    public var cacheType: Drive.CacheType?
    public var ioEngine: Drive.IOEngine?
    public var rateLimiter: RateLimiter?

    public init(
        id: String, path: String, readOnly: Bool? = nil, root: Bool? = nil, partuuid: String? = nil,
        cacheType: Drive.CacheType? = nil, ioEngine: Drive.IOEngine? = nil, rateLimiter: RateLimiter? = nil
    ) {
        self.id = id
        self.path = path
        self.readOnly = readOnly
        self.root = root
        self.partuuid = partuuid
        self.cacheType = cacheType
        self.ioEngine = ioEngine
        self.rateLimiter = rateLimiter
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, path
        case readOnly = "read_only"
        case root, partuuid
        case cacheType = "cache_type"
        case ioEngine = "io_engine"
        case rateLimiter = "rate_limiter"
    }

    var isReadOnly: Bool { readOnly ?? false }
    var isRoot: Bool { root ?? false }
}

/// A virtio-net interface on a host TAP device.
public struct NetworkInterfaceSpec: Codable, Sendable, Hashable {
    /// Letters, digits and `_`.
    public var id: String
    /// The host TAP device (at most 15 bytes).
    public var tap: String
    /// The guest's MAC, `xx:xx:xx:xx:xx:xx`.
    public var mac: String?
    /// Firecracker 1.16+.
    public var mtu: Int?
    public var rxRateLimiter: RateLimiter?
    public var txRateLimiter: RateLimiter?

    public init(
        id: String, tap: String, mac: String? = nil, mtu: Int? = nil, rxRateLimiter: RateLimiter? = nil,
        txRateLimiter: RateLimiter? = nil
    ) {
        self.id = id
        self.tap = tap
        self.mac = mac
        self.mtu = mtu
        self.rxRateLimiter = rxRateLimiter
        self.txRateLimiter = txRateLimiter
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case id, tap, mac, mtu
        case rxRateLimiter = "rx_rate_limiter"
        case txRateLimiter = "tx_rate_limiter"
    }
}

/// A vsock device; its Unix socket lives in the VM's directory (``MicroVM/vsockPath``).
public struct VsockSpec: Codable, Sendable, Hashable {
    /// The guest's context id, 3 or more.
    public var guestCid: UInt32

    public init(guestCid: UInt32) {
        self.guestCid = guestCid
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case guestCid = "guest_cid"
    }
}

/// The microVM metadata service.
public struct MMDSSpec: Codable, Sendable, Hashable {
    public var version: MmdsVersion?
    /// Ids of the interfaces whose guest traffic to the MMDS address is answered.
    public var networkInterfaces: [String]
    public var ipv4Address: String?
    /// Firecracker 1.13+.
    public var imdsCompat: Bool?
    /// The data store's initial contents (any JSON value).
    public var metadata: JSONValue?

    public init(
        version: MmdsVersion? = .v2, networkInterfaces: [String], ipv4Address: String? = nil, imdsCompat: Bool? = nil,
        metadata: JSONValue? = nil
    ) {
        self.version = version
        self.networkInterfaces = networkInterfaces
        self.ipv4Address = ipv4Address
        self.imdsCompat = imdsCompat
        self.metadata = metadata
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case version
        case networkInterfaces = "network_interfaces"
        case ipv4Address = "ipv4_address"
        case imdsCompat = "imds_compat"
        case metadata
    }

    var configuration: MmdsConfig {
        MmdsConfig(networkInterfaces: networkInterfaces, version: version, ipv4Address: ipv4Address, imdsCompat: imdsCompat)
    }
}

/// An isolated network for the VM, made and removed by the driver (``DriverConfiguration/network``):
/// in `namespace` mode (jailed VMs) a network namespace of its own holding a TAP with the same
/// fixed addresses for every VM (snapshot clones need no change), joined to the host by a veth;
/// in `tap` mode a TAP in the host namespace. Either way an nftables firewall lets the guest
/// reach only what `allow` lists (and the host only what `allow_host` lists), drops spoofed
/// sources, and the guest learns its address from the `ip=` boot argument. IPv6 is dropped
/// unless the driver's network has IPv6 (`VMNetworkConfiguration.ipv6`) and a rule lists an
/// IPv6 destination.
public struct NetworkSpec: Codable, Sendable, Hashable {
    public enum Mode: String, Codable, Sendable, Hashable, CaseIterable {
        case namespace, tap
    }

    /// nil: `namespace` for a jailed VM, `tap` for an unjailed one.
    public var mode: Mode?
    /// The interface id (Firecracker's `iface_id`, letters, digits and `_`); default `eth0`.
    public var interfaceId: String?
    /// Destinations the guest may reach; nothing else leaves the VM.
    public var allow: [EgressRuleSpec]
    /// Destinations on the host itself the guest may reach.
    public var allowHost: [EgressRuleSpec]

    public init(mode: Mode? = nil, interfaceId: String? = nil, allow: [EgressRuleSpec] = [], allowHost: [EgressRuleSpec] = []) {
        self.mode = mode
        self.interfaceId = interfaceId
        self.allow = allow
        self.allowHost = allowHost
    }

    enum CodingKeys: String, CodingKey, CaseIterable {
        case mode
        case interfaceId = "interface_id"
        case allow
        case allowHost = "allow_host"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        mode = try container.decodeIfPresent(Mode.self, forKey: .mode)
        interfaceId = try container.decodeIfPresent(String.self, forKey: .interfaceId)
        allow = try container.decodeIfPresent([EgressRuleSpec].self, forKey: .allow) ?? []
        allowHost = try container.decodeIfPresent([EgressRuleSpec].self, forKey: .allowHost) ?? []
    }

    var interface: String { interfaceId ?? "eth0" }
}

/// One allowed destination: `destination` is an IPv4 or IPv6 address or CIDR (`0.0.0.0/0`,
/// `::/0` for any),
/// `protocol` `tcp`, `udp`, `icmp` or `any` (default), `ports` `443` or `8000-8080`.
public struct EgressRuleSpec: Codable, Sendable, Hashable {
    public var destination: String
    public var `protocol`: String?
    public var ports: String?

    public init(destination: String, protocol: String? = nil, ports: String? = nil) {
        self.destination = destination
        self.protocol = `protocol`
        self.ports = ports
    }

    /// The host module's rule, or why it cannot be one.
    func rule() -> Result<EgressRule, SpecProblemText> {
        let network: IPNetwork
        do {
            network = try IPNetwork(destination)
        } catch {
            return .failure(SpecProblemText(field: "destination", message: "'\(destination)' is not an IPv4 or IPv6 address or CIDR"))
        }
        guard let transport = EgressRule.Transport(rawValue: (`protocol` ?? "any").lowercased()) else {
            return .failure(SpecProblemText(field: "protocol", message: "'\(`protocol` ?? "")' is not tcp, udp, icmp or any"))
        }
        var range: ClosedRange<UInt16>?
        if let ports {
            let bounds = ports.split(separator: "-", omittingEmptySubsequences: false).map { UInt16($0) }
            guard (1...2).contains(bounds.count), let low = bounds.first ?? nil, let high = bounds.last ?? nil, low <= high, low > 0 else {
                return .failure(SpecProblemText(field: "ports", message: "'\(ports)' is not a port or a range such as 8000-8080"))
            }
            guard transport == .tcp || transport == .udp else {
                return .failure(SpecProblemText(field: "ports", message: "ports need protocol tcp or udp"))
            }
            range = low...high
        }
        return .success(EgressRule(destination: network, transport: transport, ports: range))
    }
}

/// A problem with one field of a nested value, before its path is known.
struct SpecProblemText: Error {
    var field: String
    var message: String
}

extension NetworkSpec {
    /// The firewall policy, and the problems that keep it from being usable (empty when none).
    func policy() -> (policy: EgressPolicy, problems: [SpecProblem]) {
        var problems: [SpecProblem] = []
        func rules(_ list: [EgressRuleSpec], _ key: String) -> [EgressRule] {
            list.enumerated().compactMap { index, rule in
                switch rule.rule() {
                case .success(let rule): return rule
                case .failure(let problem):
                    problems.append(SpecProblem(field: "network.\(key)[\(index)].\(problem.field)", message: problem.message))
                    return nil
                }
            }
        }
        let policy = EgressPolicy(allow: rules(allow, "allow"), allowHost: rules(allowHost, "allow_host"))
        if problems.isEmpty {
            do {
                try policy.validate()
            } catch {
                problems.append(SpecProblem(field: "network", message: error.summary, hint: error.hint))
            }
        }
        return (policy, problems)
    }
}
