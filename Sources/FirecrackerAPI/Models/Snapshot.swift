/// Full or incremental snapshot.
public enum SnapshotType: String, Codable, Sendable, CaseIterable {
    /// All of guest memory.
    case full = "Full"
    /// Only memory dirtied since the last snapshot (needs dirty page tracking; developer preview).
    case diff = "Diff"
}

/// The body of `PUT /snapshot/create` (post-boot only; the VM must be paused first).
public struct SnapshotCreateParams: Codable, Sendable, Hashable {
    /// Where the guest memory is written.
    public var memFilePath: String
    /// Where the device and vCPU state is written.
    public var snapshotPath: String
    /// Full when unset.
    public var snapshotType: SnapshotType?

    public init(snapshotPath: String, memFilePath: String, snapshotType: SnapshotType? = nil) {
        self.snapshotPath = snapshotPath
        self.memFilePath = memFilePath
        self.snapshotType = snapshotType
    }

    enum CodingKeys: String, CodingKey {
        case memFilePath = "mem_file_path"
        case snapshotPath = "snapshot_path"
        case snapshotType = "snapshot_type"
    }
}

/// Where a restored VM's memory comes from.
public struct MemoryBackend: Codable, Sendable, Hashable {
    public enum BackendType: String, Codable, Sendable, CaseIterable {
        /// `backendPath` is the memory file written by snapshot create.
        case file = "File"
        /// `backendPath` is the Unix socket of a userfaultfd page-fault handler; Firecracker
        /// connects and sends it the uffd and the memory regions.
        case uffd = "Uffd"
    }

    public var backendType: BackendType
    public var backendPath: String

    public init(backendType: BackendType, backendPath: String) {
        self.backendType = backendType
        self.backendPath = backendPath
    }

    /// Memory from a snapshot's memory file.
    public static func file(_ path: String) -> MemoryBackend {
        MemoryBackend(backendType: .file, backendPath: path)
    }

    /// Memory served by a userfaultfd handler listening on `socketPath`.
    public static func uffd(_ socketPath: String) -> MemoryBackend {
        MemoryBackend(backendType: .uffd, backendPath: socketPath)
    }

    enum CodingKeys: String, CodingKey {
        case backendType = "backend_type"
        case backendPath = "backend_path"
    }
}

/// Points a restored network interface at a different host TAP device.
public struct NetworkOverride: Codable, Sendable, Hashable {
    public var ifaceId: String
    public var hostDevName: String

    public init(ifaceId: String, hostDevName: String) {
        self.ifaceId = ifaceId
        self.hostDevName = hostDevName
    }

    enum CodingKeys: String, CodingKey {
        case ifaceId = "iface_id"
        case hostDevName = "host_dev_name"
    }
}

/// Points a restored vsock device at a different host Unix socket (Firecracker 1.16+).
public struct VsockOverride: Codable, Sendable, Hashable {
    public var udsPath: String

    public init(udsPath: String) {
        self.udsPath = udsPath
    }

    enum CodingKeys: String, CodingKey {
        case udsPath = "uds_path"
    }
}

/// The body of `PUT /snapshot/load`. Only a fresh Firecracker process (nothing configured but
/// logger and metrics) accepts it, and a failed load ends that process.
///
/// Exactly one of `memBackend` and the deprecated `memFilePath` must be set; the client checks
/// this before sending, since a refused load costs the whole VMM.
public struct SnapshotLoadParams: Codable, Sendable, Hashable, VersionGated {
    /// Deprecated since Firecracker 1.13 in favour of `trackDirtyPages` (same meaning); setting
    /// it gets an answer with `Deprecation: true`.
    public var enableDiffSnapshots: Bool?
    /// Track dirty pages after the restore, for later diff snapshots. Firecracker 1.13+.
    public var trackDirtyPages: Bool?
    /// Deprecated: use `memBackend` with ``MemoryBackend/file(_:)``. Setting it gets an answer
    /// with `Deprecation: true`.
    public var memFilePath: String?
    public var memBackend: MemoryBackend?
    public var snapshotPath: String
    /// Resume the guest right after a successful load (otherwise it stays paused).
    public var resumeVm: Bool?
    /// New host TAP devices for restored interfaces.
    public var networkOverrides: [NetworkOverride]?
    /// New host socket for the restored vsock device. Firecracker 1.16+.
    public var vsockOverride: VsockOverride?
    /// x86_64: advance kvmclock by the wall-clock time since the snapshot (KVM_CLOCK_REALTIME).
    /// Firecracker 1.16+.
    public var clockRealtime: Bool?

    public init(
        snapshotPath: String, memBackend: MemoryBackend? = nil, memFilePath: String? = nil,
        resumeVm: Bool? = nil, trackDirtyPages: Bool? = nil, enableDiffSnapshots: Bool? = nil,
        networkOverrides: [NetworkOverride]? = nil, vsockOverride: VsockOverride? = nil,
        clockRealtime: Bool? = nil
    ) {
        self.snapshotPath = snapshotPath
        self.memBackend = memBackend
        self.memFilePath = memFilePath
        self.resumeVm = resumeVm
        self.trackDirtyPages = trackDirtyPages
        self.enableDiffSnapshots = enableDiffSnapshots
        self.networkOverrides = networkOverrides
        self.vsockOverride = vsockOverride
        self.clockRealtime = clockRealtime
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(
            trackDirtyPages == nil ? nil : FieldVersions.snapshotLoadTrackDirtyPages,
            vsockOverride == nil ? nil : FieldVersions.snapshotLoadVsockOverride,
            clockRealtime == nil ? nil : FieldVersions.snapshotLoadClockRealtime)
    }

    enum CodingKeys: String, CodingKey {
        case enableDiffSnapshots = "enable_diff_snapshots"
        case trackDirtyPages = "track_dirty_pages"
        case memFilePath = "mem_file_path"
        case memBackend = "mem_backend"
        case snapshotPath = "snapshot_path"
        case resumeVm = "resume_vm"
        case networkOverrides = "network_overrides"
        case vsockOverride = "vsock_override"
        case clockRealtime = "clock_realtime"
    }
}
