/// A static CPU template: masks CPU features so the guest sees the same CPU on different hosts.
/// Firecracker deprecates static templates in favour of `PUT /cpu-config` (``CpuConfig``) and
/// answers requests using them with a deprecation warning.
public enum CpuTemplate: String, Codable, Sendable, CaseIterable {
    case c3 = "C3"
    case t2 = "T2"
    case t2s = "T2S"
    case t2cl = "T2CL"
    case t2a = "T2A"
    case v1n1 = "V1N1"
    case none = "None"
}

/// How guest memory is backed on the host.
public enum HugePages: String, Codable, Sendable, CaseIterable {
    /// Ordinary 4 KiB pages.
    case none = "None"
    /// 2 MiB hugetlbfs pages; the memory size must then be a multiple of 2 MiB, and a balloon
    /// device cannot be used.
    case hugetlbfs2M = "2M"
}

/// vCPUs, memory and related knobs (`PUT /machine-config`, pre-boot only; `GET` answers it).
///
/// A PUT resets every optional field that is left out to its default; use
/// ``MachineConfigurationUpdate`` with PATCH to change only some fields.
public struct MachineConfiguration: Codable, Sendable, Hashable {
    /// Deprecated by Firecracker: prefer a custom ``CpuConfig``.
    public var cpuTemplate: CpuTemplate?
    /// Simultaneous multithreading (x86_64 only); with it, `vcpuCount` must be 1 or even.
    public var smt: Bool?
    public var memSizeMiB: Int
    /// Needed for diff snapshots of this VM.
    public var trackDirtyPages: Bool?
    /// 1...32.
    public var vcpuCount: Int
    public var hugePages: HugePages?

    public init(
        vcpuCount: Int, memSizeMiB: Int, smt: Bool? = nil, trackDirtyPages: Bool? = nil,
        hugePages: HugePages? = nil, cpuTemplate: CpuTemplate? = nil
    ) {
        self.vcpuCount = vcpuCount
        self.memSizeMiB = memSizeMiB
        self.smt = smt
        self.trackDirtyPages = trackDirtyPages
        self.hugePages = hugePages
        self.cpuTemplate = cpuTemplate
    }

    enum CodingKeys: String, CodingKey {
        case cpuTemplate = "cpu_template"
        case smt
        case memSizeMiB = "mem_size_mib"
        case trackDirtyPages = "track_dirty_pages"
        case vcpuCount = "vcpu_count"
        case hugePages = "huge_pages"
    }
}

/// The body of `PATCH /machine-config` (pre-boot only): only the fields that are set change.
///
/// The spec reuses `MachineConfiguration` for PATCH, with `mem_size_mib` and `vcpu_count`
/// required, but Firecracker has accepted partial bodies since 1.11 (it refuses only an empty
/// one), so this type makes every field optional. The client refuses an empty update locally.
public struct MachineConfigurationUpdate: Codable, Sendable, Hashable {
    public var cpuTemplate: CpuTemplate?
    public var smt: Bool?
    public var memSizeMiB: Int?
    public var trackDirtyPages: Bool?
    public var vcpuCount: Int?
    public var hugePages: HugePages?

    public init(
        vcpuCount: Int? = nil, memSizeMiB: Int? = nil, smt: Bool? = nil,
        trackDirtyPages: Bool? = nil, hugePages: HugePages? = nil, cpuTemplate: CpuTemplate? = nil
    ) {
        self.vcpuCount = vcpuCount
        self.memSizeMiB = memSizeMiB
        self.smt = smt
        self.trackDirtyPages = trackDirtyPages
        self.hugePages = hugePages
        self.cpuTemplate = cpuTemplate
    }

    /// True when no field is set; Firecracker rejects such a PATCH.
    public var isEmpty: Bool {
        cpuTemplate == nil && smt == nil && memSizeMiB == nil && trackDirtyPages == nil
            && vcpuCount == nil && hugePages == nil
    }

    enum CodingKeys: String, CodingKey {
        case cpuTemplate = "cpu_template"
        case smt
        case memSizeMiB = "mem_size_mib"
        case trackDirtyPages = "track_dirty_pages"
        case vcpuCount = "vcpu_count"
        case hugePages = "huge_pages"
    }
}
