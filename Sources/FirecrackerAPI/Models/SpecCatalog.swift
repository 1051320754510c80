/// The one table from Firecracker's spec definition names to this module's Swift types. The
/// conformance tests walk it: every definition of every supported spec must appear here, and
/// every type here must round-trip the shapes its definition describes.
package enum SpecCatalog {
    package typealias Model = any (Codable & Sendable).Type

    package static let definitions: [String: Model] = [
        "ArmRegisterModifier": ArmRegisterModifier.self,
        "Balloon": Balloon.self,
        "BalloonHintingStatus": BalloonHintingStatus.self,
        "BalloonStartCmd": BalloonStartCmd.self,
        "BalloonStats": BalloonStats.self,
        "BalloonStatsUpdate": BalloonStatsUpdate.self,
        "BalloonUpdate": BalloonUpdate.self,
        "BootSource": BootSource.self,
        "CpuConfig": CpuConfig.self,
        "CpuTemplate": CpuTemplate.self,
        "CpuidLeafModifier": CpuidLeafModifier.self,
        "CpuidRegisterModifier": CpuidRegisterModifier.self,
        "Drive": Drive.self,
        "EntropyDevice": EntropyDevice.self,
        "Error": APIFault.self,
        "FirecrackerVersion": VersionInfo.self,
        "FullVmConfiguration": FullVmConfiguration.self,
        "InstanceActionInfo": InstanceActionInfo.self,
        "InstanceInfo": InstanceInfo.self,
        "Logger": LoggerConfiguration.self,
        "MachineConfiguration": MachineConfiguration.self,
        "MemoryBackend": MemoryBackend.self,
        "MemoryHotplugConfig": MemoryHotplugConfig.self,
        "MemoryHotplugSizeUpdate": MemoryHotplugSizeUpdate.self,
        "MemoryHotplugStatus": MemoryHotplugStatus.self,
        "Metrics": MetricsConfiguration.self,
        "MmdsConfig": MmdsConfig.self,
        "MmdsContentsObject": MMDSContents.self,
        "MsrModifier": MsrModifier.self,
        "NetworkInterface": NetworkInterface.self,
        "NetworkOverride": NetworkOverride.self,
        "PartialDrive": PartialDrive.self,
        "PartialNetworkInterface": PartialNetworkInterface.self,
        "PartialPmem": PartialPmem.self,
        "Pmem": Pmem.self,
        "RateLimiter": RateLimiter.self,
        "SerialDevice": SerialDevice.self,
        "SnapshotCreateParams": SnapshotCreateParams.self,
        "SnapshotLoadParams": SnapshotLoadParams.self,
        "TokenBucket": TokenBucket.self,
        "VcpuFeatures": VcpuFeatures.self,
        "Vm": VmState.self,
        "Vsock": Vsock.self,
        "VsockOverride": VsockOverride.self,
    ]

    /// Types with no definition of their own: they stand for a definition used in a way the
    /// spec does not describe (see each type's documentation).
    package static let variants: [String: (definition: String, type: Model)] = [
        "MachineConfigurationUpdate": ("MachineConfiguration", MachineConfigurationUpdate.self)
    ]

    /// String enums nested in definitions, by `Definition.property`: their cases must equal the
    /// spec's `enum` list.
    package static let enums: [String: [String]] = [
        "CpuTemplate": CpuTemplate.allCases.map(\.rawValue),
        "CpuidRegisterModifier.register": CpuidRegister.allCases.map(\.rawValue),
        "Drive.cache_type": Drive.CacheType.allCases.map(\.rawValue),
        "Drive.io_engine": Drive.IOEngine.allCases.map(\.rawValue),
        "InstanceActionInfo.action_type": InstanceActionInfo.ActionType.allCases.map(\.rawValue),
        "InstanceInfo.state": InstanceInfo.State.allCases.map(\.rawValue),
        "Logger.level": LogLevel.allCases.map(\.rawValue),
        "MachineConfiguration.huge_pages": HugePages.allCases.map(\.rawValue),
        "MemoryBackend.backend_type": MemoryBackend.BackendType.allCases.map(\.rawValue),
        "MmdsConfig.version": MmdsVersion.allCases.map(\.rawValue),
        "SnapshotCreateParams.snapshot_type": SnapshotType.allCases.map(\.rawValue),
        "Vm.state": VmState.State.allCases.map(\.rawValue),
    ]
}
