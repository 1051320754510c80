import Foundation
import CMicroVMSys
import FirecrackerAPI
public import Logging
public import MicroVMHost
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A VM found under a state root, judged against what `/proc` says now.
public struct VMListing: Sendable {
    public var id: String
    /// The record; nil when it could not be read (`problem` says why).
    public var record: VMRecord?
    public var problem: MicroVMError?
    /// Whether the recorded Firecracker is still the process it was (pid and start time).
    public var process: RecordedProcess
    /// Whether a live driver supervises it (the one that wrote the record).
    public var supervised: Bool
    /// How the VM ended, as its monitor recorded it (detached VMs whose VMM is gone).
    public var monitorReason: ExitReason? = nil
    /// For a VM without a record yet: whether a live driver is creating it, or the one that was
    /// died first (`gc` removes what it left).
    public var creation: CreationProgress? = nil
    /// What Firecracker answered when asked (``MicroVM/asking(_:timeout:)``): created,
    /// running or paused; nil when it was not asked or did not answer.
    public var reportedState: VMState? = nil

    /// The state to show: Firecracker's answer or the record's while its process lives, else how
    /// it must have ended.
    public var state: VMState? {
        guard let record else { return nil }
        if process.isAlive { return reportedState ?? record.state }
        if let reason = record.state.exitReason { return .ended(reason) }
        if let monitorReason { return .ended(monitorReason) }
        let evidence: [String]
        switch process {
        case .reused(let pid): evidence = ["pid \(pid) now belongs to another process"]
        case .neverStarted: evidence = ["the driver died before Firecracker started"]
        default: evidence = ["Firecracker ended while no driver supervised it"]
        }
        return .failed(ExitReason(kind: .unknown, exit: .unknown, evidence: evidence))
    }
}

/// What `gc` did for one VM.
public struct CollectedVM: Sendable {
    public var id: String
    public var teardown: TeardownReport?
    /// Why it was left alone, when it was.
    public var skipped: String?
}

extension MicroVM {
    /// Every VM recorded under the driver's state root.
    public static func list(configuration: DriverConfiguration) -> [VMListing] {
        // The network's leases live in a directory of their own under the same root by default.
        let networkState = configuration.networkConfiguration.stateDirectory
        return configuration.stateStore.list().filter { configuration.stateStore.directory(for: $0.id) != networkState }.map { id, result in
            switch result {
            case .success(let record):
                let process = record.process
                var listing = VMListing(id: id, record: record, problem: nil, process: process, supervised: record.driverIsAlive)
                if !process.isAlive, record.monitorPID != nil {
                    listing.monitorReason = monitorReason(directory: configuration.stateStore.directory(for: id))
                }
                return listing
            case .failure(let error):
                let creation = configuration.stateStore.creationProgress(id: id)
                return VMListing(
                    id: id, record: nil, problem: error, process: .neverStarted, supervised: creation == .inProgress, creation: creation)
            }
        }
    }

    /// ``list(configuration:)``, with every live VM that no live driver supervises asked for its
    /// state, all at once (``asking(_:timeout:)``).
    public static func list(configuration: DriverConfiguration, asking timeout: Duration) async -> [VMListing] {
        await withTaskGroup(of: (Int, VMListing).self) { group in
            let listings = list(configuration: configuration)
            for (index, listing) in listings.enumerated() {
                group.addTask { (index, await asking(listing, timeout: timeout)) }
            }
            var answered = listings
            for await (index, listing) in group { answered[index] = listing }
            return answered
        }
    }

    /// `listing` with its Firecracker's answer to `GET /` (within `timeout`) as its state, when
    /// it lives and no live driver supervises it (whose record is current): a pause or a resume
    /// made behind the record's back (a `microvm` command killed before it recorded it, a
    /// request sent to the API socket by hand) shows as Firecracker has it. A VM that does not
    /// answer in time (its API busy with a snapshot, say) keeps its record's state. Reads
    /// only; attaches to nothing.
    public static func asking(_ listing: VMListing, timeout: Duration) async -> VMListing {
        guard listing.process.isAlive, !listing.supervised, let record = listing.record, record.state.isLive else { return listing }
        let client = FirecrackerClient(socketPath: record.connectableAPISocket)
        let info = try? await client.describeInstance(timeout: timeout)
        await client.close()
        var answered = listing
        switch info?.state {
        case .notStarted?: answered.reportedState = .created
        case .running?: answered.reportedState = .running
        case .paused?: answered.reportedState = .paused
        case nil: break
        }
        return answered
    }

    /// A dead VM's monitor that was re-parented to this process (its child subreaper) stays a
    /// zombie until reaped: reaped here when its start time proves it is that monitor.
    private static func reapMonitor(of record: VMRecord) {
        guard let pid = record.monitorPID, ProcFS.state(of: pid) == "Z", ProcFS.startTime(of: pid) == record.monitorStartTime else { return }
        var status: Int32 = 0
        _ = waitpid(pid, &status, WNOHANG)
    }

    /// The exit a VM's monitor recorded, judged with the log it kept.
    static func monitorReason(directory: FilePath) -> ExitReason? {
        guard let status = MonitorExit.read(MonitorFiles.exit(in: directory)) else { return nil }
        var log: [FirecrackerLog.Line] = []
        if let text = try? String(contentsOfFile: MonitorFiles.firecrackerLog(in: directory).string, encoding: .utf8) {
            log = text.split(separator: "\n").suffix(500).map { FirecrackerLog.parse(String($0)) }
        }
        var reason = ExitReason.classify(exit: status.exit, log: log, killedByDriver: false)
        if !status.isVMM {
            reason = reason.adding(standardError: [status.spawnError ?? "the launcher ended before the VMM started"])
        }
        return reason.adding(lazyMemoryFailure: MonitorFiles.lazyMemoryFailure(in: directory))
    }

    /// Takes over a VM whose driver is gone (crashed, killed, upgraded): its process must still
    /// be the recorded one (pid, start time, jail root or working directory), never a process
    /// that reused the pid. The VM then works exactly like one this driver created: console
    /// (what the guest wrote while nobody read it is still in its stdout pipe), API, pause, snapshot,
    /// stop. Its state is what Firecracker says now (a snapshot interrupted by the crash leaves
    /// it paused).
    public static func attach(
        id: String, configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async throws(MicroVMError) -> MicroVM {
        var logger = logger
        logger[metadataKey: "vm"] = "\(id)"
        let store = configuration.stateStore
        // The record names this process before anything else is done, so a second process
        // attaching meanwhile is refused; put back if the attach fails.
        let record = try store.takeOver(id: id)
        do {
            return try await attach(record: record, configuration: configuration, logger: logger)
        } catch {
            store.undoTakeOver(record)
            throw error
        }
    }

    private static func attach(record: VMRecord, configuration: DriverConfiguration, logger: Logger) async throws(MicroVMError) -> MicroVM {
        let id = record.id
        let store = configuration.stateStore
        guard case .alive(let pid) = record.process else {
            throw .notAttachable(id: id, reason: "its Firecracker is gone (\(record.process)); gc removes what it left")
        }
        let vmID: VMIdentifier
        let jail: Jail
        do {
            vmID = try VMIdentifier(id)
            var jailer = configuration.jailer
            jailer.chrootBase = FilePath(record.chrootBase)
            jailer.firecrackerBinary = FilePath(record.firecrackerBinary)
            jailer.parentCgroup = record.parentCgroup
            // The VMM's user owns its jail's root (the jailer gives it to the user it drops to):
            // the spec's, the command line's or a network lease's uid, which this configuration
            // does not know. Files staged for it later (a snapshot's directory, a new drive, a
            // vsock listener) are handed to that user.
            var root = stat()
            if record.sandboxed, lstat(record.directory, &root) == 0, (root.st_mode & S_IFMT) == S_IFDIR {
                jailer.uid = root.st_uid
                jailer.gid = root.st_gid
            }
            jail = try Jail(configuration: jailer, id: vmID, cgroupHost: try HostFacts.cgroupHost.get(), topology: HostFacts.topology)
                .with(layoutKind: record.layoutKind)
        } catch {
            throw .sandbox(id: id, error)
        }
        guard jail.layout.rootDirectory.string == record.directory else {
            throw .corruptRecord(id: id, path: store.directory(for: id).string, detail: "its directory \(record.directory) is not where its jail settings put it")
        }
        let directoryKey = jail.layout.jailDirectory.string
        guard LiveDirectories.claim(directoryKey) else {
            throw .notAttachable(id: id, reason: "this process already supervises it")
        }
        // The pidfd is taken before the identity is checked again: from then on the pid cannot
        // be recycled under it.
        let pidfd = cmv_pidfd_open(pid)
        guard pidfd >= 0, record.process == .alive(pid: pid) else {
            if pidfd >= 0 { close(pidfd) }
            LiveDirectories.release(directoryKey)
            throw .notAttachable(id: id, reason: "its Firecracker (pid \(pid)) ended just now")
        }
        // A live monitor keeps owning the streams and the exit status; with a dead one (killed),
        // the VMM is supervised directly, and its console is lost (nothing reads its stdout).
        var monitor: MonitorProcess?
        if let monitorPID = record.monitorPID {
            let monitorFD = cmv_pidfd_open(monitorPID)
            if monitorFD >= 0, record.monitorIsAlive {
                monitor = MonitorProcess(pid: monitorPID, pidfd: monitorFD, termination: nil)
            } else if monitorFD >= 0 {
                close(monitorFD)
            }
        }
        let stateDirectory = store.directory(for: id)
        let process =
            monitor == nil
            ? SupervisedProcess(pid: pid, pidfd: pidfd, reaper: .pidfd)
            : SupervisedProcess(pid: pid, pidfd: pidfd, reaper: .monitor(exitFile: MonitorFiles.exit(in: stateDirectory)), monitor: monitor)
        let executor: any VMMExecutor =
            record.sandboxed ? JailedExecutor(jail: jail, limits: record.spec.limits?.resourceLimits ?? .recommended) : DirectExecutor(jail: jail)
        let streams: VMMStreams
        do throws(SystemCallError) {
            let console = Console(for: record.spec)
            let log = FirecrackerLog(logger: logger, forwardLevel: record.spec.logging?.level?.swiftLogLevel ?? .info)
            let consoleOnDemand = configuration.consoleReading == .onDemand && record.spec.console?.file == nil
            if monitor != nil {
                streams = VMMStreams.monitored(
                    console: console, log: log,
                    monitor: .init(
                        settings: configuration.monitor ?? MonitorSettings(binary: "microvm-monitor"), stateDirectory: stateDirectory, attaching: true),
                    logFIFO: executor.hostPath(VMFiles.log).string, consoleOnDemand: consoleOnDemand)
            } else if record.monitorPID != nil {
                // Its monitor was killed. The VMM's stdout and stderr pipes are still open in
                // the VMM, and opening them through /proc gives this driver new ends of the same
                // pipes: the console works again (what the guest wrote meanwhile failed with
                // EPIPE and is lost); its stdin is the VM's FIFO, which it holds read-write.
                // Only Firecracker's log remains when that is refused.
                let fds = "/proc/\(pid)/fd/"
                do {
                    streams = try VMMStreams.attach(
                        console: console, log: log, streams: (store.stdinFIFO(for: id), fds + "1", fds + "2"), logFIFO: executor.hostPath(VMFiles.log).string,
                        consoleOnDemand: consoleOnDemand)
                } catch {
                    logger.warning("the VM's monitor is gone and its console cannot be reopened", metadata: ["error": "\(error)"])
                    streams = try VMMStreams.orphaned(console: console, log: log, logFIFO: executor.hostPath(VMFiles.log).string)
                }
            } else {
                // New ends of the pipes the VMM holds (read-write: what the guest wrote while no
                // driver read is still there). Its log: the FIFO, or the pipe the VMM holds,
                // found by its inode.
                let fds = "/proc/\(pid)/fd/"
                var logPath = executor.hostPath(VMFiles.log).string
                if let inode = record.logPipeInode {
                    guard let path = VMMStreams.descriptorPath(of: pid, pipe: inode) else {
                        throw SystemCallError(call: "open", subject: "Firecracker's log pipe (inode \(inode)) among \(fds)", errno: ENOENT)
                    }
                    logPath = path
                }
                streams = try VMMStreams.attach(
                    console: console, log: log, streams: (fds + "0", fds + "1", fds + "2"), logFIFO: logPath, consoleOnDemand: consoleOnDemand)
            }
            try await streams.start()
        } catch {
            LiveDirectories.release(directoryKey)
            throw .file(id: id, error)
        }
        let client = FirecrackerClient(socketPath: record.connectableAPISocket, logger: logger)
        var state = record.state
        // Briefly: a VMM that does not answer (stopped, hung) keeps its record's state, and a
        // stop or kill of it must not wait the client's default 10 s first.
        if let info = try? await client.describeInstance(timeout: .milliseconds(500)) {
            switch info.state {
            case .notStarted: state = .created
            case .running: state = .running
            case .paused: state = .paused
            }
        }
        let vm = MicroVM(
            spec: record.spec, id: vmID, executor: executor, decision: record.sandboxed ? .jailed(PreflightReport(problems: [])) : .unjailed(reasons: []),
            process: process, command: nil, streams: streams, client: client, state: state, stateStore: store, logger: logger,
            metrics: configuration.metrics, networkConfiguration: configuration.networkConfiguration,
            network: record.spec.network == nil ? nil : try? VMNetwork(configuration: configuration.networkConfiguration, logger: logger).attachment(for: vmID),
            cgroups: record.cgroupDirectories, createdAt: record.createdAt, lazyMemoryFile: record.lazyMemoryFile)
        if let memoryFile = record.lazyMemoryFile, monitor == nil {
            // Its pages were served by the driver that is gone (or by a monitor that was killed):
            // the guest runs until it first touches a page not yet served, then hangs there.
            logger.warning(
                "the VM was restored lazily and the process that served its memory is gone: the guest hangs at its next first touch of a page; stop or kill it",
                metadata: ["memory_file": "\(memoryFile)", "previous_driver": "\(record.driverPID)"])
        }
        do {
            try await vm.record()
        } catch {
            logger.error("could not record the takeover", metadata: ["error": "\(error)"])
        }
        await vm.superviseExit()
        logger.info("attached to VM", metadata: ["pid": "\(pid)", "state": "\(state.name)", "previous_driver": "\(record.driverPID)"])
        return vm
    }

    /// Removes what dead VMs left (jail or VM directory, cgroups in every hierarchy, network,
    /// record and state directory): VMs whose Firecracker is gone (or whose pid now names another process,
    /// which is never signalled) and whose driver is gone too. Live VMs, VMs a live driver
    /// supervises and unreadable records are left alone.
    public static func garbageCollect(
        configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async -> [CollectedVM] {
        var collected: [CollectedVM] = []
        for listing in list(configuration: configuration) {
            do {
                collected.append(CollectedVM(id: listing.id, teardown: try await remove(listing, configuration: configuration, logger: logger)))
            } catch {
                collected.append(CollectedVM(id: listing.id, skipped: error.description))
            }
        }
        return collected
    }

    /// Removes what one dead VM left (see ``garbageCollect(configuration:logger:)``); throws,
    /// touching nothing, when the VM still runs, a live driver supervises it, or its record
    /// cannot be read.
    @discardableResult
    public static func remove(
        id: String, configuration: DriverConfiguration, logger: Logger = Logger(label: "microvm")
    ) async throws(MicroVMError) -> TeardownReport {
        guard let listing = list(configuration: configuration).first(where: { $0.id == id }) else {
            throw .notFound(id: id, stateRoot: configuration.stateStore.root.string)
        }
        return try await remove(listing, configuration: configuration, logger: logger)
    }

    private static func remove(
        _ listing: VMListing, configuration: DriverConfiguration, logger: Logger
    ) async throws(MicroVMError) -> TeardownReport {
        let id = listing.id
        if listing.record == nil {
            switch configuration.stateStore.creationProgress(id: id) {
            case .interrupted:
                return try await removeInterruptedCreation(id: id, configuration: configuration, logger: logger)
            case .inProgress:
                throw .heldByAnotherDriver(id: id, operation: "remove", reason: "a live driver is creating it (its record is written once Firecracker is ready)")
            case nil:
                break
            }
        }
        guard let record = listing.record else {
            throw listing.problem ?? .corruptRecord(id: id, path: configuration.stateStore.directory(for: id).string, detail: "unreadable")
        }
        if listing.process.isAlive {
            throw .invalidState(id: id, operation: "remove", state: record.state, allowed: ["stopped", "failed"])
        }
        if listing.supervised {
            throw .heldByAnotherDriver(id: id, operation: "remove", reason: "driver pid \(record.driverPID) still supervises it and removes it as it ends")
        }
        guard let layout = record.layout, let vmID = try? VMIdentifier(id) else {
            throw .corruptRecord(id: id, path: configuration.stateStore.directory(for: id).string, detail: "it names no valid jail")
        }
        let cgroupHost: CgroupHost
        do {
            cgroupHost = try HostFacts.cgroupHost.get()
        } catch {
            throw .sandbox(id: id, error)
        }
        var vmLogger = logger
        vmLogger[metadataKey: "vm"] = "\(id)"
        var report = await JailTeardown.run(layout: layout, parentCgroup: record.parentCgroup, cgroupHost: cgroupHost, logger: vmLogger)
        if record.spec.network != nil {
            await VMNetworking.tearDown(vmID, configuration: configuration.networkConfiguration, logger: vmLogger)
        }
        if report.isComplete, let left = configuration.stateStore.remove(id: id) { report.failures.append(left) }
        reapMonitor(of: record)
        vmLogger.info("removed a dead VM", metadata: ["complete": "\(report.isComplete)"])
        return report
    }

    /// Removes what a creation whose driver died before the first record left: with no record,
    /// the jail is found where this configuration puts it, or, for a spec with a jail of its
    /// own, where the creating driver noted it on the state directory, every process
    /// whose root or working directory is the VM's is stopped, then the jail, cgroups and any
    /// network of the id are removed, and the state directory last (it guards the id meanwhile).
    private static func removeInterruptedCreation(
        id: String, configuration: DriverConfiguration, logger: Logger
    ) async throws(MicroVMError) -> TeardownReport {
        var vmLogger = logger
        vmLogger[metadataKey: "vm"] = "\(id)"
        let vmID: VMIdentifier
        let jail: Jail
        do {
            vmID = try VMIdentifier(id)
            jail = try Jail(configuration: configuration.jailer, id: vmID, cgroupHost: try HostFacts.cgroupHost.get(), topology: HostFacts.topology)
        } catch {
            throw .sandbox(id: id, error)
        }
        // Where the creating driver noted the jail; otherwise where this configuration puts it.
        let noted = CreationJail(notedOn: configuration.stateStore.directory(for: id), id: vmID)
        // Jailed or not, the teardown tells from what is on disk (`JailLayout.matchingDisk()`).
        var report = await JailTeardown.run(
            layout: noted?.layout ?? jail.layout, parentCgroup: noted?.parentCgroup ?? jail.parentCgroup, cgroupHost: jail.cgroupHost,
            options: TeardownOptions(searchForProcesses: true), logger: vmLogger)
        // A network is made before anything runs; with no network state at all there is none
        // (and reading the leases would create their directory).
        if access(configuration.networkConfiguration.stateDirectory.string, F_OK) == 0 {
            await VMNetworking.tearDown(vmID, configuration: configuration.networkConfiguration, logger: vmLogger)
        }
        if report.isComplete, let left = configuration.stateStore.remove(id: id) { report.failures.append(left) }
        vmLogger.info(
            "removed an interrupted creation",
            metadata: ["complete": "\(report.isComplete)", "stopped": "\(report.stopped.count)", "jail": "\(report.removedJailDirectory)"])
        return report
    }
}
