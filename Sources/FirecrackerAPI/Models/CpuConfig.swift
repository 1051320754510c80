/// A custom CPU template (`PUT /cpu-config`, pre-boot only): which CPUID bits, MSRs, registers
/// and KVM capabilities the guest gets.
///
/// The spec describes both architectures in one object, but Firecracker rejects fields of the
/// other architecture as unknown: set `cpuidModifiers`/`msrModifiers` on x86_64,
/// `regModifiers`/`vcpuFeatures` on aarch64, and `kvmCapabilities` on either.
///
/// Bitmaps are strings of `0b` followed by `0`, `1` (force the bit) or `x` (leave it), most
/// significant bit first; numbers (leaf, address) are decimal, `0x` hex or `0b` binary strings.
public struct CpuConfig: Codable, Sendable, Hashable {
    /// Capability numbers as strings; a leading `!` removes the capability check (`"!121"`).
    public var kvmCapabilities: [String]?
    public var cpuidModifiers: [CpuidLeafModifier]?
    public var msrModifiers: [MsrModifier]?
    public var regModifiers: [ArmRegisterModifier]?
    public var vcpuFeatures: [VcpuFeatures]?

    public init(
        kvmCapabilities: [String]? = nil, cpuidModifiers: [CpuidLeafModifier]? = nil,
        msrModifiers: [MsrModifier]? = nil, regModifiers: [ArmRegisterModifier]? = nil,
        vcpuFeatures: [VcpuFeatures]? = nil
    ) {
        self.kvmCapabilities = kvmCapabilities
        self.cpuidModifiers = cpuidModifiers
        self.msrModifiers = msrModifiers
        self.regModifiers = regModifiers
        self.vcpuFeatures = vcpuFeatures
    }

    enum CodingKeys: String, CodingKey {
        case kvmCapabilities = "kvm_capabilities"
        case cpuidModifiers = "cpuid_modifiers"
        case msrModifiers = "msr_modifiers"
        case regModifiers = "reg_modifiers"
        case vcpuFeatures = "vcpu_features"
    }
}

/// The four registers a CPUID leaf returns.
public enum CpuidRegister: String, Codable, Sendable, CaseIterable {
    case eax, ebx, ecx, edx
}

/// Changes to one CPUID leaf/subleaf (x86_64).
public struct CpuidLeafModifier: Codable, Sendable, Hashable {
    public var leaf: String
    public var subleaf: String
    /// KVM's per-entry flags (for example 1 = the subleaf index is significant).
    public var flags: Int32
    public var modifiers: [CpuidRegisterModifier]

    public init(leaf: String, subleaf: String, flags: Int32, modifiers: [CpuidRegisterModifier]) {
        self.leaf = leaf
        self.subleaf = subleaf
        self.flags = flags
        self.modifiers = modifiers
    }
}

/// A 32-bit bitmap applied to one register of a CPUID leaf (x86_64).
public struct CpuidRegisterModifier: Codable, Sendable, Hashable {
    public var register: CpuidRegister
    public var bitmap: String

    public init(register: CpuidRegister, bitmap: String) {
        self.register = register
        self.bitmap = bitmap
    }
}

/// A 64-bit bitmap applied to one model-specific register (x86_64).
public struct MsrModifier: Codable, Sendable, Hashable {
    /// The MSR's 32-bit address, as a decimal, hex or binary string.
    public var addr: String
    public var bitmap: String

    public init(addr: String, bitmap: String) {
        self.addr = addr
        self.bitmap = bitmap
    }
}

/// A bitmap of up to 128 bits applied to one system register (aarch64).
public struct ArmRegisterModifier: Codable, Sendable, Hashable {
    /// The register's 64-bit KVM id, as a decimal, hex or binary string.
    public var addr: String
    public var bitmap: String

    public init(addr: String, bitmap: String) {
        self.addr = addr
        self.bitmap = bitmap
    }
}

/// A 32-bit bitmap applied to one word of `kvm_vcpu_init.features` (aarch64).
public struct VcpuFeatures: Codable, Sendable, Hashable {
    public var index: Int32
    public var bitmap: String

    public init(index: Int32, bitmap: String) {
        self.index = index
        self.bitmap = bitmap
    }
}
