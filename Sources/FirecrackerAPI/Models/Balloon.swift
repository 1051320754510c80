/// The memory balloon (`PUT /balloon` pre-boot only; `GET /balloon` answers it): lets the host
/// reclaim guest memory by inflating a balloon inside the guest.
public struct Balloon: Codable, Sendable, Hashable, VersionGated {
    /// Target balloon size: memory taken away from the guest.
    public var amountMiB: Int
    /// Let the guest shrink the balloon when it runs out of memory.
    public var deflateOnOom: Bool
    /// Statistics refresh period; 0 (the default) disables statistics, and they cannot be
    /// turned on after boot.
    public var statsPollingIntervalSeconds: Int?
    /// Free page hinting (Firecracker 1.14+).
    public var freePageHinting: Bool?
    /// Free page reporting (Firecracker 1.14+, developer preview).
    public var freePageReporting: Bool?

    public init(
        amountMiB: Int, deflateOnOom: Bool, statsPollingIntervalSeconds: Int? = nil,
        freePageHinting: Bool? = nil, freePageReporting: Bool? = nil
    ) {
        self.amountMiB = amountMiB
        self.deflateOnOom = deflateOnOom
        self.statsPollingIntervalSeconds = statsPollingIntervalSeconds
        self.freePageHinting = freePageHinting
        self.freePageReporting = freePageReporting
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
public struct BalloonUpdate: Codable, Sendable, Hashable {
    public var amountMiB: Int

    public init(amountMiB: Int) {
        self.amountMiB = amountMiB
    }

    enum CodingKeys: String, CodingKey {
        case amountMiB = "amount_mib"
    }
}

/// A new statistics period (`PATCH /balloon/statistics`). Post-boot only (whatever the spec
/// says), and only when statistics were enabled (non-zero period) before boot; they cannot be
/// switched on or off afterwards.
public struct BalloonStatsUpdate: Codable, Sendable, Hashable {
    public var statsPollingIntervalSeconds: Int

    public init(statsPollingIntervalSeconds: Int) {
        self.statsPollingIntervalSeconds = statsPollingIntervalSeconds
    }

    enum CodingKeys: String, CodingKey {
        case statsPollingIntervalSeconds = "stats_polling_interval_s"
    }
}

/// What `GET /balloon/statistics` answers. Apart from the four balloon sizes, every figure is
/// reported by the guest driver and absent when the guest does not provide it; the counters
/// from `oomKill` on need a 6.12+ guest kernel and Firecracker 1.14+.
public struct BalloonStats: Codable, Sendable, Hashable {
    public var targetPages: Int
    public var actualPages: Int
    public var targetMiB: Int
    public var actualMiB: Int
    /// Bytes.
    public var swapIn: Int64?
    /// Bytes.
    public var swapOut: Int64?
    public var majorFaults: Int64?
    public var minorFaults: Int64?
    /// Bytes.
    public var freeMemory: Int64?
    /// Bytes.
    public var totalMemory: Int64?
    /// Bytes.
    public var availableMemory: Int64?
    /// Bytes.
    public var diskCaches: Int64?
    public var hugetlbAllocations: Int64?
    public var hugetlbFailures: Int64?
    public var oomKill: Int64?
    public var allocStall: Int64?
    public var asyncScan: Int64?
    public var directScan: Int64?
    public var asyncReclaim: Int64?
    public var directReclaim: Int64?

    public init(
        targetPages: Int, actualPages: Int, targetMiB: Int, actualMiB: Int,
        swapIn: Int64? = nil, swapOut: Int64? = nil, majorFaults: Int64? = nil,
        minorFaults: Int64? = nil, freeMemory: Int64? = nil, totalMemory: Int64? = nil,
        availableMemory: Int64? = nil, diskCaches: Int64? = nil, hugetlbAllocations: Int64? = nil,
        hugetlbFailures: Int64? = nil, oomKill: Int64? = nil, allocStall: Int64? = nil,
        asyncScan: Int64? = nil, directScan: Int64? = nil, asyncReclaim: Int64? = nil,
        directReclaim: Int64? = nil
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
/// each side issued, as raw virtio-balloon command ids.
public struct BalloonHintingStatus: Codable, Sendable, Hashable {
    public var hostCmd: Int
    public var guestCmd: Int?

    public init(hostCmd: Int, guestCmd: Int? = nil) {
        self.hostCmd = hostCmd
        self.guestCmd = guestCmd
    }

    enum CodingKeys: String, CodingKey {
        case hostCmd = "host_cmd"
        case guestCmd = "guest_cmd"
    }
}
