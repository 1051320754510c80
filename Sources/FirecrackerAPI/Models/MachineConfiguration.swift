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
///
/// `memSizeMiB` has Firecracker's type (usize, so `UInt64` here: a PATCH accepts, and GET then
/// reports, sizes beyond `Int.max`). The `Int` initializer remains for callers holding `Int`s;
/// a negative size is refused before sending, like a `vcpuCount` outside 1...32 or a size of 0.
public struct MachineConfiguration: Codable, Sendable, Hashable, LocallyValidated {
    /// Deprecated by Firecracker: prefer a custom ``CpuConfig``. Firecracker answers a request
    /// that sets it with `Deprecation: true` (see ``DeprecationNotice``).
    public var cpuTemplate: CpuTemplate?
    /// Simultaneous multithreading (x86_64 only); with it, `vcpuCount` must be 1 or even.
    public var smt: Bool?
    /// Guest memory; at least 1.
    public var memSizeMiB: UInt64 {
        didSet { unrepresentable = [] }
    }
    /// Needed for diff snapshots of this VM.
    public var trackDirtyPages: Bool?
    /// 1...32.
    public var vcpuCount: Int
    public var hugePages: HugePages?
    var unrepresentable: [UnrepresentableInteger] = []

    public init(
        vcpuCount: Int, memSizeMiB: UInt64, smt: Bool? = nil, trackDirtyPages: Bool? = nil,
        hugePages: HugePages? = nil, cpuTemplate: CpuTemplate? = nil
    ) {
        self.vcpuCount = vcpuCount
        self.memSizeMiB = memSizeMiB
        self.smt = smt
        self.trackDirtyPages = trackDirtyPages
        self.hugePages = hugePages
        self.cpuTemplate = cpuTemplate
    }

    /// The same with the memory size as an `Int` (integer literals pick this one); a negative
    /// size is refused by ``validate()``.
    public init(
        vcpuCount: Int, memSizeMiB: Int, smt: Bool? = nil, trackDirtyPages: Bool? = nil,
        hugePages: HugePages? = nil, cpuTemplate: CpuTemplate? = nil
    ) {
        var problems: [UnrepresentableInteger] = []
        self.init(
            vcpuCount: vcpuCount, memSizeMiB: .wire(memSizeMiB, field: "mem_size_mib", into: &problems), smt: smt,
            trackDirtyPages: trackDirtyPages, hugePages: hugePages, cpuTemplate: cpuTemplate)
        unrepresentable = problems
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.representable(unrepresentable, in: "MachineConfiguration")
        try Check.range(vcpuCount, 1...32, field: "vcpu_count", in: "MachineConfiguration")
        try Check.atLeast(memSizeMiB, 1, field: "mem_size_mib", in: "MachineConfiguration", hint: "give the guest some memory")
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
/// one), so this type makes every field optional. The client refuses an empty update locally,
/// and a `vcpuCount` outside 1...32 or a memory size of 0.
public struct MachineConfigurationUpdate: Codable, Sendable, Hashable, LocallyValidated {
    /// Deprecated by Firecracker (see ``MachineConfiguration/cpuTemplate``).
    public var cpuTemplate: CpuTemplate?
    public var smt: Bool?
    /// Firecracker's usize; a PATCH takes any size up to `UInt64.max` (the boot then fails if
    /// the host cannot map it).
    public var memSizeMiB: UInt64?
    public var trackDirtyPages: Bool?
    public var vcpuCount: Int?
    public var hugePages: HugePages?

    public init(
        vcpuCount: Int? = nil, memSizeMiB: UInt64? = nil, smt: Bool? = nil,
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

    public func validate() throws(FirecrackerAPIError) {
        try Check.range(vcpuCount, 1...32, field: "vcpu_count", in: "MachineConfigurationUpdate")
        try Check.atLeast(memSizeMiB, 1, field: "mem_size_mib", in: "MachineConfigurationUpdate", hint: "give the guest some memory")
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
