public import FirecrackerAPI
import Foundation
import Synchronization
public import Logging
public import MicroVMHost
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// One microVM from create to destroy: the handle an operator embeds.
///
/// It owns everything the VM has on the host (Firecracker's process, the jail or VM directory
/// with its staged files, the cgroups, the console pipes, Firecracker's log FIFO, the API
/// connection) and releases all of it at once when the VMM ends, however it ends; what stays
/// is in memory (state, exit reason, the console's and the log's last lines).
///
/// Every operation checks ``state`` first (``VMOperation``), so an illegal one fails locally
/// with the state named. The VM is jailed or not as its sandbox policy decides; nothing but the
/// executor chosen at create time knows which.
public actor MicroVM {
    public nonisolated let id: VMIdentifier
    public nonisolated let spec: VMSpec
    /// The guest's serial console: only what the guest wrote.
    public nonisolated let console: Console
    /// Firecracker's own log (also re-emitted through the logger given at create).
    public nonisolated let firecrackerLog: FirecrackerLog
    /// The API client, for anything the handle does not cover. Paths it sends are Firecracker's
    /// view: use ``vmmPath(_:)``.
    public nonisolated let client: FirecrackerClient
    /// Whether the VMM runs inside the jailer's sandbox.
    public nonisolated let isSandboxed: Bool
    /// Why the VM runs the way it does (for an unjailed VM under `preferred`: what was missing).
    public nonisolated let sandboxDecision: SandboxDecision
    /// Firecracker's pid (in this process's PID namespace).
    public nonisolated let pid: Int32
    /// Firecracker's start time (`/proc/PID/stat`), which with the pid identifies it.
    public nonisolated let processStartTime: UInt64?
    /// The VM's directory on the host (the jail's `root/`).
    public nonisolated let directory: FilePath
    /// How the jailer was run (its cgroup settings among it); nil for an unjailed VM.
    public nonisolated let jailerCommand: JailerCommand?
    /// The VM's jail layout (the same directories for an unjailed VM).
    public nonisolated var layout: JailLayout { executor.jail.layout }
    /// The cgroup directories the jailer made for this VM (removed when it ends).
    public nonisolated let cgroupDirectories: [String]
    /// The page-fault server of a VM restored with ``RestoreMemory/lazy`` by this process (nil
    /// otherwise, and for a VM under a monitor, whose monitor runs the server): its counters
    /// show how much of the memory the guest has touched.
    public nonisolated let lazyMemory: LazyMemory?
    /// The memory file of a lazy restore, wherever its server runs (recorded for later drivers).
    nonisolated let lazyMemoryFile: String?

    /// The counters of a lazily restored VM's page-fault server, wherever it runs: this
    /// process's (``lazyMemory``), or the VM's monitor's, asked live while the VM runs and read
    /// from its final report once it has ended. nil for a VM not restored lazily, and when a
    /// monitor neither answers nor left a report.
    public func lazyMemoryStatistics() async -> LazyMemoryStatistics? {
        if let lazyMemory { return lazyMemory.statistics }
        guard lazyMemoryFile != nil, process.monitor != nil else { return nil }
        return await Self.monitoredLazyMemoryStatistics(stateDirectory: stateStore.directory(for: id.rawValue))
    }

    /// ``lazyMemoryStatistics()`` of a VM recorded under the configuration's state root, from
    /// any process, without attaching to it: its monitor is asked (or its final report read).
    /// nil for a VM not restored lazily, and for one whose server ran in the process that
    /// created it (only that process can count).
    public static func lazyMemoryStatistics(id: String, configuration: DriverConfiguration) async -> LazyMemoryStatistics? {
        guard let record = try? configuration.stateStore.read(id: id), record.lazyMemoryFile != nil, record.monitorPID != nil else { return nil }
        return await monitoredLazyMemoryStatistics(stateDirectory: configuration.stateStore.directory(for: id))
    }

    private static func monitoredLazyMemoryStatistics(stateDirectory: FilePath) async -> LazyMemoryStatistics? {
        if let live = await MonitorFiles.liveLazyMemoryStatistics(socket: MonitorFiles.socket(in: stateDirectory)) { return live }
        return MonitorFiles.lazyMemoryStatistics(in: stateDirectory)
    }

    public private(set) var state: VMState

    let executor: any VMMExecutor
    private let process: SupervisedProcess
    let streams: VMMStreams
    let logger: Logger
    /// Where this VM's exits, stops and snapshots are counted.
    let metrics: DriverMetrics
    /// Where the VM is recorded.
    public nonisolated let stateStore: StateStore
    /// The host side of the VM's network (when its spec has one).
    nonisolated let networkConfiguration: VMNetworkConfiguration?
    /// The VM's network when its spec has one: namespace, TAP, the guest's address and MAC.
    public nonisolated let network: NetworkAttachment?
    private let createdAt: Date
    private let ended = ExitState<ExitReason>()
    private var killRequested = false
    private var teardownReport: TeardownReport?
    private var teardownActions: [@Sendable () async -> Void] = []
    /// The latest record write queued by ``persist()``, and how many were queued.
    private var recordWrite: Task<Void, Never>?
    private var recordGeneration = 0
    /// Host images swapped in while the VM runs (``updateDrive(id:path:)``), by drive id.
    var driveSources: [String: String] = [:]

    /// The spec as the VM is now: drives name the images swapped in since create. Snapshots
    /// and the record describe this one.
    public var currentSpec: VMSpec {
        var current = spec
        for index in current.drives.indices {
            if let source = driveSources[current.drives[index].id] { current.drives[index].path = source }
        }
        return current
    }

    init(
        spec: VMSpec, id: VMIdentifier, executor: any VMMExecutor, decision: SandboxDecision, process: SupervisedProcess,
        command: JailerCommand?, streams: VMMStreams, client: FirecrackerClient, state: VMState, stateStore: StateStore,
        logger: Logger, metrics: DriverMetrics, networkConfiguration: VMNetworkConfiguration? = nil, network: NetworkAttachment? = nil,
        cgroups: [String]? = nil, createdAt: Date = Date(), lazyMemory: LazyMemory? = nil, lazyMemoryFile: String? = nil
    ) {
        self.lazyMemory = lazyMemory
        self.lazyMemoryFile = lazyMemoryFile ?? lazyMemory?.memoryFile.string
        self.createdAt = createdAt
        self.networkConfiguration = spec.network == nil ? nil : networkConfiguration
        self.network = network
        self.stateStore = stateStore
        self.jailerCommand = command
        self.cgroupDirectories = cgroups ?? command?.cgroupDirectories(on: executor.jail.cgroupHost) ?? []
        self.spec = spec
        self.id = id
        self.executor = executor
        self.isSandboxed = executor.isSandboxed
        self.sandboxDecision = decision
        self.process = process
        self.pid = process.pid
        self.processStartTime = process.startTime
        self.streams = streams
        self.console = streams.console
        self.firecrackerLog = streams.log
        self.client = client
        self.directory = executor.jail.layout.rootDirectory
        self.state = state
        self.logger = logger
        self.metrics = metrics
    }

    // MARK: Creating

    /// Validates `spec`, stages its files, starts Firecracker (jailed or not, as the policy
    /// decides) and configures it through the API, leaving the guest not yet started
    /// (``VMState/created``). A failure at any step removes everything done so far and names
    /// the step.
    public static func create(
        _ spec: VMSpec, configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async throws(MicroVMError) -> MicroVM {
        try await launch(spec, configuration: configuration, mode: .configureThroughAPI, logger: logger)
    }

    /// Creates and starts in one step, booting from a `--config-file` (no API round trips before
    /// the guest runs; the API socket is up as for ``create(_:configuration:logger:)``).
    public static func run(
        _ spec: VMSpec, configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async throws(MicroVMError) -> MicroVM {
        try await launch(spec, configuration: configuration, mode: .bootFromConfigFile, logger: logger)
    }

    /// Restores `snapshot` into a new VM (new id, new jail): its files are linked or copied in,
    /// writable drives come from the snapshot's copies, network interfaces can be pointed at
    /// other TAP devices. The guest carries on where it was (paused unless `resume`).
    ///
    /// `memory: .lazy` stages no memory file: the guest's pages are served from the snapshot's
    /// memory file as the guest first touches them (``RestoreMemory/lazy``), by a thread of this
    /// process, or of the VM's monitor when the configuration has one, which holds the memory
    /// file open: nothing may write into it while the VM runs. A restore no longer waits for a copy of the whole memory
    /// (a snapshot on another filesystem than the jails), and a VM that touches little memory
    /// starts with little; ``lazyMemory`` counts what was served.
    public static func restore(
        _ snapshot: Snapshot, id: String, resume: Bool = true, networkOverrides: [String: String] = [:], memory: RestoreMemory = .file,
        configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async throws(MicroVMError) -> MicroVM {
        let spec = try snapshot.spec(restoredAs: id, networkOverrides: networkOverrides)
        return try await launch(spec, configuration: configuration, mode: .restore(snapshot, resume: resume, memory: memory), logger: logger)
    }

    enum LaunchMode: Sendable {
        case configureThroughAPI
        case bootFromConfigFile
        case restore(Snapshot, resume: Bool, memory: RestoreMemory)
    }

    /// A launch, timed (or its failed step counted) in the driver's metrics.
    private static func launch(
        _ spec: VMSpec, configuration: DriverConfiguration, mode: LaunchMode, logger: Logger
    ) async throws(MicroVMError) -> MicroVM {
        let metrics = configuration.metrics
        let started = ContinuousClock.now
        let metricsMode: DriverMetrics.Mode =
            switch mode {
            case .configureThroughAPI: .create
            case .bootFromConfigFile: .run
            case .restore: .restore
            }
        do {
            let vm = try await launchSteps(spec, configuration: configuration, mode: mode, metrics: metrics, logger: logger)
            metrics.launched(mode: metricsMode, sandboxed: vm.isSandboxed, duration: ContinuousClock.now - started)
            return vm
        } catch {
            metrics.launchFailed(mode: metricsMode, error: error)
            throw error
        }
    }

    private static func launchSteps(
        _ spec: VMSpec, configuration: DriverConfiguration, mode: LaunchMode, metrics: DriverMetrics, logger: Logger
    ) async throws(MicroVMError) -> MicroVM {
        var logger = logger
        logger[metadataKey: "vm"] = "\(spec.id)"
        // 1. Validate: nothing on the host is touched before the spec is known to be usable.
        let planned: (VMIdentifier, Jail, SandboxDecision, ResourceLimits, JailerConfiguration)
        do throws(MicroVMError) {
            planned = try await plan(spec, configuration: configuration, mode: mode, logger: logger)
        } catch {
            // A cancelled preflight (the jailer's `--version`) is a cancellation, not a host fault.
            if Task.isCancelled { throw .createFailed(id: spec.id, step: "checking the host", cause: CancellationError(), exit: nil) }
            throw error
        }
        if Task.isCancelled { throw .createFailed(id: spec.id, step: "checking the host", cause: CancellationError(), exit: nil) }
        let (id, jail, decision, limits, jailerConfiguration) = planned

        // 2. Claim the id in this process (another VM of this driver may be between its own
        //    checks and its launch), then stage the files: a stale directory of the same id is
        //    removed, a live one refused.
        let directoryKey = jail.layout.jailDirectory.string
        guard LiveDirectories.claim(directoryKey) else {
            throw .createFailed(
                id: spec.id, step: "staging files",
                cause: JailError.jailBusy(id: spec.id, pid: 0, jailDirectory: directoryKey), exit: nil)
        }
        // The record's directory, created under the state root's lock: a second driver on the
        // same root cannot create the same id.
        let store = configuration.stateStore
        let claim: CreationClaim
        do {
            // A jail where the spec (not the configuration) puts it is noted for gc; the note
            // costs an extended attribute's write (about 40 µs here), which the others skip.
            let ownJail =
                jailerConfiguration.chrootBase != configuration.jailer.chrootBase
                || jailerConfiguration.parentCgroup != configuration.jailer.parentCgroup
            claim = try store.create(
                id: spec.id, monitored: configuration.monitor != nil,
                jail: ownJail ? CreationJail(layout: jail.layout, parentCgroup: jail.parentCgroup) : nil)
        } catch {
            LiveDirectories.release(directoryKey)
            throw error
        }
        // Held until the first record is written or the creation is undone: if this process dies
        // in between, another driver's gc finds an interrupted creation and removes what it left.
        defer { claim.release() }

        // 3. The VM's network, before anything runs: the firewall is in place before the link
        //    is up, and a jailed VMM joins the namespace and runs as the TAP's owner.
        // A restored TAP-mode VM takes its snapshot's allocation: the guest keeps its address.
        var snapshotNetworkIndex: Int?
        if case .restore(let snapshot, _, _) = mode { snapshotNetworkIndex = snapshot.networkIndex }
        let (launchSpec, attachment, executor) = try await attachNetwork(
            spec, id: id, decision: decision, jail: jail, limits: limits, jailerConfiguration: jailerConfiguration,
            tapIndex: snapshotNetworkIndex, configuration: configuration, logger: logger, undo: {
                store.remove(id: spec.id)
                LiveDirectories.release(directoryKey)
            })

        // 4. The files: linked (or copied) into the VM's directory. Firecracker's log is a FIFO
        //    there, unless Firecracker can open the driver's pipe through `/proc` and no
        //    monitor (which reads the FIFO) runs it.
        let logThroughPipe = executor.opensDriverDescriptors && configuration.monitor == nil
        var staging: [StagingRequest]
        switch mode {
        case .restore(let snapshot, _, let memory):
            staging = VMFiles.staging(for: launchSpec, driveSources: snapshot.driveCopies, boot: false, logFIFO: !logThroughPipe)
            staging.append(.readOnly(snapshot.statePath, at: VMFiles.restoreState))
            // A lazily restored guest's memory stays where it is: its server reads it there.
            if memory == .file { staging.append(.readOnly(snapshot.memoryPath, at: VMFiles.restoreMemory)) }
        case .configureThroughAPI, .bootFromConfigFile:
            staging = VMFiles.staging(for: launchSpec, logFIFO: !logThroughPipe)
        }
        do {
            _ = try await executor.prepare(staging: staging, logger: logger)
        } catch {
            if spec.network != nil { await VMNetworking.tearDown(id, configuration: configuration.networkConfiguration, logger: logger) }
            store.remove(id: spec.id)
            LiveDirectories.release(directoryKey)
            throw .createFailed(id: spec.id, step: "staging files", cause: error, exit: nil)
        }

        var process: SupervisedProcess?
        var command: JailerCommand?
        var streams: VMMStreams?
        var recording: Task<MicroVMError?, Never>?
        /// The page-fault server of a lazy restore run by this process.
        var lazyMemory: LazyMemory?
        /// The in-memory config file, open until Firecracker has read it (the launch's end).
        var configFD: Int32?
        defer { if let configFD { Glibc.close(configFD) } }
        var step = "writing the config file"
        do {
            // 5. Firecracker's arguments: its log always goes to the driver's FIFO or pipe, never
            //    to stdout, which is the guest's console alone.
            let forward = spec.logging?.level?.swiftLogLevel ?? .info
            let firecrackerLevel = (spec.logging ?? VMSpec.LoggingSpec()).firecrackerLevel
            var arguments = ["--level", firecrackerLevel.rawValue, "--show-level"]
            if !executor.isSandboxed { arguments += ["--id", id.rawValue] }
            if spec.logging?.metrics == true { arguments += ["--metrics-path", executor.vmmPath(VMFiles.metrics)] }
            if case .bootFromConfigFile = mode {
                if let cpuConfig = launchSpec.cpuConfig {
                    let template: Data
                    do { template = try JSONEncoder().encode(cpuConfig) } catch { throw MicroVMError.createFailed(id: spec.id, step: step, cause: error, exit: nil) }
                    try executor.writeFile(VMFiles.cpuTemplate, contents: template, id: spec.id)
                }
                let config = try executor.provideConfigFile(encodeConfig(launchSpec, executor: executor, id: spec.id), id: spec.id)
                configFD = config.keptOpen
                arguments += ["--config-file", config.path]
            }

            // 6. Streams, then the process.
            step = "opening the console and log"
            let console = Console(for: spec)
            let log = FirecrackerLog(logger: logger, forwardLevel: forward)
            let consoleOnDemand = configuration.consoleReading == .onDemand && spec.console?.file == nil
            // A lazy restore's page-fault server listens before Firecracker starts: it connects
            // during `PUT /snapshot/load`, and its memory is unusable until it is served. The
            // monitor of a detached VM runs it (it outlives this process); otherwise a thread here.
            var lazyServer: VMMStreams.LazyMemoryServer?
            if case .restore(let snapshot, _, .lazy) = mode {
                let owner = executor.isSandboxed ? (uid: executor.jail.configuration.uid, gid: executor.jail.configuration.gid) : nil
                lazyServer = VMMStreams.LazyMemoryServer(
                    socket: executor.hostPath(VMFiles.lazyMemorySocket), memoryFile: snapshot.memoryPath, owner: owner)
                if configuration.monitor == nil {
                    step = "starting the lazy memory server"
                    lazyMemory = try LazyMemory.start(
                        directory: executor.jail.layout.rootDirectory, memoryFile: snapshot.memoryPath, owner: owner, id: spec.id, logger: logger)
                }
            }
            step = "opening the console and log"
            if let monitor = configuration.monitor {
                streams = VMMStreams.monitored(
                    console: console, log: log,
                    monitor: .init(settings: monitor, stateDirectory: store.directory(for: spec.id), lazyMemory: lazyServer),
                    logFIFO: executor.hostPath(VMFiles.log).string, consoleOnDemand: consoleOnDemand)
            } else {
                do {
                    streams = try VMMStreams.pipes(
                        console: console, log: log, logFIFO: logThroughPipe ? nil : executor.hostPath(VMFiles.log).string,
                        consoleOnDemand: consoleOnDemand)
                } catch {
                    throw MicroVMError.file(id: spec.id, error)
                }
            }
            arguments = ["--log-path", streams!.logPathForVMM ?? executor.vmmPath(VMFiles.log)] + arguments
            step = "launching Firecracker"
            try Task.checkCancellation()
            // Not cancelled halfway: a process spawned but not yet known by its pid (a wait for
            // the spawn's report or the jailer's pid file given up) could not be stopped.
            let (launchArguments, launchStreams) = (arguments, streams!)
            let launched = await Task { () -> Result<(SupervisedProcess, JailerCommand?), MicroVMError> in
                do throws(MicroVMError) {
                    return .success(
                        try await executor.launch(
                            arguments: launchArguments, guest: GuestResources(memoryMiB: spec.machine.memoryMiB, vcpuCount: spec.machine.vcpus),
                            streams: launchStreams, logger: logger))
                } catch {
                    return .failure(error)
                }
            }.value
            (process, command) = try launched.get()

            // 7. The API, raced against an early exit (then Firecracker's own words explain it).
            step = "waiting for Firecracker's API"
            let client = FirecrackerClient(
                socketPath: SocketPath.connectable(
                    executor.apiSocketHostPath.string, vmDirectory: executor.jail.layout.rootDirectory.string, vmmPID: process!.pid),
                logger: logger)
            let initialState: VMState =
                switch mode {
                case .bootFromConfigFile: .running
                case .configureThroughAPI: .created
                case .restore(_, let resume, _): resume ? .running : .paused
                }
            let vm = MicroVM(
                spec: spec, id: id, executor: executor, decision: decision, process: process!, command: command, streams: streams!,
                client: client, state: initialState, stateStore: store, logger: logger, metrics: metrics,
                networkConfiguration: configuration.networkConfiguration, network: attachment, lazyMemory: lazyMemory,
                lazyMemoryFile: lazyServer?.memoryFile.string)
            // The console and log channels start while the VM boots (the pipes hold what it
            // writes meanwhile).
            step = "reading the console and log"
            do {
                try await streams!.start()
            } catch {
                // A VMM that failed at once takes its monitor with it before the driver has
                // connected: its end, in its own words (below), is the cause.
                if streams!.monitor != nil, await process!.exit(within: .milliseconds(200)) != nil {
                    step = "starting Firecracker"
                    throw MonitoredLaunchFailure(reason: "Firecracker (pid \(process!.pid)) ended at once", standardError: "", vmmStarted: true)
                }
                throw MicroVMError.file(id: spec.id, error)
            }
            step = "recording the VM"
            let firstRecord = try await vm.encodedRecord()
            step = "waiting for Firecracker's API"
            var bootsFromConfigFile = false
            if case .bootFromConfigFile = mode { bootsFromConfigFile = true }
            try await waitUntilReady(
                client: client, process: process!, log: firecrackerLevel.swiftLogLevel <= .info ? streams!.log : nil,
                guestStarts: bootsFromConfigFile, timeout: configuration.readinessTimeout, id: spec.id)

            // 8. The record, written once Firecracker is ready, while it is configured (or the
            //    guest boots), not while it builds the VM: on a small host that build is fast
            //    only while Firecracker's threads have the CPUs to themselves, and a record
            //    written meanwhile made the slow build far more frequent (BENCHMARKS.md).
            //    create still returns only once the record is written.
            recording = Task { () -> MicroVMError? in
                do throws(MicroVMError) {
                    try await vm.record(firstRecord)
                    return nil
                } catch {
                    return error
                }
            }

            // 9. Configure (or load the snapshot).
            try Task.checkCancellation()
            switch mode {
            case .bootFromConfigFile:
                step = "putting MMDS data"
                if let metadata = spec.mmds?.metadata { try await call("PUT /mmds", id: spec.id) { try await client.putMMDS(metadata) } }
            case .configureThroughAPI:
                try await configure(client: client, spec: launchSpec, executor: executor, step: &step)
            case .restore(_, let resume, let memory):
                step = "loading the snapshot"
                let overrides = launchSpec.networkInterfaces.map { NetworkOverride(ifaceId: $0.id, hostDevName: $0.tap) }
                let backend: MemoryBackend =
                    memory == .lazy ? .uffd(executor.vmmPath(VMFiles.lazyMemorySocket)) : .file(executor.vmmPath(VMFiles.restoreMemory))
                try await call("PUT /snapshot/load", id: spec.id) {
                    try await client.loadSnapshot(
                        SnapshotLoadParams(
                            snapshotPath: executor.vmmPath(VMFiles.restoreState), memBackend: backend, resumeVm: resume,
                            networkOverrides: overrides.isEmpty ? nil : overrides))
                }
            }
            step = "recording the VM"
            if let error = await recording?.value { throw error }
            // A cancelled creation never hands out a VM, even one that came up meanwhile.
            try Task.checkCancellation()
            await vm.superviseExit()
            let state = await vm.state
            logger.info(
                "VM \(state.name)",
                metadata: ["pid": "\(vm.pid)", "sandboxed": "\(vm.isSandboxed)", "directory": "\(vm.directory)"])
            return vm
        } catch {
            // Undo everything: the process, the streams, the directory and cgroups (once the
            // record's write, if it started, is over). In a task of its own: a cancelled
            // creation must still wait for the VMM's exit before removing what it had.
            let (recording, process, streams, lazy) = (recording, process, streams, lazyMemory)
            let (exit, lazyFailure) = await Task {
                await undoLaunch(
                    recording: recording, process: process, streams: streams, lazyMemory: lazy, executor: executor, spec: spec, id: id,
                    configuration: configuration, directoryKey: directoryKey, logger: logger)
            }.value
            // Whatever a cancelled wait made of it, the cause is the cancellation.
            if Task.isCancelled { throw .createFailed(id: spec.id, step: step, cause: CancellationError(), exit: nil) }
            // A page-fault server that failed stopped the VMM: the lost connection is its effect.
            if let lazyFailure { throw .createFailed(id: spec.id, step: step, cause: lazyFailure, exit: nil) }
            let cause: any Error = error
            if case .createFailed = error as? MicroVMError { throw error as! MicroVMError }
            if case .invalidSpec = error as? MicroVMError { throw error as! MicroVMError }
            if let exit, exit.kind != .killedByDriver, exit.exit != .signaled(signal: SIGKILL) {
                throw .createFailed(id: spec.id, step: step, cause: cause, exit: exit)
            }
            throw .createFailed(id: spec.id, step: step, cause: cause, exit: nil)
        }
    }

    /// Undoes a launch that failed (or was cancelled) after its files were staged: kills and
    /// reaps the VMM, closes its streams, removes its directory, cgroups, network and record.
    /// How the VMM ended, when it had started.
    /// With a lazy restore, also why its page-fault server failed (which stopped the VMM).
    private static func undoLaunch(
        recording: Task<MicroVMError?, Never>?, process: SupervisedProcess?, streams: VMMStreams?, lazyMemory: LazyMemory?,
        executor: any VMMExecutor, spec: VMSpec, id: VMIdentifier, configuration: DriverConfiguration, directoryKey: String, logger: Logger
    ) async -> (ExitReason?, LazyMemoryError?) {
        _ = await recording?.value
        var status: VMMExit?
        if let process {
            process.send(signal: SIGKILL)
            status = await process.exited()
            await streams?.vmmExited()
        }
        var logLines = await streams?.log.recentLines ?? []
        var standardError = await streams?.standardError.recentLines.map(\.text) ?? []
        streams?.closeChildEnds()
        await streams?.close()
        await process?.monitor?.ended(within: .seconds(2))
        await lazyMemory?.finish()
        var lazyFailure = lazyMemory?.failure
        if let monitor = streams?.monitor, monitor.lazyMemory != nil {
            // The monitor's server wrote how it ended before the monitor exited.
            lazyFailure = MonitorFiles.lazyMemoryFailure(in: monitor.stateDirectory)
        }
        if let monitor = streams?.monitor, logLines.isEmpty {
            // A VMM that failed at once may end, and its monitor with it, before this
            // driver has read a line through the monitor: the monitor's files have them.
            logLines = MonitorFiles.lastLines(of: MonitorFiles.firecrackerLog(in: monitor.stateDirectory)).map(FirecrackerLog.parse)
            if standardError.isEmpty { standardError = MonitorFiles.lastLines(of: MonitorFiles.standardError(in: monitor.stateDirectory)) }
        }
        // Without a process (the launch failed before its pid was known) the jail is searched.
        let report = await executor.cleanup(vmmExited: process != nil, logger: logger)
        if spec.network != nil { await VMNetworking.tearDown(id, configuration: configuration.networkConfiguration, logger: logger) }
        configuration.stateStore.remove(id: spec.id)
        LiveDirectories.release(directoryKey)
        if !report.isComplete {
            logger.error("cleanup after a failed create was incomplete", metadata: ["failures": "\(report.failures.map(\.summary))"])
        }
        return (status.map { ExitReason.classify(exit: $0, log: logLines, killedByDriver: false).adding(standardError: standardError) }, lazyFailure)
    }

    /// Step 1 of a launch: the spec is usable (a restore needs no kernel, but its snapshot's
    /// files), and where and how the VMM will run (the sandbox policy's decision, from the
    /// preflight cache when it passed before).
    private static func plan(
        _ spec: VMSpec, configuration: DriverConfiguration, mode: LaunchMode, logger: Logger
    ) async throws(MicroVMError) -> (VMIdentifier, Jail, SandboxDecision, ResourceLimits, JailerConfiguration) {
        var problems = spec.validate()
        if case .restore(let snapshot, _, _) = mode {
            // A restore boots no kernel: it may be gone since the snapshot.
            problems.removeAll { $0.field.hasPrefix("boot.") }
            problems += snapshot.missingFiles()
            if snapshot.type == .diff {
                // Its memory holds only the pages written since the snapshot before it: the
                // guest would run on zeros elsewhere (and triple-fault).
                problems.append(
                    SpecProblem(
                        field: "snapshot", message: "\(snapshot.directory) is a diff snapshot: its memory holds only what changed since the full snapshot before it",
                        hint: "merge it onto that full snapshot first: Snapshot.applyingDiff(onto:), or `microvm restore DIFF --base FULL`"))
            }
        }
        if !problems.isEmpty { throw .invalidSpec(id: spec.id, problems: problems) }
        let id: VMIdentifier
        let jail: Jail
        let decision: SandboxDecision
        let limits = spec.limits?.resourceLimits ?? .recommended
        let jailerConfiguration = configuration.jailerConfiguration(for: spec)
        do {
            id = try VMIdentifier(spec.id)
            let jailed = try Jail(
                configuration: jailerConfiguration, id: id, cgroupHost: try HostFacts.cgroupHost.get(), topology: HostFacts.topology)
            let policy = spec.sandbox ?? configuration.policy
            if let cached = PreflightCache.cached(policy: policy, configuration: jailerConfiguration, limits: limits) {
                decision = cached
            } else if policy == .disabled {
                decision = try policy.evaluate(configuration: jailerConfiguration, logger: logger)  // no preflight to run
            } else {
                let preflightLogger = logger
                decision = try await onThreadPool { () throws(JailError) in
                    try PreflightCache.decide(policy: policy, configuration: jailerConfiguration, limits: limits, logger: preflightLogger)
                }
            }
            // An unjailed VMM gets a directory of its own, with no jail root inside.
            jail = decision.isSandboxed ? jailed : jailed.with(layoutKind: .directory)
        } catch {
            throw .sandbox(id: spec.id, error)
        }
        if case .restore(let snapshot, _, _) = mode, snapshot.sandboxed == true, !decision.isSandboxed {
            throw .invalidSpec(
                id: spec.id,
                problems: [
                    SpecProblem(
                        field: "snapshot", message: "\(snapshot.directory) is a snapshot of a jailed VM: Firecracker recorded its drives at in-jail paths, which an unjailed VMM cannot open",
                        hint: "restore it jailed (sandbox policy required, or preferred on a host where the jailer works)")
                ])
        }
        if !decision.isSandboxed {
            logger.warning("starting Firecracker UNJAILED", metadata: ["policy": "\((spec.sandbox ?? configuration.policy).rawValue)"])
            var ignored: [String] = []
            if spec.limits != nil { ignored.append("limits") }
            if let jail = spec.jail, jail.uid != nil || jail.gid != nil { ignored.append("jail.uid/gid") }
            if !ignored.isEmpty {
                logger.warning(
                    "the spec's \(ignored.joined(separator: " and ")) apply to a jailed VMM only: this one runs without them, as this process's user",
                    metadata: ["policy": "\((spec.sandbox ?? configuration.policy).rawValue)"])
            }
        }
        let missingTAPs = missingTAPProblems(spec, sandboxed: decision.isSandboxed, uid: jailerConfiguration.uid)
        if !missingTAPs.isEmpty { throw .invalidSpec(id: spec.id, problems: missingTAPs) }

        return (id, jail, decision, limits, jailerConfiguration)
    }

    /// The spec's TAP devices that do not exist although the VMM cannot make them: jailed, it
    /// runs as the jail's user; unjailed, as this process's user (only root's Firecracker makes
    /// a missing TAP itself, as raw Firecracker does). Firecracker would only say "Open tap
    /// device failed ... Operation not permitted" once launched.
    private static func missingTAPProblems(_ spec: VMSpec, sandboxed: Bool, uid: UInt32) -> [SpecProblem] {
        guard spec.network == nil, sandboxed || geteuid() != 0 else { return [] }
        return spec.networkInterfaces.enumerated().compactMap { index, interface in
            guard access("/sys/class/net/\(interface.tap)", F_OK) != 0 else { return nil }
            let owner = sandboxed ? "\(uid)" : "\(geteuid())"
            return SpecProblem(
                field: "network_interfaces[\(index)].tap", message: "no network interface named '\(interface.tap)' on this host",
                hint: "create it first (`ip tuntap add \(interface.tap) mode tap user \(owner) && ip link set \(interface.tap) up`), or give the spec a `network` section and the driver makes one")
        }
    }

    /// Step 3 of a launch: the VM's network (spec `network`), made before anything runs, and
    /// the executor that runs the VMM in it (a jailed VMM joins the namespace and runs as the
    /// TAP's owner). The spec the VMM gets has the NIC and the guest's `ip=` boot argument.
    /// On failure, what was made is removed and `undo` releases the caller's claims.
    private static func attachNetwork(
        _ spec: VMSpec, id: VMIdentifier, decision: SandboxDecision, jail: Jail, limits: ResourceLimits,
        jailerConfiguration: JailerConfiguration, tapIndex: Int?, configuration: DriverConfiguration, logger: Logger, undo: () -> Void
    ) async throws(MicroVMError) -> (VMSpec, NetworkAttachment?, any VMMExecutor) {
        var launchSpec = spec
        var attachment: NetworkAttachment?
        var executor: any VMMExecutor = decision.isSandboxed ? JailedExecutor(jail: jail, limits: limits) : DirectExecutor(jail: jail)
        if let network = spec.network {
            do {
                let made = try await VMNetworking.setUp(
                    network, for: id, sandboxed: decision.isSandboxed, jailer: jailerConfiguration,
                    configuration: configuration.networkConfiguration, tapIndex: tapIndex, logger: logger)
                attachment = made
                launchSpec.networkInterfaces.append(NetworkInterfaceSpec(id: network.interface, tap: made.tapName, mac: made.guestMAC.description))
                launchSpec.boot.args.append(made.bootArgument)
                if decision.isSandboxed {
                    var networked = jailerConfiguration
                    networked.networkNamespace = made.namespacePath
                    networked.uid = made.uid
                    networked.gid = made.gid
                    let networkedJail = try Jail(
                        configuration: networked, id: id, cgroupHost: try HostFacts.cgroupHost.get(), topology: HostFacts.topology)
                    executor = JailedExecutor(jail: networkedJail, limits: limits)
                }
            } catch {
                await VMNetworking.tearDown(id, configuration: configuration.networkConfiguration, logger: logger)
                undo()
                throw .createFailed(id: spec.id, step: "setting up the network", cause: error, exit: nil)
            }
        }

        return (launchSpec, attachment, executor)
    }

    private static func configure(
        client: FirecrackerClient, spec: VMSpec, executor: any VMMExecutor, step: inout String
    ) async throws(MicroVMError) {
        let configuration = VMFiles.configuration(for: spec, path: executor.vmmPath)
        let id = spec.id
        step = "configuring the machine"
        if let machine = configuration.machineConfig {
            try await call("PUT /machine-config", id: id) { try await client.putMachineConfiguration(machine) }
        }
        if let cpuConfig = configuration.cpuConfig {
            step = "configuring the CPU template"
            try await call("PUT /cpu-config", id: id) { try await client.putCpuConfiguration(cpuConfig) }
        }
        step = "configuring the boot source"
        if let boot = configuration.bootSource {
            try await call("PUT /boot-source", id: id) { try await client.putBootSource(boot) }
        }
        for drive in configuration.drives ?? [] {
            step = "configuring drive \(drive.driveId)"
            try await call("PUT /drives/\(drive.driveId)", id: id) { try await client.putDrive(drive) }
        }
        for interface in configuration.networkInterfaces ?? [] {
            step = "configuring network interface \(interface.ifaceId)"
            try await call("PUT /network-interfaces/\(interface.ifaceId)", id: id) { try await client.putNetworkInterface(interface) }
        }
        if let vsock = configuration.vsock {
            step = "configuring vsock"
            try await call("PUT /vsock", id: id) { try await client.putVsock(vsock) }
        }
        if let entropy = configuration.entropy {
            step = "configuring the entropy device"
            try await call("PUT /entropy", id: id) { try await client.putEntropyDevice(entropy) }
        }
        if let balloon = configuration.balloon {
            step = "configuring the balloon"
            try await call("PUT /balloon", id: id) { try await client.putBalloon(balloon) }
        }
        if let mmds = configuration.mmdsConfig {
            step = "configuring MMDS"
            try await call("PUT /mmds/config", id: id) { try await client.putMMDSConfig(mmds) }
            if let metadata = spec.mmds?.metadata {
                try await call("PUT /mmds", id: id) { try await client.putMMDS(metadata) }
            }
        }
    }

    /// Firecracker's view of `spec` as its config file's JSON.
    private static func encodeConfig(_ spec: VMSpec, executor: any VMMExecutor, id: String) throws(MicroVMError) -> Data {
        // The config names no id (its paths are the VM directory's own), so VMs launched from
        // one spec (a fleet, a pool's refills) share it: JSONEncoder took about 90 µs of each
        // launch before the exec (a `perf` profile of `microvm-bench launch`, session 10).
        var key = ConfigFileKey(spec: spec, sandboxed: executor.isSandboxed)
        key.spec.id = ""
        if let cached = encodedConfigs.withLock({ $0[key] }) { return cached }
        let data: Data
        do {
            data = try JSONEncoder().encode(
                ConfigFileDocument(
                    VMFiles.configuration(for: spec, path: executor.vmmPath),
                    cpuTemplatePath: spec.cpuConfig == nil ? nil : executor.vmmPath(VMFiles.cpuTemplate)))
        } catch {
            throw .createFailed(id: id, step: "writing the config file", cause: error, exit: nil)
        }
        encodedConfigs.withLock { configs in
            if configs.count >= 32 { configs.removeAll() }
            configs[key] = data
        }
        return data
    }

    private struct ConfigFileKey: Hashable {
        var spec: VMSpec
        var sandboxed: Bool
    }

    /// Config files encoded for recent specs, at most 32.
    private static let encodedConfigs = Mutex<[ConfigFileKey: Data]>([:])

    /// Waits until Firecracker's API serves requests (and, when `guestStarts`, the guest runs).
    ///
    /// Firecracker logs both at Info: "API server started." once its API thread listens, and
    /// "Successfully started microvm" once a config-file boot has built and started the VM
    /// (its main loop, which answers requests, runs right after). Those lines are the
    /// readiness: no request and no connection during the boot, whose every bit of CPU on a
    /// small host is taken from the VMM (measured: a `GET /` during the build cost 0.1-0.4 ms
    /// of launch time). Without the lines (a higher log level, another version's wording, a
    /// build longer than 250 ms) `GET /` is polled.
    private static func waitUntilReady(
        client: FirecrackerClient, process: SupervisedProcess, log: FirecrackerLog?, guestStarts: Bool, timeout: Duration,
        id: String
    ) async throws(MicroVMError) {
        enum Event: Sendable {
            case ready(FirecrackerAPIError?)
            case exited(VMMExit?)
        }
        let event = await withTaskGroup(of: Event.self) { group in
            group.addTask {
                do throws(FirecrackerAPIError) {
                    if let log, await log.waitForMessage(containing: "API server started", timeout: .seconds(1)) {
                        if !guestStarts { return .ready(nil) }
                        // A build that takes longer (much memory, another version's wording)
                        // is left to the request below, which Firecracker answers once it has built.
                        if await log.waitForMessage(containing: "Successfully started microvm", timeout: .milliseconds(250)) {
                            return .ready(nil)
                        }
                    }
                    // Without the lines, a short flat poll: a doubling backoff would answer up to
                    // twice as late as the VMM is ready.
                    try await client.waitUntilReady(
                        timeout: timeout, initialBackoff: .microseconds(500), maximumBackoff: .milliseconds(2))
                    return .ready(nil)
                } catch {
                    return .ready(error)
                }
            }
            group.addTask {
                let exit = await process.exit(within: nil)
                // A guest that ended at once after a config-file boot: its VMM may be reaped
                // before its last log lines are read. Read them out: if the VM did start, its
                // supervision judges how it ended.
                if guestStarts, let log {
                    await log.waitUntilFinished(timeout: .seconds(1))
                    if await log.contains("Successfully started microvm") { return .ready(nil) }
                }
                return .exited(exit)
            }
            if let log {
                // A guest that ends at once (a config-file boot) may stop the VMM before its API
                // answers: the VM did run, and its supervision judges how it ended.
                group.addTask {
                    // Only once the guest was started: a VM that could not be built stops too.
                    if await log.waitForMessage(containing: "Vmm is stopping", timeout: timeout),
                        await log.contains("Successfully started microvm")
                    {
                        return .ready(nil)
                    }
                    return .exited(await process.exit(within: nil))
                }
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        switch event {
        case .ready(nil):
            return
        case .ready(let error?):
            throw .api(id: id, operation: "GET / (readiness)", error)
        case .exited(let exit):
            throw .api(
                id: id, operation: "GET / (readiness)",
                .transport(.connectionClosed, operation: "Firecracker \(exit.map { "\($0)" } ?? "exited") before its API answered", socketPath: client.socketPath))
        }
    }

    /// Runs one API call, keeping Firecracker's error (and its fault message) as the cause.
    static func call(
        _ operation: String, id: String, isolation: isolated (any Actor)? = #isolation, _ body: () async throws -> Void
    ) async throws(MicroVMError) {
        do {
            try await body()
        } catch let error as FirecrackerAPIError {
            throw .api(id: id, operation: operation, error)
        } catch {
            throw .api(id: id, operation: operation, .transport(.io("\(error)"), operation: operation, socketPath: ""))
        }
    }

    // MARK: The record

    /// The VM's first record, encoded (dated now): a launch encodes it while Firecracker builds
    /// the VM, when a CPU is idle, and writes it once Firecracker is ready (``record(_:)``).
    /// Encoding it after readiness took 0.2-0.3 ms of CPU from the guest's first milliseconds on
    /// a two-CPU host (BENCHMARKS.md, session 15). Nothing in it changes in between: the state
    /// is the one the launch will reach, and the pid and the process's start time are known.
    func encodedRecord() throws(MicroVMError) -> EncodedRecord {
        try stateStore.encoded(currentRecord)
    }

    /// Writes the VM's first record (`encoded` when given, else the current one; a failure
    /// undoes the create) on ``BatchThreadPool``: creating a file can take hundreds of
    /// microseconds on a busy filesystem, during which a cooperative thread, of which a small
    /// machine has two, would serve no other VM's console or supervision, and the write comes
    /// as the guest starts, which it must not slow down.
    func record(_ encoded: EncodedRecord? = nil) async throws(MicroVMError) {
        let store = stateStore
        if let encoded {
            try await Self.writeOffPool(id: id.rawValue) { () throws(MicroVMError) in try store.write(encoded) }
        } else {
            let record = currentRecord
            try await Self.writeOffPool(id: id.rawValue) { () throws(MicroVMError) in try store.write(record) }
        }
    }

    /// A record's write, on ``BatchThreadPool``.
    private static func writeOffPool(id: String, _ write: @escaping @Sendable () throws(MicroVMError) -> Void) async throws(MicroVMError) {
        try await BatchThreadPool.run(write) { error in
            .file(id: id, SystemCallError(call: "NIOThreadPool.runIfActive", subject: "the driver's batch thread pool: \(error)", errno: ECANCELED))
        }
    }

    /// Records a change of state (a pause, a resume, a start, a drive swapped) on
    /// ``BatchThreadPool``, after the operation has returned: a record's write (encoding, then
    /// a file renamed into place: 0.25-0.35 ms here) took longer than the pause or resume it
    /// recorded, and made them twice as slow as the request alone (BENCHMARKS.md, API). Writes run in the order of
    /// the changes, and only the newest of those waiting is written. A failure is logged, not
    /// thrown: the VM did change, and a later write (or `gc`) brings the record up to date. A
    /// driver that dies before the write leaves the record one step behind, which `attach`
    /// corrects from what Firecracker says; ``recordWritten()`` waits for it.
    func persist() {
        recordGeneration += 1
        let (generation, previous) = (recordGeneration, recordWrite)
        recordWrite = Task {
            await previous?.value
            // A newer change writes the newer record; an ended VM's record is removed.
            guard generation == recordGeneration, state.isLive else { return }
            let (record, store) = (currentRecord, stateStore)
            do {
                try await Self.writeOffPool(id: id.rawValue) { () throws(MicroVMError) in try store.write(record) }
            } catch {
                logger.error("could not update the VM's record", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Waits until the VM's record describes its latest change of state (they are written in
    /// the background): a process about to exit calls it after a pause, a resume or a start, so
    /// that the next one to read the record finds it current.
    public func recordWritten() async {
        await recordWrite?.value
    }

    private var currentRecord: VMRecord {
        let layout = executor.jail.layout
        return VMRecord(
            format: VMRecord.currentFormat, id: id.rawValue, spec: currentSpec, state: state, pid: pid, processStartTime: processStartTime,
            sandboxed: isSandboxed, directory: directory.string, jailDirectory: layout.jailDirectory.string,
            chrootBase: layout.chrootBase.string, execFileName: layout.execFileName, parentCgroup: executor.jail.parentCgroup,
            cgroupDirectories: cgroupDirectories, apiSocket: executor.apiSocketHostPath.string,
            firecrackerBinary: executor.jail.configuration.firecrackerBinary.string, driverPID: getpid(),
            driverStartTime: Self.driverStartTime, createdAt: createdAt, updatedAt: Date(), monitorPID: process.monitor?.pid,
            monitorStartTime: process.monitor?.startTime, logPipeInode: streams.logPipeInode, lazyMemoryFile: lazyMemoryFile)
    }

    static let driverStartTime = ProcFS.startTime(of: getpid())

    // MARK: Supervision

    /// Watches for the VMM's exit, whenever and however it comes.
    func superviseExit() {
        metrics.supervising()
        let process = self.process
        Task { [weak self] in
            let status = await process.exited()
            await self?.vmmEnded(status)
        }
        // Firecracker 1.12.1 can hang after stopping its VM when an API request races the stop
        // (seen after a guest's KVM error during a config-file boot): its log says the VMM is
        // stopping, the process never exits. A VMM that has logged its stop is finished: give it
        // two seconds, then end it; the reason is still read from its log.
        let log = streams.log
        let logger = self.logger
        Task {
            guard await log.waitForMessage(containing: "Vmm is stopping", timeout: .seconds(365 * 86_400)) else { return }
            if await process.exit(within: .seconds(2)) == nil {
                logger.warning("Firecracker stopped its VM but did not exit; killing it")
                process.send(signal: SIGKILL)
            }
        }
    }

    /// The VMM is gone: read the rest of its log, judge the exit, release everything at once.
    private func vmmEnded(_ status: VMMExit) async {
        await streams.vmmExited()
        // The VMM is gone, so its page-fault server has ended too (or ends now); a server that
        // failed killed the VMM, and its words are why the VM ended.
        await lazyMemory?.finish()
        // Under a monitor, its server's end is in the state directory (written before its exit).
        let lazyFailure =
            lazyMemory?.failure
            ?? (lazyMemoryFile != nil && process.monitor != nil ? MonitorFiles.lazyMemoryFailure(in: stateStore.directory(for: id.rawValue)) : nil)
        let reason = ExitReason.classify(exit: status, log: await streams.log.recentLines, killedByDriver: killRequested)
            .adding(lazyMemoryFailure: killRequested ? nil : lazyFailure)
        state = .ended(reason)
        // A record write under way lands before the directory goes (one landing after would
        // leave it behind); those queued after it see the VM ended and write nothing.
        await recordWrite?.value
        for action in teardownActions { await action() }
        teardownActions.removeAll()
        await streams.close()
        await client.close()
        await process.monitor?.ended(within: .seconds(2))
        let report = await executor.cleanup(vmmExited: status != .unknown, logger: logger)
        if spec.network != nil, let networkConfiguration {
            await VMNetworking.tearDown(id, configuration: networkConfiguration, logger: logger)
        }
        stateStore.remove(id: id.rawValue)
        LiveDirectories.release(executor.jail.layout.jailDirectory.string)
        teardownReport = report
        metrics.ended(reason, teardownComplete: report.isComplete)
        if !report.isComplete {
            logger.error("teardown incomplete", metadata: ["failures": "\(report.failures.map(\.summary))"])
        }
        if reason.isClean {
            logger.info("VM stopped", metadata: ["reason": "\(reason)"])
        } else {
            logger.warning("VM failed", metadata: ["reason": "\(reason)"])
        }
        await ended.resolve(reason)
    }

    /// Waits until the VMM has ended and everything it had is released.
    public func waitForExit() async -> ExitReason {
        await ended.wait(timeout: nil) ?? ExitReason(kind: .unknown, exit: .unknown)
    }

    /// The exit reason if the VM ends within `timeout`.
    public func waitForExit(timeout: Duration) async -> ExitReason? {
        await ended.wait(timeout: timeout)
    }

    /// Runs `action` when the VMM has ended, before the VM's directory is removed: for what a
    /// device holds on the host (a vsock listener, a socket in the VM's directory). Runs at once
    /// when the VM has already ended.
    func onTeardown(_ action: @escaping @Sendable () async -> Void) async {
        if state.isLive {
            teardownActions.append(action)
        } else {
            await action()
        }
    }

    /// What removing the VM's directory and cgroups did; nil while the VMM runs.
    public var teardown: TeardownReport? { teardownReport }

    // MARK: Operations

    /// Boots the guest (InstanceStart).
    public func start() async throws(MicroVMError) {
        try VMOperation.start.check(in: state, id: id.rawValue)
        try await lifecycleCall("InstanceStart") { [client] in try await client.startInstance() }
        if case .created = state { state = .running }
        persist()
    }

    /// Pauses the vCPUs.
    public func pause() async throws(MicroVMError) {
        try VMOperation.pause.check(in: state, id: id.rawValue)
        try await lifecycleCall("PATCH /vm Paused") { [client] in try await client.pause() }
        if state == .running { state = .paused }
        persist()
    }

    /// Resumes paused vCPUs.
    public func resume() async throws(MicroVMError) {
        try VMOperation.resume.check(in: state, id: id.rawValue)
        try await lifecycleCall("PATCH /vm Resumed") { [client] in try await client.resume() }
        if state == .paused { state = .running }
        persist()
    }

    /// Sends Ctrl-Alt-Del to the guest (which may ignore it).
    public func sendCtrlAltDel() async throws(MicroVMError) {
        try VMOperation.sendCtrlAltDel.check(in: state, id: id.rawValue)
        try await lifecycleCall("SendCtrlAltDel") { [client] in try await client.sendCtrlAltDel() }
    }

    /// A lifecycle request. When Firecracker drops its connection because the VM ended under
    /// the request (a crash, a kill from outside, a lazy restore's page server that could not
    /// serve a page), the error says how the VM ended, not only that the connection closed.
    private func lifecycleCall(_ operation: String, _ body: @Sendable () async throws -> Void) async throws(MicroVMError) {
        do {
            try await Self.call(operation, id: id.rawValue, body)
        } catch {
            guard case .api(_, _, .transport) = error, let reason = await ended.wait(timeout: .milliseconds(500)) else { throw error }
            throw .vmEnded(id: id.rawValue, operation: operation, reason: reason)
        }
    }

    /// Writes to the guest's serial input.
    public nonisolated func write(_ text: String) {
        streams.write(Array(text.utf8))
    }

    /// Writes raw bytes to the guest's serial input (control characters, escape sequences).
    public nonisolated func write(bytes: [UInt8]) {
        streams.write(bytes)
    }

    /// Stops the VM: Ctrl-Alt-Del (a paused VM is resumed for it), `grace` for the guest to
    /// shut down, then SIGTERM for an unjailed VMM and SIGKILL. Returns once everything the VM
    /// had on the host is released. Idempotent.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> ExitReason {
        if let reason = state.exitReason { return await finished(reason) }
        let started = ContinuousClock.now
        let reason = await stopEscalating(grace: grace)
        metrics.stopped(escalated: killRequested, duration: ContinuousClock.now - started)
        return reason
    }

    private func stopEscalating(grace: Duration) async -> ExitReason {
        // The grace bounds the whole graceful part, the API calls included: a VMM that does not
        // answer (hung, SIGSTOPped) is killed once it is over, not after the client's timeouts.
        let deadline = ContinuousClock.now + grace
        func remaining(atLeast floor: Duration = .zero) -> Duration { max(floor, deadline - .now) }
        if state == .paused {
            try? await Self.call("PATCH /vm Resumed", id: id.rawValue) { try await client.resume(timeout: remaining(atLeast: .milliseconds(100))) }
            if state == .paused { state = .running }
        }
        if state == .running {
            do {
                try await Self.call("SendCtrlAltDel", id: id.rawValue) {
                    try await client.sendCtrlAltDel(timeout: remaining(atLeast: .milliseconds(100)))
                }
                if let reason = await ended.wait(timeout: remaining()) { return reason }
                logger.warning("the guest did not shut down within the grace period; killing the VMM", metadata: ["grace": "\(grace)"])
            } catch {
                // A VMM already on its way out (another process's stop, a guest shutting down)
                // closes or refuses the connection: its own exit, within the grace, is the end
                // it was having. A refusal from Firecracker itself means no shutdown is coming.
                if case .api(_, _, .transport) = error, let reason = await ended.wait(timeout: remaining()) { return reason }
                logger.debug("Ctrl-Alt-Del failed; killing", metadata: ["error": "\(error)"])
            }
        }
        if let reason = state.exitReason { return await finished(reason) }
        killRequested = true
        if !isSandboxed {
            // Unjailed, SIGTERM is delivered (Firecracker does not handle it, so it ends at
            // once); a jailed VMM is PID 1 of its namespace and would never see it.
            process.send(signal: SIGTERM)
            if let reason = await ended.wait(timeout: .milliseconds(500)) { return reason }
        }
        process.send(signal: SIGKILL)
        return await waitForExit()
    }

    /// Kills the VMM at once (SIGKILL) and releases everything. Idempotent.
    @discardableResult
    public func kill() async -> ExitReason {
        if let reason = state.exitReason { return await finished(reason) }
        killRequested = true
        process.send(signal: SIGKILL)
        return await waitForExit()
    }

    /// Ends the VM if it still runs (SIGKILL) and returns what removing its directory and
    /// cgroups did. Idempotent; the handle keeps its state, exit reason and last console lines.
    @discardableResult
    public func destroy() async -> TeardownReport? {
        _ = await kill()
        return teardownReport
    }

    private func finished(_ reason: ExitReason) async -> ExitReason {
        await ended.wait(timeout: nil) ?? reason
    }

    /// The path Firecracker must be given for a file at `path` under the VM's directory.
    public nonisolated func vmmPath(_ path: FilePath) -> String {
        executor.vmmPath(path)
    }

    /// The host path of the vsock device's socket (guest-initiated connections to port P arrive
    /// on this path + `_P`); nil without a vsock device.
    public nonisolated var vsockPath: FilePath? {
        spec.vsock == nil ? nil : executor.hostPath(VMFiles.vsock)
    }

    /// The host path of Firecracker's metrics file; nil unless the spec asks for metrics.
    public nonisolated var metricsPath: FilePath? {
        spec.logging?.metrics == true ? executor.hostPath(VMFiles.metrics) : nil
    }

    // MARK: Snapshots

    /// Writes a snapshot into `destination` (a new or empty directory): the VM's state, its
    /// memory, copies of its writable drives, and `snapshot.json` describing them. A running VM
    /// is paused for it and resumed after, whatever happens.
    ///
    /// `.diff` writes only the memory dirtied since the previous snapshot (Firecracker 1.12 needs
    /// `machine.track_dirty_pages`); ``Snapshot/applyingDiff(onto:)`` merges it with a full one.
    public func snapshot(to destination: FilePath, type: SnapshotType = .full) async throws(MicroVMError) -> Snapshot {
        try VMOperation.snapshot.check(in: state, id: id.rawValue)
        let started = ContinuousClock.now
        let vmID = id.rawValue
        if type == .diff, spec.machine.trackDirtyPages != true {
            let version = try? await client.serverVersion()
            if let version, version < FirecrackerVersion(1, 13, 0) {
                throw .invalidSpec(
                    id: vmID,
                    problems: [SpecProblem(field: "machine.track_dirty_pages", message: "diff snapshots on Firecracker \(version) need dirty page tracking", hint: "set machine.track_dirty_pages: true")])
            }
        }
        let createdDestination = try SnapshotFiles.prepareDestination(destination, id: vmID)
        do {
            try executor.makeDirectory(VMFiles.snapshots, logger: logger)
        } catch {
            if createdDestination { rmdir(destination.string) }
            throw .snapshotFailed(id: vmID, step: "making the VM's snapshot directory", detail: error.description)
        }
        let stateFile = executor.hostPath(VMFiles.snapshotState)
        let memoryFile = executor.hostPath(VMFiles.snapshotMemory)
        unlink(stateFile.string)
        unlink(memoryFile.string)
        let wasRunning = state == .running
        if wasRunning {
            do throws(MicroVMError) {
                try await Self.call("PATCH /vm Paused", id: vmID) { try await client.pause() }
            } catch {
                if createdDestination { rmdir(destination.string) }
                throw error
            }
            state = .paused
        }
        // The description (and its fsync) is written while Firecracker writes the memory: it
        // names files whose paths are known already. Once they are in place it is renamed in.
        var driveCopies: [String: String] = [:]
        for drive in spec.drives where !drive.isReadOnly { driveCopies[drive.id] = destination.appending("drive-\(drive.id)").string }
        let snapshot = Snapshot(
            directory: destination, type: type, spec: currentSpec, firecrackerVersion: (try? await client.serverVersion())?.description,
            driveCopies: driveCopies, createdAt: Date(), networkIndex: network?.mode == .tap ? network?.index : nil, sandboxed: isSandboxed)
        let pendingDescription = Task { () -> MicroVMError? in
            do throws(MicroVMError) {
                try await snapshot.writePendingDescription()
                return nil
            } catch {
                return error
            }
        }
        let outcome: Result<Void, MicroVMError>
        do throws(MicroVMError) {
            try await Self.call("PUT /snapshot/create", id: vmID) {
                try await client.createSnapshot(
                    SnapshotCreateParams(
                        snapshotPath: executor.vmmPath(VMFiles.snapshotState), memFilePath: executor.vmmPath(VMFiles.snapshotMemory),
                        snapshotType: type))
            }
            // Writable drives are copied while the guest cannot write them.
            for (drive, copy) in driveCopies.sorted(by: { $0.key < $1.key }) {
                try await SnapshotFiles.copy(executor.hostPath(VMFiles.drive(drive)), to: FilePath(copy), id: vmID)
            }
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        // The guest resumes while the files are moved and the description put in place: a
        // diff snapshot of an idle guest took 0.5-0.7 ms longer with the resume and the
        // description's write one after the other (BENCHMARKS.md, session 7). A failed resume
        // is still reported; the snapshot, complete by then, stays in `destination`.
        let resuming: Task<MicroVMError?, Never>? =
            wasRunning && state == .paused
            ? Task { [client] in
                do throws(MicroVMError) {
                    try await Self.call("PATCH /vm Resumed", id: vmID) { try await client.resume() }
                    return nil
                } catch {
                    return error
                }
            } : nil
        let written: Result<Snapshot, MicroVMError>
        switch outcome {
        case .failure(let error):
            written = .failure(error)
        case .success:
            do throws(MicroVMError) {
                try await SnapshotFiles.move(stateFile, to: snapshot.statePath, id: vmID)
                try await SnapshotFiles.move(memoryFile, to: snapshot.memoryPath, id: vmID)
                if let error = await pendingDescription.value { throw error }
                try snapshot.publishDescription()
                written = .success(snapshot)
            } catch {
                written = .failure(error)
            }
        }
        if case .failure = written {
            // Nothing of a failed snapshot stays: not its files in the destination, nor the
            // destination it made, nor Firecracker's partial files in the VM's directory.
            _ = await pendingDescription.value
            SnapshotFiles.removeFailed(snapshot, createdDirectory: createdDestination)
            unlink(stateFile.string)
            unlink(memoryFile.string)
        }
        if let resuming {
            if let error = await resuming.value {
                logger.error("could not resume after the snapshot", metadata: ["error": "\(error)"])
                // The snapshot's own failure, if any, came first and says more.
                if case .success = outcome { throw error }
            } else {
                state = .running
            }
        }
        let result = try written.get()
        metrics.snapshotted(type: type, duration: ContinuousClock.now - started)
        logger.info("snapshot written", metadata: ["type": "\(type.rawValue)", "directory": "\(destination)"])
        return result
    }
}

/// The VM directories this process is using, from the moment a create claims one until its
/// teardown: two VMs of one driver can never share an id, even while neither has a process yet.
enum LiveDirectories {
    private static let claimed = Mutex<Set<String>>([])

    static func claim(_ directory: String) -> Bool {
        claimed.withLock { $0.insert(directory).inserted }
    }

    static func release(_ directory: String) {
        _ = claimed.withLock { $0.remove(directory) }
    }
}
