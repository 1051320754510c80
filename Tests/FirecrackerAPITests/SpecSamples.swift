// Instances of every request model: minimal (required fields only), fully populated (every
// optional field set, at every level) and, for version-gated types, one per newer field.

import FirecrackerAPI

struct ModelSample: Sendable, CustomStringConvertible {
    enum Kind: String, Sendable {
        case minimal, full, field
    }

    var definition: String
    var kind: Kind
    var label: String
    var value: any (Encodable & Sendable)
    /// Validated with `required` waived at the top (``SpecErrata/partialMachineConfigPatch``).
    var waiveRequired = false

    /// The oldest release the value needs, per the type's own gating.
    var requiredVersion: FirecrackerVersion {
        (value as? any VersionGated)?.requiredVersion?.version ?? .baseline
    }

    var description: String { "\(definition) [\(label)]" }
}

enum SpecSamples {
    static let bucket = TokenBucket(size: 1_048_576, refillTime: 100)
    static let fullBucket = TokenBucket(size: 1_048_576, refillTime: 100, oneTimeBurst: 10 << 20)
    static let fullLimiter = RateLimiter(
        bandwidth: fullBucket, ops: TokenBucket(size: 1000, refillTime: 1000, oneTimeBurst: 5000))
    static let fullCpuConfig = CpuConfig(
        kvmCapabilities: ["171", "!172"],
        cpuidModifiers: [
            CpuidLeafModifier(
                leaf: "0x1", subleaf: "0x0", flags: 0,
                modifiers: [CpuidRegisterModifier(register: .ecx, bitmap: "0bx0xxxxxxxxxxxxxxxxxxxxxxxxxxxxx")])
        ],
        msrModifiers: [MsrModifier(addr: "0x10a", bitmap: "0b" + String(repeating: "x", count: 63) + "1")],
        regModifiers: [ArmRegisterModifier(addr: "0x603000000013c020", bitmap: "0bxxxxxxxx0000")],
        vcpuFeatures: [VcpuFeatures(index: 0, bitmap: "0b1100000")])

    /// Every sample, grouped by definition.
    static let all: [ModelSample] = [
        // Top-level request bodies.
        .init(definition: "InstanceActionInfo", kind: .minimal, label: "InstanceStart",
              value: InstanceActionInfo(actionType: .instanceStart)),
        .init(definition: "InstanceActionInfo", kind: .full, label: "SendCtrlAltDel",
              value: InstanceActionInfo(actionType: .sendCtrlAltDel)),
        .init(definition: "Balloon", kind: .minimal, label: "minimal",
              value: Balloon(amountMiB: 64, deflateOnOom: true)),
        .init(definition: "Balloon", kind: .full, label: "full",
              value: Balloon(amountMiB: 64, deflateOnOom: false, statsPollingIntervalSeconds: 1,
                             freePageHinting: true, freePageReporting: true)),
        .init(definition: "Balloon", kind: .field, label: "free_page_hinting",
              value: Balloon(amountMiB: 0, deflateOnOom: false, freePageHinting: false)),
        .init(definition: "Balloon", kind: .field, label: "free_page_reporting",
              value: Balloon(amountMiB: 0, deflateOnOom: false, freePageReporting: true)),
        .init(definition: "BalloonUpdate", kind: .minimal, label: "minimal", value: BalloonUpdate(amountMiB: 32)),
        .init(definition: "BalloonUpdate", kind: .full, label: "full", value: BalloonUpdate(amountMiB: 0)),
        .init(definition: "BalloonStatsUpdate", kind: .minimal, label: "minimal",
              value: BalloonStatsUpdate(statsPollingIntervalSeconds: 5)),
        .init(definition: "BalloonStatsUpdate", kind: .full, label: "full",
              value: BalloonStatsUpdate(statsPollingIntervalSeconds: 1)),
        .init(definition: "BalloonStartCmd", kind: .minimal, label: "minimal", value: BalloonStartCmd()),
        .init(definition: "BalloonStartCmd", kind: .full, label: "full",
              value: BalloonStartCmd(acknowledgeOnStop: true)),
        .init(definition: "BootSource", kind: .minimal, label: "minimal",
              value: BootSource(kernelImagePath: "/vmlinux")),
        .init(definition: "BootSource", kind: .full, label: "full",
              value: BootSource(kernelImagePath: "/vmlinux", bootArgs: "console=ttyS0 reboot=k panic=1",
                                initrdPath: "/initrd.img")),
        .init(definition: "CpuConfig", kind: .minimal, label: "minimal", value: CpuConfig()),
        .init(definition: "CpuConfig", kind: .full, label: "full", value: fullCpuConfig),
        .init(definition: "Drive", kind: .minimal, label: "minimal",
              value: Drive(driveId: "rootfs", isRootDevice: true)),
        .init(definition: "Drive", kind: .full, label: "full",
              value: Drive(driveId: "rootfs", isRootDevice: true, pathOnHost: "/rootfs.ext4", isReadOnly: false,
                           partuuid: "0eaa91a0-01", cacheType: .writeback, rateLimiter: fullLimiter,
                           ioEngine: .async, socket: "/vhost.sock")),
        .init(definition: "PartialDrive", kind: .minimal, label: "minimal", value: PartialDrive(driveId: "scratch")),
        .init(definition: "PartialDrive", kind: .full, label: "full",
              value: PartialDrive(driveId: "scratch", pathOnHost: "/new.ext4", rateLimiter: fullLimiter)),
        .init(definition: "Pmem", kind: .minimal, label: "minimal", value: Pmem(id: "pmem0", pathOnHost: "/pmem.img")),
        .init(definition: "Pmem", kind: .full, label: "full",
              value: Pmem(id: "pmem0", pathOnHost: "/pmem.img", rootDevice: true, readOnly: true,
                          rateLimiter: fullLimiter)),
        .init(definition: "Pmem", kind: .field, label: "rate_limiter",
              value: Pmem(id: "pmem0", pathOnHost: "/pmem.img", rateLimiter: RateLimiter())),
        .init(definition: "PartialPmem", kind: .minimal, label: "minimal", value: PartialPmem(id: "pmem0")),
        .init(definition: "PartialPmem", kind: .full, label: "full",
              value: PartialPmem(id: "pmem0", rateLimiter: fullLimiter)),
        .init(definition: "Logger", kind: .minimal, label: "minimal", value: LoggerConfiguration()),
        .init(definition: "Logger", kind: .full, label: "full",
              value: LoggerConfiguration(logPath: "/log.fifo", level: .off, showLevel: true, showLogOrigin: true,
                                         module: "api_server::request")),
        .init(definition: "MachineConfiguration", kind: .minimal, label: "minimal",
              value: MachineConfiguration(vcpuCount: 1, memSizeMiB: 128)),
        .init(definition: "MachineConfiguration", kind: .full, label: "full",
              value: MachineConfiguration(vcpuCount: 2, memSizeMiB: 256, smt: true, trackDirtyPages: true,
                                          hugePages: .hugetlbfs2M, cpuTemplate: .t2s)),
        .init(definition: "MachineConfiguration", kind: .minimal, label: "PATCH, one field",
              value: MachineConfigurationUpdate(vcpuCount: 2), waiveRequired: true),
        .init(definition: "MachineConfiguration", kind: .full, label: "PATCH, every field",
              value: MachineConfigurationUpdate(vcpuCount: 2, memSizeMiB: 256, smt: false, trackDirtyPages: false,
                                                hugePages: HugePages.none, cpuTemplate: CpuTemplate.none),
              waiveRequired: true),
        .init(definition: "Metrics", kind: .minimal, label: "minimal",
              value: MetricsConfiguration(metricsPath: "/metrics.fifo")),
        .init(definition: "Metrics", kind: .full, label: "full",
              value: MetricsConfiguration(metricsPath: "/metrics.json")),
        .init(definition: "MmdsContentsObject", kind: .minimal, label: "empty", value: MMDSContents()),
        .init(definition: "MmdsContentsObject", kind: .full, label: "nested",
              value: ["latest": ["meta-data": ["instance-id": "i-1", "tags": [1, 2.5, true, nil]]]] as MMDSContents),
        .init(definition: "MmdsConfig", kind: .minimal, label: "minimal", value: MmdsConfig(networkInterfaces: [])),
        .init(definition: "MmdsConfig", kind: .full, label: "full",
              value: MmdsConfig(networkInterfaces: ["eth0"], version: .v2, ipv4Address: "169.254.170.2",
                                imdsCompat: true)),
        .init(definition: "MmdsConfig", kind: .field, label: "imds_compat",
              value: MmdsConfig(networkInterfaces: ["eth0"], imdsCompat: false)),
        .init(definition: "EntropyDevice", kind: .minimal, label: "minimal", value: EntropyDevice()),
        .init(definition: "EntropyDevice", kind: .full, label: "full", value: EntropyDevice(rateLimiter: fullLimiter)),
        .init(definition: "SerialDevice", kind: .minimal, label: "minimal", value: SerialDevice()),
        .init(definition: "SerialDevice", kind: .full, label: "full",
              value: SerialDevice(serialOutPath: "/serial.out", rateLimiter: fullBucket)),
        .init(definition: "SerialDevice", kind: .field, label: "rate_limiter",
              value: SerialDevice(rateLimiter: bucket)),
        .init(definition: "MemoryHotplugConfig", kind: .minimal, label: "minimal",
              value: { var value = MemoryHotplugConfig(totalSizeMiB: 1024); value.totalSizeMiB = nil; return value }()),
        .init(definition: "MemoryHotplugConfig", kind: .full, label: "full",
              value: MemoryHotplugConfig(totalSizeMiB: 1024, slotSizeMiB: 128, blockSizeMiB: 2)),
        .init(definition: "MemoryHotplugSizeUpdate", kind: .minimal, label: "minimal",
              value: { var value = MemoryHotplugSizeUpdate(requestedSizeMiB: 0); value.requestedSizeMiB = nil; return value }()),
        .init(definition: "MemoryHotplugSizeUpdate", kind: .full, label: "full",
              value: MemoryHotplugSizeUpdate(requestedSizeMiB: 512)),
        .init(definition: "NetworkInterface", kind: .minimal, label: "minimal",
              value: NetworkInterface(ifaceId: "eth0", hostDevName: "tap0")),
        .init(definition: "NetworkInterface", kind: .full, label: "full",
              value: NetworkInterface(ifaceId: "eth0", hostDevName: "tap0", guestMac: "06:00:ac:10:00:02", mtu: 9000,
                                      rxRateLimiter: fullLimiter, txRateLimiter: fullLimiter)),
        .init(definition: "NetworkInterface", kind: .field, label: "mtu",
              value: NetworkInterface(ifaceId: "eth0", hostDevName: "tap0", mtu: 1500)),
        .init(definition: "PartialNetworkInterface", kind: .minimal, label: "minimal",
              value: PartialNetworkInterface(ifaceId: "eth0")),
        .init(definition: "PartialNetworkInterface", kind: .full, label: "full",
              value: PartialNetworkInterface(ifaceId: "eth0", rxRateLimiter: fullLimiter, txRateLimiter: fullLimiter)),
        .init(definition: "SnapshotCreateParams", kind: .minimal, label: "minimal",
              value: SnapshotCreateParams(snapshotPath: "/vm.snap", memFilePath: "/vm.mem")),
        .init(definition: "SnapshotCreateParams", kind: .full, label: "full",
              value: SnapshotCreateParams(snapshotPath: "/vm.snap", memFilePath: "/vm.mem", snapshotType: .diff)),
        .init(definition: "SnapshotLoadParams", kind: .minimal, label: "minimal",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap")),
        .init(definition: "SnapshotLoadParams", kind: .full, label: "full",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap", memBackend: .uffd("/uffd.sock"),
                                        memFilePath: "/vm.mem", resumeVm: true, trackDirtyPages: true,
                                        enableDiffSnapshots: true,
                                        networkOverrides: [NetworkOverride(ifaceId: "eth0", hostDevName: "tap9")],
                                        vsockOverride: VsockOverride(udsPath: "/v.sock"), clockRealtime: true)),
        .init(definition: "SnapshotLoadParams", kind: .field, label: "track_dirty_pages",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap", memBackend: .file("/vm.mem"), trackDirtyPages: true)),
        .init(definition: "SnapshotLoadParams", kind: .field, label: "vsock_override",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap", memBackend: .file("/vm.mem"),
                                        vsockOverride: VsockOverride(udsPath: "/v.sock"))),
        .init(definition: "SnapshotLoadParams", kind: .field, label: "clock_realtime",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap", memBackend: .file("/vm.mem"), clockRealtime: false)),
        .init(definition: "SnapshotLoadParams", kind: .field, label: "deprecated fields only",
              value: SnapshotLoadParams(snapshotPath: "/vm.snap", memFilePath: "/vm.mem", enableDiffSnapshots: true)),
        .init(definition: "Vm", kind: .minimal, label: "Paused", value: VmState.paused),
        .init(definition: "Vm", kind: .full, label: "Resumed", value: VmState.resumed),
        .init(definition: "Vsock", kind: .minimal, label: "minimal", value: Vsock(guestCid: 3, udsPath: "/v.sock")),
        .init(definition: "Vsock", kind: .full, label: "full",
              value: Vsock(guestCid: 52, udsPath: "/v.sock", vsockId: "vsock0")),

        // Definitions only used inside bodies.
        .init(definition: "RateLimiter", kind: .minimal, label: "minimal", value: RateLimiter()),
        .init(definition: "RateLimiter", kind: .full, label: "full", value: fullLimiter),
        .init(definition: "TokenBucket", kind: .minimal, label: "minimal", value: bucket),
        .init(definition: "TokenBucket", kind: .full, label: "full", value: fullBucket),
        .init(definition: "CpuTemplate", kind: .minimal, label: "None", value: CpuTemplate.none),
        .init(definition: "CpuTemplate", kind: .full, label: "V1N1", value: CpuTemplate.v1n1),
        .init(definition: "CpuidLeafModifier", kind: .minimal, label: "minimal",
              value: CpuidLeafModifier(leaf: "0", subleaf: "0", flags: 1, modifiers: [])),
        .init(definition: "CpuidLeafModifier", kind: .full, label: "full", value: fullCpuConfig.cpuidModifiers![0]),
        .init(definition: "CpuidRegisterModifier", kind: .minimal, label: "minimal",
              value: CpuidRegisterModifier(register: .eax, bitmap: "0b" + String(repeating: "x", count: 32))),
        .init(definition: "CpuidRegisterModifier", kind: .full, label: "full",
              value: CpuidRegisterModifier(register: .edx, bitmap: "0b" + String(repeating: "1", count: 32))),
        .init(definition: "MsrModifier", kind: .minimal, label: "minimal", value: fullCpuConfig.msrModifiers![0]),
        .init(definition: "MsrModifier", kind: .full, label: "full", value: MsrModifier(addr: "266", bitmap: "0b1")),
        .init(definition: "ArmRegisterModifier", kind: .minimal, label: "minimal", value: fullCpuConfig.regModifiers![0]),
        .init(definition: "ArmRegisterModifier", kind: .full, label: "full",
              value: ArmRegisterModifier(addr: "0b0", bitmap: "0b1")),
        .init(definition: "VcpuFeatures", kind: .minimal, label: "minimal", value: fullCpuConfig.vcpuFeatures![0]),
        .init(definition: "VcpuFeatures", kind: .full, label: "full", value: VcpuFeatures(index: 1, bitmap: "0bx")),
        .init(definition: "MemoryBackend", kind: .minimal, label: "File", value: MemoryBackend.file("/vm.mem")),
        .init(definition: "MemoryBackend", kind: .full, label: "Uffd", value: MemoryBackend.uffd("/uffd.sock")),
        .init(definition: "NetworkOverride", kind: .minimal, label: "minimal",
              value: NetworkOverride(ifaceId: "eth0", hostDevName: "tap1")),
        .init(definition: "NetworkOverride", kind: .full, label: "full",
              value: NetworkOverride(ifaceId: "eth1", hostDevName: "tap2")),
        .init(definition: "VsockOverride", kind: .minimal, label: "minimal", value: VsockOverride(udsPath: "/a.sock")),
        .init(definition: "VsockOverride", kind: .full, label: "full", value: VsockOverride(udsPath: "/b.sock")),
    ]
}
