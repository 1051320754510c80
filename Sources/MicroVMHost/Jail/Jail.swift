public import Logging
public import SystemPackage

/// One VM's jail on this host: the configuration, its paths and the host's cgroup layout, with
/// the steps of a jailed launch in order — `prepare` (stale jail), `stage` (files), `command`
/// (argv for the driver to spawn), `waitForVMM` (the real Firecracker pid), `teardown`.
public struct Jail: Sendable {
    public let configuration: JailerConfiguration
    public let layout: JailLayout
    public let cgroupHost: CgroupHost
    public let cgroupVersion: CgroupVersion
    public let topology: HostTopology

    /// Validates the configuration and the id's use on this host; touches nothing on disk.
    public init(
        configuration: JailerConfiguration, id: VMIdentifier, cgroupHost: CgroupHost? = nil,
        topology: HostTopology? = nil
    ) throws(JailError) {
        try configuration.validate()
        let host: CgroupHost
        if let cgroupHost { host = cgroupHost } else { host = try CgroupHost.detect() }
        self.configuration = configuration
        self.layout = configuration.layout(for: id)
        self.cgroupHost = host
        self.cgroupVersion = try configuration.effectiveCgroupVersion(on: host)
        self.topology = topology ?? HostTopology.detect()
    }

    private init(copying jail: Jail, layout: JailLayout) {
        self.configuration = jail.configuration
        self.layout = layout
        self.cgroupHost = jail.cgroupHost
        self.cgroupVersion = jail.cgroupVersion
        self.topology = jail.topology
    }

    /// The same VM with its directory laid out as `kind` (``JailLayout/Kind/directory`` for a
    /// VMM started without the jailer).
    public func with(layoutKind kind: JailLayout.Kind) -> Jail {
        Jail(copying: self, layout: layout.with(kind: kind))
    }

    public var id: VMIdentifier { layout.id }

    /// The parent cgroup the jailer uses: configured, else the (canonical) exec file name.
    public var parentCgroup: String { configuration.parentCgroup ?? layout.execFileName }

    /// Removes a stale jail of this id, or refuses when a live process uses it.
    public func prepare(logger: Logger) async throws(JailError) {
        try await JailTeardown.prepareForLaunch(
            layout: layout, parentCgroup: parentCgroup, cgroupHost: cgroupHost, logger: logger)
    }

    /// Stages files into the jail root (see `JailStager`).
    public func stage(_ requests: [StagingRequest], logger: Logger) throws(JailError) -> [StagedFile] {
        try JailStager(layout: layout, uid: configuration.uid, gid: configuration.gid, logger: logger).stage(requests)
    }

    /// The jailer argv for `limits` on a guest of `guest`'s size.
    public func command(
        limits: ResourceLimits, guest: GuestResources,
        firecrackerArguments: [String] = JailerCommand.firecrackerArguments()
    ) throws(JailError) -> JailerCommand {
        let settings = try limits.cgroupSettings(
            version: cgroupVersion, guest: guest, topology: topology, numaNode: configuration.numaNode)
        return try JailerCommand(
            configuration: configuration, layout: layout, cgroupVersion: cgroupVersion, cgroupSettings: settings,
            firecrackerArguments: firecrackerArguments)
    }

    /// The host path of the API socket (checked against the Unix socket path limit).
    public func apiSocketHostPath(jailPath: FilePath = JailLayout.defaultAPISocket) throws(JailError) -> FilePath {
        try layout.socketHostPath(forJailPath: jailPath)
    }

    /// Waits for the jailer's pid file and returns the real Firecracker process.
    public func waitForVMM(timeout: Duration = .seconds(5), pollInterval: Duration = .microseconds(500)) async throws(JailError) -> JailedVMM {
        try await JailedVMM.waitForPIDFile(layout: layout, timeout: timeout, pollInterval: pollInterval)
    }

    /// Stops the VMM and removes the jail and its cgroups; idempotent.
    public func teardown(pid: Int32? = nil, options: TeardownOptions = TeardownOptions(), logger: Logger) async
        -> TeardownReport
    {
        await JailTeardown.run(
            layout: layout, parentCgroup: parentCgroup, cgroupHost: cgroupHost, pid: pid, options: options,
            logger: logger)
    }
}
