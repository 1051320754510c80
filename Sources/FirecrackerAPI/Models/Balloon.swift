/// The memory balloon (`PUT /balloon` pre-boot only; `GET /balloon` answers it): lets the host
/// reclaim guest memory by inflating a balloon inside the guest.
///
/// Numbers have Firecracker's own types (`amount_mib` u32, `stats_polling_interval_s` u16).
/// The `Int` initializer remains for callers holding `Int`s; a value those types cannot hold
/// (a negative size, for example) is refused with `.invalidArgument` before anything is sent.
public struct Balloon: Codable, Sendable, Hashable, VersionGated, LocallyValidated {
    /// Target balloon size: memory taken away from the guest.
    public var amountMiB: UInt32 {
        didSet { unrepresentable.removeAll { $0.field == "amount_mib" } }
    }
    /// Let the guest shrink the balloon when it runs out of memory.
    public var deflateOnOom: Bool
    /// Statistics refresh period; 0 (the default) disables statistics, and they cannot be
    /// turned on after boot.
    public var statsPollingIntervalSeconds: UInt16? {
        didSet { unrepresentable.removeAll { $0.field == "stats_polling_interval_s" } }
    }
    /// Free page hinting (Firecracker 1.14+).
    public var freePageHinting: Bool?
    /// Free page reporting (Firecracker 1.14+, developer preview).
    public var freePageReporting: Bool?
    var unrepresentable: [UnrepresentableInteger] = []

    public init(
        amountMiB: UInt32, deflateOnOom: Bool, statsPollingIntervalSeconds: UInt16? = nil,
        freePageHinting: Bool? = nil, freePageReporting: Bool? = nil
    ) {
        self.amountMiB = amountMiB
        self.deflateOnOom = deflateOnOom
        self.statsPollingIntervalSeconds = statsPollingIntervalSeconds
        self.freePageHinting = freePageHinting
        self.freePageReporting = freePageReporting
    }

    /// The same, from `Int`s (integer literals pick this one). Values outside `UInt32` /
    /// `UInt16` are refused by ``validate()``, hence before sending.
    public init(
        amountMiB: Int, deflateOnOom: Bool, statsPollingIntervalSeconds: Int? = nil,
        freePageHinting: Bool? = nil, freePageReporting: Bool? = nil
    ) {
        var problems: [UnrepresentableInteger] = []
        self.init(
            amountMiB: .wire(amountMiB, field: "amount_mib", into: &problems), deflateOnOom: deflateOnOom,
            statsPollingIntervalSeconds: statsPollingIntervalSeconds.map {
                .wire($0, field: "stats_polling_interval_s", into: &problems)
            },
            freePageHinting: freePageHinting, freePageReporting: freePageReporting)
        unrepresentable = problems
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.representable(unrepresentable, in: "Balloon")
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(
            freePageHinting == nil ? nil : FieldVersions.balloonFreePageHinting,
            freePageReporting == nil ? nil : FieldVersions.balloonFreePageReporting)
    }

    enum CodingKeys: String, CodingKey {
        case amountMiB = "amount_mib"
        case deflateOnOom = "deflate_on_oom"
        case statsPollingIntervalSeconds = "stats_polling_interval_s"
        case freePageHinting = "free_page_hinting"
        case freePageReporting = "free_page_reporting"
    }
}

/// A new balloon target (`PATCH /balloon`). Post-boot only: the spec says "before or after
/// boot", but Firecracker refuses it before InstanceStart; set the initial size in ``Balloon``.
public struct BalloonUpdate: Codable, Sendable, Hashable, LocallyValidated {
    public var amountMiB: UInt32 {
        didSet { unrepresentable = [] }
    }
    var unrepresentable: [UnrepresentableInteger] = []

    public init(amountMiB: UInt32) {
        self.amountMiB = amountMiB
    }

    /// From an `Int`; a value outside `UInt32` is refused by ``validate()``.
    public init(amountMiB: Int) {
        var problems: [UnrepresentableInteger] = []
        self.init(amountMiB: .wire(amountMiB, field: "amount_mib", into: &problems))
        unrepresentable = problems
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.representable(unrepresentable, in: "BalloonUpdate")
    }

    enum CodingKeys: String, CodingKey {
        case amountMiB = "amount_mib"
    }
}

/// A new statistics period (`PATCH /balloon/statistics`). Post-boot only (whatever the spec
/// says), and only when statistics were enabled (non-zero period) before boot; they cannot be
/// switched on or off afterwards.
public struct BalloonStatsUpdate: Codable, Sendable, Hashable, LocallyValidated {
    public var statsPollingIntervalSeconds: UInt16 {
        didSet { unrepresentable = [] }
    }
    var unrepresentable: [UnrepresentableInteger] = []

    public init(statsPollingIntervalSeconds: UInt16) {
        self.statsPollingIntervalSeconds = statsPollingIntervalSeconds
    }

    /// From an `Int`; a value outside `UInt16` is refused by ``validate()``.
    public init(statsPollingIntervalSeconds: Int) {
        var problems: [UnrepresentableInteger] = []
        self.init(
            statsPollingIntervalSeconds: .wire(statsPollingIntervalSeconds, field: "stats_polling_interval_s", into: &problems))
        unrepresentable = problems
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.representable(unrepresentable, in: "BalloonStatsUpdate")
    }

    enum CodingKeys: String, CodingKey {
        case statsPollingIntervalSeconds = "stats_polling_interval_s"
    }
}

/// What `GET /balloon/statistics` answers. Apart from the four balloon sizes, every figure is
/// reported by the guest driver and absent when the guest does not provide it; the counters
/// from `oomKill` on need a 6.12+ guest kernel and Firecracker 1.14+. Types follow
/// Firecracker's (u32 sizes, u64 counters).
public struct BalloonStats: Codable, Sendable, Hashable {
    public var targetPages: UInt32
    public var actualPages: UInt32
    public var targetMiB: UInt32
    public var actualMiB: UInt32
    /// Bytes.
    public var swapIn: UInt64?
    /// Bytes.
    public var swapOut: UInt64?
    public var majorFaults: UInt64?
    public var minorFaults: UInt64?
    /// Bytes.
    public var freeMemory: UInt64?
    /// Bytes.
    public var totalMemory: UInt64?
    /// Bytes.
    public var availableMemory: UInt64?
    /// Bytes.
    public var diskCaches: UInt64?
    public var hugetlbAllocations: UInt64?
    public var hugetlbFailures: UInt64?
    public var oomKill: UInt64?
    public var allocStall: UInt64?
    public var asyncScan: UInt64?
    public var directScan: UInt64?
    public var asyncReclaim: UInt64?
    public var directReclaim: UInt64?

    public init(
        targetPages: UInt32, actualPages: UInt32, targetMiB: UInt32, actualMiB: UInt32,
        swapIn: UInt64? = nil, swapOut: UInt64? = nil, majorFaults: UInt64? = nil,
        minorFaults: UInt64? = nil, freeMemory: UInt64? = nil, totalMemory: UInt64? = nil,
        availableMemory: UInt64? = nil, diskCaches: UInt64? = nil, hugetlbAllocations: UInt64? = nil,
        hugetlbFailures: UInt64? = nil, oomKill: UInt64? = nil, allocStall: UInt64? = nil,
        asyncScan: UInt64? = nil, directScan: UInt64? = nil, asyncReclaim: UInt64? = nil,
        directReclaim: UInt64? = nil
    ) {
        self.targetPages = targetPages
        self.actualPages = actualPages
        self.targetMiB = targetMiB
        self.actualMiB = actualMiB
        self.swapIn = swapIn
        self.swapOut = swapOut
        self.majorFaults = majorFaults
        self.minorFaults = minorFaults
        self.freeMemory = freeMemory
        self.totalMemory = totalMemory
        self.availableMemory = availableMemory
        self.diskCaches = diskCaches
        self.hugetlbAllocations = hugetlbAllocations
        self.hugetlbFailures = hugetlbFailures
        self.oomKill = oomKill
        self.allocStall = allocStall
        self.asyncScan = asyncScan
        self.directScan = directScan
        self.asyncReclaim = asyncReclaim
        self.directReclaim = directReclaim
    }

    enum CodingKeys: String, CodingKey {
        case targetPages = "target_pages"
        case actualPages = "actual_pages"
        case targetMiB = "target_mib"
        case actualMiB = "actual_mib"
        case swapIn = "swap_in"
        case swapOut = "swap_out"
        case majorFaults = "major_faults"
        case minorFaults = "minor_faults"
        case freeMemory = "free_memory"
        case totalMemory = "total_memory"
        case availableMemory = "available_memory"
        case diskCaches = "disk_caches"
        case hugetlbAllocations = "hugetlb_allocations"
        case hugetlbFailures = "hugetlb_failures"
        case oomKill = "oom_kill"
        case allocStall = "alloc_stall"
        case asyncScan = "async_scan"
        case directScan = "direct_scan"
        case asyncReclaim = "async_reclaim"
        case directReclaim = "direct_reclaim"
    }
}

/// Options for `PATCH /balloon/hinting/start` (Firecracker 1.14+; hinting must have been
/// enabled with ``Balloon/freePageHinting`` before boot).
public struct BalloonStartCmd: Codable, Sendable, Hashable {
    /// Acknowledge the guest's "done" automatically instead of waiting for a stop call.
    public var acknowledgeOnStop: Bool?

    public init(acknowledgeOnStop: Bool? = nil) {
        self.acknowledgeOnStop = acknowledgeOnStop
    }

    enum CodingKeys: String, CodingKey {
        case acknowledgeOnStop = "acknowledge_on_stop"
    }
}

/// What `GET /balloon/hinting/status` answers (Firecracker 1.14+): the last hinting command
/// each side issued, as raw virtio-balloon command ids (u32).
public struct BalloonHintingStatus: Codable, Sendable, Hashable {
    public var hostCmd: UInt32
    public var guestCmd: UInt32?

    public init(hostCmd: UInt32, guestCmd: UInt32? = nil) {
        self.hostCmd = hostCmd
        self.guestCmd = guestCmd
    }

    enum CodingKeys: String, CodingKey {
        case hostCmd = "host_cmd"
        case guestCmd = "guest_cmd"
    }
}
