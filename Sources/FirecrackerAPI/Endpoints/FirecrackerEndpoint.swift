/// Builds the ``APIRequest`` for each call of the typed client, without sending anything.
///
/// Every method of ``FirecrackerClient`` that talks to the API is a thin wrapper over one of
/// these, so tests (and callers who send through their own transport) can inspect exactly what
/// would go over the wire: method, path, JSON body and minimum Firecracker version. Builders
/// refuse, before anything is sent, values Firecracker can never accept: path ids outside
/// `[A-Za-z0-9_]`, an empty machine-config PATCH, a snapshot load without exactly one memory
/// source.
public enum FirecrackerEndpoint: Sendable {
    // MARK: Instance

    public static func describeInstance() -> APIRequest {
        FirecrackerOperation.describeInstance.request()
    }

    public static func version() -> APIRequest {
        FirecrackerOperation.getFirecrackerVersion.request()
    }

    public static func action(_ action: InstanceActionInfo) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.createSyncAction.request(action)
    }

    public static func patchVM(_ state: VmState) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.patchVm.request(state)
    }

    public static func getVMConfiguration() -> APIRequest {
        FirecrackerOperation.getExportVmConfig.request()
    }

    // MARK: Boot source, machine and CPU

    public static func putBootSource(_ source: BootSource) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putGuestBootSource.request(source)
    }

    public static func getMachineConfiguration() -> APIRequest {
        FirecrackerOperation.getMachineConfiguration.request()
    }

    public static func putMachineConfiguration(
        _ configuration: MachineConfiguration
    ) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putMachineConfiguration.request(configuration)
    }

    public static func patchMachineConfiguration(
        _ update: MachineConfigurationUpdate
    ) throws(FirecrackerAPIError) -> APIRequest {
        guard !update.isEmpty else {
            throw .invalidArgument(
                "PATCH /machine-config with no field set is refused by Firecracker",
                hint: "set at least one field of the update")
        }
        return try FirecrackerOperation.patchMachineConfiguration.request(update)
    }

    public static func putCpuConfiguration(_ configuration: CpuConfig) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putCpuConfiguration.request(configuration)
    }

    // MARK: Block, network and pmem devices

    public static func putDrive(_ drive: Drive) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(drive.driveId, kind: "drive")
        return try FirecrackerOperation.putGuestDriveByID.request(drive, id: id)
    }

    public static func patchDrive(_ update: PartialDrive) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(update.driveId, kind: "drive")
        return try FirecrackerOperation.patchGuestDriveByID.request(update, id: id)
    }

    public static func putNetworkInterface(
        _ interface: NetworkInterface
    ) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(interface.ifaceId, kind: "network interface")
        return try FirecrackerOperation.putGuestNetworkInterfaceByID.request(interface, id: id)
    }

    public static func patchNetworkInterface(
        _ update: PartialNetworkInterface
    ) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(update.ifaceId, kind: "network interface")
        return try FirecrackerOperation.patchGuestNetworkInterfaceByID.request(update, id: id)
    }

    public static func putPmem(_ device: Pmem) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(device.id, kind: "pmem device")
        return try FirecrackerOperation.putGuestPmemByID.request(device, id: id)
    }

    public static func patchPmem(_ update: PartialPmem) throws(FirecrackerAPIError) -> APIRequest {
        let id = try APIRequest.pathComponent(update.id, kind: "pmem device")
        return try FirecrackerOperation.patchGuestPmemByID.request(update, id: id)
    }

    // MARK: Other devices

    public static func putVsock(_ vsock: Vsock) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putGuestVsock.request(vsock)
    }

    public static func putEntropyDevice(_ device: EntropyDevice) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putEntropyDevice.request(device)
    }

    public static func putSerial(_ device: SerialDevice) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putSerialDevice.request(device)
    }

    // MARK: Balloon

    public static func getBalloon() -> APIRequest {
        FirecrackerOperation.describeBalloonConfig.request()
    }

    public static func putBalloon(_ balloon: Balloon) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putBalloon.request(balloon)
    }

    public static func patchBalloon(_ update: BalloonUpdate) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.patchBalloon.request(update)
    }

    public static func getBalloonStatistics() -> APIRequest {
        FirecrackerOperation.describeBalloonStats.request()
    }

    public static func patchBalloonStatistics(
        _ update: BalloonStatsUpdate
    ) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.patchBalloonStatsInterval.request(update)
    }

    /// The body is optional in the spec; an empty command is sent as `{}`, which Firecracker
    /// reads as the defaults.
    public static func startBalloonHinting(
        _ command: BalloonStartCmd = BalloonStartCmd()
    ) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.startBalloonHinting.request(command)
    }

    public static func getBalloonHintingStatus() -> APIRequest {
        FirecrackerOperation.describeBalloonHinting.request()
    }

    public static func stopBalloonHinting() -> APIRequest {
        FirecrackerOperation.stopBalloonHinting.request()
    }

    // MARK: Memory hot-plugging

    public static func putMemoryHotplug(_ configuration: MemoryHotplugConfig) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putMemoryHotplug.request(configuration)
    }

    public static func patchMemoryHotplug(
        _ update: MemoryHotplugSizeUpdate
    ) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.patchMemoryHotplug.request(update)
    }

    public static func getMemoryHotplug() -> APIRequest {
        FirecrackerOperation.getMemoryHotplug.request()
    }

    // MARK: Logger and metrics

    public static func putLogger(_ configuration: LoggerConfiguration) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putLogger.request(configuration)
    }

    public static func putMetrics(_ configuration: MetricsConfiguration) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putMetrics.request(configuration)
    }

    // MARK: MMDS

    /// `PUT /mmds` with any JSON value: Firecracker stores whatever it is given (1.12.1 stores
    /// arrays and scalars too), although the spec and EC2-style paths assume an object.
    public static func putMMDS(_ contents: JSONValue) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putMmds.request(contents)
    }

    /// `PUT /mmds` with an object, the usual shape (kept so `[String: JSONValue]` values pass
    /// without wrapping them in `.object`).
    public static func putMMDS(_ contents: MMDSContents) throws(FirecrackerAPIError) -> APIRequest {
        try putMMDS(JSONValue.object(contents))
    }

    /// `PATCH /mmds`: a JSON merge patch (RFC 7396) of any JSON value; a non-object patch
    /// replaces the whole store.
    public static func patchMMDS(_ patch: JSONValue) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.patchMmds.request(patch)
    }

    /// `PATCH /mmds` with an object, the usual shape.
    public static func patchMMDS(_ patch: MMDSContents) throws(FirecrackerAPIError) -> APIRequest {
        try patchMMDS(JSONValue.object(patch))
    }

    public static func getMMDS() -> APIRequest {
        FirecrackerOperation.getMmds.request()
    }

    public static func putMMDSConfig(_ configuration: MmdsConfig) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.putMmdsConfig.request(configuration)
    }

    // MARK: Snapshots

    public static func createSnapshot(_ parameters: SnapshotCreateParams) throws(FirecrackerAPIError) -> APIRequest {
        try FirecrackerOperation.createSnapshot.request(parameters)
    }

    public static func loadSnapshot(_ parameters: SnapshotLoadParams) throws(FirecrackerAPIError) -> APIRequest {
        switch (parameters.memBackend, parameters.memFilePath) {
        case (.some, .some):
            throw .invalidArgument(
                "snapshot load with both mem_backend and mem_file_path is refused by Firecracker",
                hint: "set only memBackend (mem_file_path is deprecated)")
        case (nil, nil):
            throw .invalidArgument(
                "snapshot load needs a memory source",
                hint: "set memBackend, e.g. .file(\"<memory file>\") or .uffd(\"<handler socket>\")")
        default:
            return try FirecrackerOperation.loadSnapshot.request(parameters)
        }
    }
}
