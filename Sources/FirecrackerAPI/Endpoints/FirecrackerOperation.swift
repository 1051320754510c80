/// Every operation of Firecracker's API, named by the spec's `operationId`, with its method,
/// path and the release that added it. The conformance tests check this list against each
/// supported spec, both ways.
public enum FirecrackerOperation: String, Sendable, Hashable, CaseIterable {
    case describeInstance
    case createSyncAction
    case describeBalloonConfig
    case putBalloon
    case patchBalloon
    case describeBalloonStats
    case patchBalloonStatsInterval
    case startBalloonHinting
    case describeBalloonHinting
    case stopBalloonHinting
    case putGuestBootSource
    case putCpuConfiguration
    case putGuestDriveByID
    case patchGuestDriveByID
    case putGuestPmemByID
    case patchGuestPmemByID
    case putLogger
    case getMachineConfiguration
    case putMachineConfiguration
    case patchMachineConfiguration
    case putMetrics
    case putMmds
    case patchMmds
    case getMmds
    case putMmdsConfig
    case putEntropyDevice
    case putSerialDevice
    case putMemoryHotplug
    case patchMemoryHotplug
    case getMemoryHotplug
    case putGuestNetworkInterfaceByID
    case patchGuestNetworkInterfaceByID
    case createSnapshot
    case loadSnapshot
    case getFirecrackerVersion
    case patchVm
    case getExportVmConfig
    case putGuestVsock

    public var method: HTTPMethod {
        switch self {
        case .describeInstance, .describeBalloonConfig, .describeBalloonStats,
            .describeBalloonHinting, .getMachineConfiguration, .getMmds, .getMemoryHotplug,
            .getFirecrackerVersion, .getExportVmConfig:
            .get
        case .patchBalloon, .patchBalloonStatsInterval, .startBalloonHinting, .stopBalloonHinting,
            .patchGuestDriveByID, .patchGuestPmemByID, .patchMachineConfiguration, .patchMmds,
            .patchMemoryHotplug, .patchGuestNetworkInterfaceByID, .patchVm:
            .patch
        case .createSyncAction, .putBalloon, .putGuestBootSource, .putCpuConfiguration,
            .putGuestDriveByID, .putGuestPmemByID, .putLogger, .putMachineConfiguration,
            .putMetrics, .putMmds, .putMmdsConfig, .putEntropyDevice, .putSerialDevice,
            .putMemoryHotplug, .putGuestNetworkInterfaceByID, .createSnapshot, .loadSnapshot,
            .putGuestVsock:
            .put
        }
    }

    /// The path as the spec writes it, with `{name}` for the path id.
    public var pathTemplate: String {
        switch self {
        case .describeInstance: "/"
        case .createSyncAction: "/actions"
        case .describeBalloonConfig, .putBalloon, .patchBalloon: "/balloon"
        case .describeBalloonStats, .patchBalloonStatsInterval: "/balloon/statistics"
        case .startBalloonHinting: "/balloon/hinting/start"
        case .describeBalloonHinting: "/balloon/hinting/status"
        case .stopBalloonHinting: "/balloon/hinting/stop"
        case .putGuestBootSource: "/boot-source"
        case .putCpuConfiguration: "/cpu-config"
        case .putGuestDriveByID, .patchGuestDriveByID: "/drives/{drive_id}"
        case .putGuestPmemByID, .patchGuestPmemByID: "/pmem/{id}"
        case .putLogger: "/logger"
        case .getMachineConfiguration, .putMachineConfiguration, .patchMachineConfiguration:
            "/machine-config"
        case .putMetrics: "/metrics"
        case .putMmds, .patchMmds, .getMmds: "/mmds"
        case .putMmdsConfig: "/mmds/config"
        case .putEntropyDevice: "/entropy"
        case .putSerialDevice: "/serial"
        case .putMemoryHotplug, .patchMemoryHotplug, .getMemoryHotplug: "/hotplug/memory"
        case .putGuestNetworkInterfaceByID, .patchGuestNetworkInterfaceByID:
            "/network-interfaces/{iface_id}"
        case .createSnapshot: "/snapshot/create"
        case .loadSnapshot: "/snapshot/load"
        case .getFirecrackerVersion: "/version"
        case .patchVm: "/vm"
        case .getExportVmConfig: "/vm/config"
        case .putGuestVsock: "/vsock"
        }
    }

    /// The oldest Firecracker that serves this operation. Sources: CHANGELOG.md of each release.
    public var since: FirecrackerVersion {
        switch self {
        // 1.14.0: free page hinting (#5491), `/serial` (#5350), virtio-pmem (#5463),
        // memory hot-plugging (#5534).
        case .startBalloonHinting, .describeBalloonHinting, .stopBalloonHinting,
            .putSerialDevice, .putGuestPmemByID, .putMemoryHotplug, .patchMemoryHotplug,
            .getMemoryHotplug:
            .v1_14
        // 1.16.0: the pmem rate limiter (#5789) brought PATCH /pmem/{id} (absent from the
        // v1.15.0 route table, present in v1.16.0).
        case .patchGuestPmemByID:
            .v1_16
        default:
            .baseline
        }
    }

    /// The name of the path id parameter, if the path has one.
    public var pathParameter: String? {
        guard let open = pathTemplate.firstIndex(of: "{"),
            let close = pathTemplate.firstIndex(of: "}")
        else { return nil }
        return String(pathTemplate[pathTemplate.index(after: open)..<close])
    }

    /// The concrete path. `id` must already be validated with ``APIRequest/pathComponent(_:kind:)``.
    public func path(id: String? = nil) -> String {
        guard let id, let open = pathTemplate.firstIndex(of: "{"),
            let close = pathTemplate.firstIndex(of: "}")
        else { return pathTemplate }
        return pathTemplate[..<open] + id + pathTemplate[pathTemplate.index(after: close)...]
    }

    /// A request without a body.
    func request(id: String? = nil) -> APIRequest {
        APIRequest(method: method, path: path(id: id), minimumVersion: since)
    }

    /// A request with a JSON body; a ``VersionGated`` body may raise the minimum version.
    func request<Body: Encodable>(
        _ body: Body, id: String? = nil
    ) throws(FirecrackerAPIError) -> APIRequest {
        try APIRequest.json(method, path(id: id), body, since: since)
    }
}
