// The typed calls. Each builds its request with `FirecrackerEndpoint` and sends it with
// `perform`. "Pre-boot only" calls are refused by Firecracker once InstanceStart succeeded;
// "post-boot only" calls are refused before it. Every call takes an optional timeout that
// replaces the client's default for that call.

// MARK: - Instance

extension FirecrackerClient {
    /// `GET /`: the VMM's id, version and the guest's state. Answers at any time, which makes it
    /// the readiness probe.
    public func describeInstance(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> InstanceInfo {
        try await perform(FirecrackerEndpoint.describeInstance(), as: InstanceInfo.self, timeout: timeout)
    }

    /// `GET /version`: the release behind the socket, as Firecracker reports it. (The parsed
    /// version used for gating is ``serverVersion()``.)
    public func version(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> VersionInfo {
        try await perform(FirecrackerEndpoint.version(), as: VersionInfo.self, timeout: timeout)
    }

    /// `PUT /actions` with any action; prefer the named calls below.
    public func performAction(
        _ action: InstanceActionInfo.ActionType, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.action(InstanceActionInfo(actionType: action)), timeout: timeout)
    }

    /// `InstanceStart`: boots the guest. Pre-boot only; everything boot-related must be
    /// configured first (at least the boot source).
    public func startInstance(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await performAction(.instanceStart, timeout: timeout)
    }

    /// `SendCtrlAltDel`: presses Ctrl+Alt+Del on the guest's keyboard controller (x86_64), the
    /// graceful shutdown request. Post-boot only. The call returns once the keys are queued, not
    /// when the guest has stopped.
    public func sendCtrlAltDel(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await performAction(.sendCtrlAltDel, timeout: timeout)
    }

    /// `FlushMetrics`: writes a metrics line now. Post-boot only, and only after `PUT /metrics`.
    public func flushMetrics(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await performAction(.flushMetrics, timeout: timeout)
    }

    /// `PATCH /vm`: pauses or resumes the guest's vCPUs. Post-boot only.
    public func patchVM(state: VmState.State, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchVM(VmState(state: state)), timeout: timeout)
    }

    /// Pauses the guest (needed before a snapshot). Post-boot only.
    public func pause(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await patchVM(state: .paused, timeout: timeout)
    }

    /// Resumes a paused guest. Post-boot only.
    public func resume(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await patchVM(state: .resumed, timeout: timeout)
    }

    /// `GET /vm/config`: everything configured so far.
    public func getVMConfiguration(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> FullVmConfiguration {
        try await perform(FirecrackerEndpoint.getVMConfiguration(), as: FullVmConfiguration.self, timeout: timeout)
    }
}

// MARK: - Boot source, machine and CPU

extension FirecrackerClient {
    /// `PUT /boot-source`: the kernel, initrd and command line. Pre-boot only.
    public func putBootSource(_ source: BootSource, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putBootSource(source), timeout: timeout)
    }

    /// `GET /machine-config`: the current vCPU and memory setup (defaults until set: 1 vCPU,
    /// 128 MiB).
    public func getMachineConfiguration(
        timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) -> MachineConfiguration {
        try await perform(
            FirecrackerEndpoint.getMachineConfiguration(), as: MachineConfiguration.self, timeout: timeout)
    }

    /// `PUT /machine-config`: replaces the machine configuration; unset optional fields return
    /// to their defaults. Pre-boot only.
    public func putMachineConfiguration(
        _ configuration: MachineConfiguration, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putMachineConfiguration(configuration), timeout: timeout)
    }

    /// `PATCH /machine-config`: changes only the fields set. Pre-boot only.
    public func patchMachineConfiguration(
        _ update: MachineConfigurationUpdate, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchMachineConfiguration(update), timeout: timeout)
    }

    /// `PUT /cpu-config`: a custom CPU template. Pre-boot only.
    public func putCpuConfiguration(_ configuration: CpuConfig, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putCpuConfiguration(configuration), timeout: timeout)
    }
}

// MARK: - Block, network and pmem devices

extension FirecrackerClient {
    /// `PUT /drives/{drive_id}`: adds or replaces a drive. Pre-boot only (at most one root
    /// device); Firecracker 1.16 can also hot-plug into a running PCI-enabled VM, as a
    /// developer preview.
    public func putDrive(_ drive: Drive, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putDrive(drive), timeout: timeout)
    }

    /// `PATCH /drives/{drive_id}`: new backing file or rate limiter. Post-boot only.
    public func patchDrive(_ update: PartialDrive, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchDrive(update), timeout: timeout)
    }

    /// `PUT /network-interfaces/{iface_id}`: adds a network interface. Pre-boot only (1.16 PCI
    /// hot-plug aside).
    public func putNetworkInterface(
        _ interface: NetworkInterface, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putNetworkInterface(interface), timeout: timeout)
    }

    /// `PATCH /network-interfaces/{iface_id}`: new rate limiters. Post-boot only.
    public func patchNetworkInterface(
        _ update: PartialNetworkInterface, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchNetworkInterface(update), timeout: timeout)
    }

    /// `PUT /pmem/{id}`: adds or replaces a virtio-pmem device. Pre-boot only (1.16 PCI
    /// hot-plug aside); Firecracker 1.14+.
    public func putPmem(_ device: Pmem, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putPmem(device), timeout: timeout)
    }

    /// `PATCH /pmem/{id}`: new rate limiter. Post-boot only; Firecracker 1.16+.
    public func patchPmem(_ update: PartialPmem, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchPmem(update), timeout: timeout)
    }
}

// MARK: - Other devices

extension FirecrackerClient {
    /// `PUT /vsock`: the vsock device. Pre-boot only.
    public func putVsock(_ vsock: Vsock, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putVsock(vsock), timeout: timeout)
    }

    /// `PUT /entropy`: the virtio-rng device. Pre-boot only.
    public func putEntropyDevice(_ device: EntropyDevice, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putEntropyDevice(device), timeout: timeout)
    }

    /// `PUT /serial`: redirects the serial console away from stdout. Pre-boot only;
    /// Firecracker 1.14+.
    public func putSerial(_ device: SerialDevice, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putSerial(device), timeout: timeout)
    }
}

// MARK: - Balloon

extension FirecrackerClient {
    /// `GET /balloon`: the balloon's configuration (any time); an API error if there is no
    /// balloon.
    public func getBalloon(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> Balloon {
        try await perform(FirecrackerEndpoint.getBalloon(), as: Balloon.self, timeout: timeout)
    }

    /// `PUT /balloon`: adds the balloon device. Pre-boot only.
    public func putBalloon(_ balloon: Balloon, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putBalloon(balloon), timeout: timeout)
    }

    /// `PATCH /balloon`: a new target size. Post-boot only (the spec says "before or after", but
    /// Firecracker refuses it before InstanceStart).
    public func patchBalloon(_ update: BalloonUpdate, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchBalloon(update), timeout: timeout)
    }

    /// `GET /balloon/statistics`: the guest's memory statistics. Post-boot only, and an API
    /// error unless statistics were enabled before boot.
    public func getBalloonStatistics(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> BalloonStats {
        try await perform(FirecrackerEndpoint.getBalloonStatistics(), as: BalloonStats.self, timeout: timeout)
    }

    /// `PATCH /balloon/statistics`: a new statistics period. Post-boot only (despite the spec),
    /// and statistics must have been enabled before boot.
    public func patchBalloonStatistics(
        _ update: BalloonStatsUpdate, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchBalloonStatistics(update), timeout: timeout)
    }

    /// `PATCH /balloon/hinting/start`: starts a free page hinting run. Post-boot, with hinting
    /// enabled before boot; Firecracker 1.14+.
    public func startBalloonHinting(
        _ command: BalloonStartCmd = BalloonStartCmd(), timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.startBalloonHinting(command), timeout: timeout)
    }

    /// `GET /balloon/hinting/status`: progress of the hinting run. Post-boot only;
    /// Firecracker 1.14+.
    public func getBalloonHintingStatus(
        timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) -> BalloonHintingStatus {
        try await perform(
            FirecrackerEndpoint.getBalloonHintingStatus(), as: BalloonHintingStatus.self, timeout: timeout)
    }

    /// `PATCH /balloon/hinting/stop`: ends the hinting run. Post-boot only; Firecracker 1.14+.
    public func stopBalloonHinting(timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.stopBalloonHinting(), timeout: timeout)
    }
}

// MARK: - Memory hot-plugging

extension FirecrackerClient {
    /// `PUT /hotplug/memory`: the hot-pluggable memory region. Pre-boot only; Firecracker 1.14+.
    public func putMemoryHotplug(
        _ configuration: MemoryHotplugConfig, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putMemoryHotplug(configuration), timeout: timeout)
    }

    /// `PATCH /hotplug/memory`: asks the guest to plug or unplug towards a new size. Post-boot
    /// only; Firecracker 1.14+.
    public func patchMemoryHotplug(
        _ update: MemoryHotplugSizeUpdate, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchMemoryHotplug(update), timeout: timeout)
    }

    /// `GET /hotplug/memory`: how much is plugged. Post-boot only; Firecracker 1.14+.
    public func getMemoryHotplug(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> MemoryHotplugStatus {
        try await perform(FirecrackerEndpoint.getMemoryHotplug(), as: MemoryHotplugStatus.self, timeout: timeout)
    }
}

// MARK: - Logger and metrics

extension FirecrackerClient {
    /// `PUT /logger`: where Firecracker logs. Pre-boot only, and only once per process.
    public func putLogger(_ configuration: LoggerConfiguration, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putLogger(configuration), timeout: timeout)
    }

    /// `PUT /metrics`: where Firecracker writes metrics. Pre-boot only, and only once per
    /// process.
    public func putMetrics(_ configuration: MetricsConfiguration, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putMetrics(configuration), timeout: timeout)
    }
}

// MARK: - MMDS

extension FirecrackerClient {
    /// `PUT /mmds`: replaces the metadata store with any JSON value (Firecracker 1.12.1 stores
    /// arrays and scalars as well as objects; guests and EC2-style paths expect an object).
    /// Before or after boot.
    ///
    /// Two limits apply: a request body over the API payload limit (51,200 bytes unless
    /// Firecracker was started with `--http-api-max-payload-size`) is refused with HTTP 400
    /// (``FirecrackerAPIError/isPayloadTooLarge``), and a store that would grow beyond
    /// `--mmds-size-limit` (by default the payload limit) is refused with HTTP 413.
    public func putMMDS(_ contents: JSONValue, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putMMDS(contents), timeout: timeout)
    }

    /// `PUT /mmds` with an object; the same as passing `.object(contents)`.
    public func putMMDS(_ contents: MMDSContents, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await putMMDS(JSONValue.object(contents), timeout: timeout)
    }

    /// `PATCH /mmds`: merges into the metadata store (JSON merge patch: `null` deletes a key;
    /// a patch that is not an object replaces the whole store). The store must have been
    /// created with `putMMDS` first. The limits of `putMMDS` apply.
    public func patchMMDS(_ patch: JSONValue, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.patchMMDS(patch), timeout: timeout)
    }

    /// `PATCH /mmds` with an object; the same as passing `.object(patch)`.
    public func patchMMDS(_ patch: MMDSContents, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await patchMMDS(JSONValue.object(patch), timeout: timeout)
    }

    /// `GET /mmds`: the whole metadata store. Returned as any JSON value because Firecracker
    /// stores whatever another client put there, even if the spec promises an object.
    public func getMMDS(timeout: Duration? = nil) async throws(FirecrackerAPIError) -> JSONValue {
        try await perform(FirecrackerEndpoint.getMMDS(), as: JSONValue.self, timeout: timeout)
    }

    /// `PUT /mmds/config`: MMDS version, address and the interfaces that reach it. Pre-boot
    /// only, after the network interfaces it names.
    public func putMMDSConfig(_ configuration: MmdsConfig, timeout: Duration? = nil) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.putMMDSConfig(configuration), timeout: timeout)
    }
}

// MARK: - Snapshots

extension FirecrackerClient {
    /// `PUT /snapshot/create`: writes the VM state and memory. Post-boot only, with the VM
    /// paused. Writing guest memory can take a while (about 0.5 s for 128 MiB here): give it a
    /// generous timeout.
    public func createSnapshot(
        _ parameters: SnapshotCreateParams, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.createSnapshot(parameters), timeout: timeout)
    }

    /// `PUT /snapshot/load`: restores a snapshot. Only in a fresh process with nothing but the
    /// logger and metrics configured; a failed load ends the Firecracker process.
    public func loadSnapshot(
        _ parameters: SnapshotLoadParams, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        try await perform(FirecrackerEndpoint.loadSnapshot(parameters), timeout: timeout)
    }
}
