import CMicroVMSys
import FirecrackerAPI
import Foundation
import Logging
import MicroVMHost
import NIOPosix
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// How a VMM is started and what it sees: the seam between the VM handle and the sandbox.
///
/// Both executors use a directory under the chroot base for the VM (a jail's root,
/// `<chroot base>/<exec name>/<id>/root`, or an unjailed VM's `<chroot base>/<exec name>/<id>`)
/// and the same paths inside it (the API socket aside); they differ in how Firecracker is
/// started and how it names those paths. The sandbox policy picks one; nothing else in the
/// driver asks whether a VM is jailed.
protocol VMMExecutor: Sendable {
    var isSandboxed: Bool { get }
    /// The API socket, as Firecracker is told it (under the VM's root).
    var apiSocket: FilePath { get }
    /// The VM's directory layout (jail or not) and its teardown.
    var jail: Jail { get }
    /// What Firecracker must be told for the file at `path` under the VM's root.
    func vmmPath(_ path: FilePath) -> String
    /// Removes a stale directory of the same id (refusing a live one) and stages the files.
    func prepare(staging: [StagingRequest], logger: Logger) async throws(JailError) -> [StagedFile]
    /// Whether Firecracker can open this process's descriptors through `/proc/<driver>/fd` (its
    /// config and log need no file then): it runs as this process's user, with the host's
    /// `/proc`, and this process is dumpable (otherwise its `/proc` entries are root's).
    var opensDriverDescriptors: Bool { get }
    /// Hands Firecracker its config file's `contents`: the path to give `--config-file`, and a
    /// descriptor the driver keeps open until Firecracker has read it (nil for a file in the
    /// VM's directory).
    func provideConfigFile(_ contents: Data, id: String) throws(MicroVMError) -> (path: String, keptOpen: Int32?)
    /// Starts Firecracker with `arguments` (paths already translated) on `streams`; the jailer
    /// command when there was one.
    func launch(
        arguments: [String], guest: GuestResources, streams: VMMStreams, logger: Logger
    ) async throws(MicroVMError) -> (SupervisedProcess, JailerCommand?)
}

extension VMMExecutor {
    /// The host path of the API socket.
    var apiSocketHostPath: FilePath { hostPath(apiSocket) }

    /// The host path of a path under the VM's root.
    func hostPath(_ path: FilePath) -> FilePath {
        jail.layout.rootDirectory.pushing(path.removingRoot())
    }

    /// Removes a stale directory of the id (refusing a live one), then stages with `stage`: on
    /// the thread pool when it copies a file (a drive image), in place when it only links,
    /// creates directories and FIFOs (a thread hop would be most of its cost); on failure what
    /// was staged is removed again.
    func prepareDirectory(
        _ requests: [StagingRequest], logger: Logger, stage: @escaping @Sendable () throws(JailError) -> [StagedFile]
    ) async throws(JailError) -> [StagedFile] {
        try await jail.prepare(logger: logger)
        do throws(JailError) {
            return Self.copies(requests, into: jail.layout.chrootBase) ? try await onThreadPool(stage) : try stage()
        } catch {
            _ = await jail.teardown(logger: logger)
            throw error
        }
    }

    /// The config as a file in the VM's directory, where a jailed VMM (chrooted, with no
    /// `/proc`) can read it.
    func provideConfigFile(_ contents: Data, id: String) throws(MicroVMError) -> (path: String, keptOpen: Int32?) {
        try writeFile(VMFiles.configFile, contents: contents, id: id)
        return (vmmPath(VMFiles.configFile), nil)
    }

    /// Writes a new file of the driver's (readable by a jailed VMM) under the VM's root.
    func writeFile(_ file: FilePath, contents: Data, id: String) throws(MicroVMError) {
        let path = hostPath(file)
        let fd = open(path.string, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .file(id: id, SystemCallError(call: "open(O_CREAT|O_EXCL)", subject: path.string, errno: errno)) }
        defer { Glibc.close(fd) }
        let written = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written != contents.count {
            throw .file(id: id, SystemCallError(call: "write", subject: path.string, errno: written < 0 ? errno : EIO))
        }
    }

    /// Whether staging `requests` copies a file: a per-VM copy, or a read-only file on another
    /// filesystem than the jails (a hard link cannot cross it).
    static func copies(_ requests: [StagingRequest], into base: FilePath) -> Bool {
        var baseStatus = stat()
        guard stat(base.string, &baseStatus) == 0 else { return true }
        return requests.contains { request in
            switch request.kind {
            case .writableCopy, .readOnlyCopy:
                return true
            case .readOnly(let source):
                var status = stat()
                return stat(source.string, &status) != 0 || status.st_dev != baseStatus.st_dev
            case .emptyFile, .fifo, .directory:
                return false
            }
        }
    }

    /// Makes a directory under the VM's root after the launch (owned by the VM's user when
    /// jailed, so the VMM can write in it); nothing when it exists.
    func makeDirectory(_ path: FilePath, logger: Logger) throws(JailError) {
        var status = stat()
        if lstat(hostPath(path).string, &status) == 0, (status.st_mode & S_IFMT) == S_IFDIR { return }
        let owner = isSandboxed ? (jail.configuration.uid, jail.configuration.gid) : (getuid(), getgid())
        _ = try JailStager(layout: jail.layout, uid: owner.0, gid: owner.1, logger: logger).stage(.directory(at: path))
    }

    /// Starts `executable` under the VM's monitor (which becomes its parent and child
    /// subreaper), and supervises the VMM it reports. On failure, the launcher's exit and stderr
    /// as the monitor recorded them, once it has exited.
    func launchMonitored(
        _ monitor: VMMStreams.MonitoredStreams, executable: FilePath, arguments: [String], workingDirectory: FilePath?,
        pidFile: FilePath?, logger: Logger
    ) async throws(LaunchFailure) -> Result<SupervisedProcess, MonitoredLaunchFailure> {
        let launched = try await MonitorLauncher.spawn(
            settings: monitor.settings, stateDirectory: monitor.stateDirectory, logFIFO: hostPath(VMFiles.log), pidFile: pidFile,
            workingDirectory: workingDirectory, lazyMemory: monitor.lazyMemory, executable: executable, arguments: arguments)
        let monitorProcess = MonitorProcess(pid: launched.monitor.pid, pidfd: launched.monitor.pidfd, termination: launched.monitor.termination)
        switch launched.outcome {
        case .vmm(let pid):
            let pidfd = cmv_pidfd_open(pid)
            guard pidfd >= 0 else {
                await monitorProcess.ended(within: .seconds(5))
                var failure = MonitoredLaunchFailure.read(from: monitor.stateDirectory, reason: "Firecracker (pid \(pid)) ended at once")
                failure.vmmStarted = true
                return .failure(failure)
            }
            logger.debug("VMM started under its monitor", metadata: ["pid": "\(pid)", "monitor": "\(launched.monitor.pid)"])
            return .success(
                SupervisedProcess(
                    pid: pid, pidfd: pidfd, reaper: .monitor(exitFile: MonitorFiles.exit(in: monitor.stateDirectory)), monitor: monitorProcess))
        case .failed(let reason):
            await monitorProcess.ended(within: .seconds(5))
            return .failure(MonitoredLaunchFailure.read(from: monitor.stateDirectory, reason: reason))
        }
    }

    /// The error for a VMM that started under its monitor and ended before it could be
    /// supervised: how it ended, in Firecracker's own words (the monitor's copy of its log and
    /// standard error), not a launcher's or a binary's fault.
    func endedAtOnce(_ failure: MonitoredLaunchFailure, monitor: VMMStreams.MonitoredStreams) -> MicroVMError {
        let log = MonitorFiles.lastLines(of: MonitorFiles.firecrackerLog(in: monitor.stateDirectory)).map(FirecrackerLog.parse)
        let reason = ExitReason.classify(exit: failure.exit ?? .unknown, log: log, killedByDriver: false)
            .adding(standardError: MonitorFiles.lastLines(of: MonitorFiles.standardError(in: monitor.stateDirectory)))
        return .createFailed(id: jail.id.rawValue, step: "starting Firecracker", cause: failure, exit: reason)
    }

    /// Removes the VM's directory and cgroups. The process must be gone already (the VM handle
    /// kills and reaps it first). When its exit was not seen (`vmmExited` false), the jail is
    /// searched for processes, which are stopped.
    func cleanup(vmmExited: Bool, logger: Logger) async -> TeardownReport {
        await jail.teardown(options: TeardownOptions(searchForProcesses: !vmmExited), logger: logger)
    }
}

/// A launch under a monitor that started no VMM, or one that ended at once: why, as the
/// monitor recorded it.
struct MonitoredLaunchFailure: Error, Sendable, CustomStringConvertible {
    var reason: String
    /// The launcher's exit (nil when it could not be started at all), or the VMM's when
    /// `vmmStarted`.
    var exit: VMMExit?
    var spawnError: String?
    var standardError: String
    /// The VMM itself ran, and ended before it could be supervised.
    var vmmStarted = false

    var description: String { reason }

    static func read(from directory: FilePath, reason: String) -> MonitoredLaunchFailure {
        let status = MonitorExit.read(MonitorFiles.exit(in: directory))
        let standardError = (try? String(contentsOfFile: MonitorFiles.standardError(in: directory).string, encoding: .utf8)) ?? ""
        return MonitoredLaunchFailure(
            reason: reason, exit: status?.spawnError == nil ? status?.exit : nil, spawnError: status?.spawnError,
            standardError: standardError.trimmingCharacters(in: .whitespacesAndNewlines))
    }
}

/// Runs blocking host work (file copies of whole drive images, `jailer --version`) on NIO's
/// thread pool: never on Swift's cooperative threads, which every VM's supervision shares.
func onThreadPool<T: Sendable>(_ body: @escaping @Sendable () throws(JailError) -> T) async throws(JailError) -> T {
    try await onThreadPool(body) { error in JailError.cancelled("host work on the thread pool: \(error)") }
}

/// `body` on `pool` (NIO's shared one unless given), its typed error kept; `unavailable` makes
/// the error for a pool that no longer runs work (it was shut down).
func onThreadPool<T: Sendable, Failure: Error>(
    on pool: NIOThreadPool = .singleton, _ body: @escaping @Sendable () throws(Failure) -> T, unavailable: (any Error) -> Failure
) async throws(Failure) -> T {
    let result: Result<T, Failure>
    do {
        result = try await pool.runIfActive {
            do throws(Failure) { return .success(try body()) } catch { return .failure(error) }
        }
    } catch {
        throw unavailable(error)
    }
    return try result.get()
}

/// Firecracker started directly, as this process's user, with no chroot, cgroups or namespaces
/// (sandbox policy `disabled`, or `preferred` on a host without a usable jailer).
///
/// It runs with the VM's root as working directory and is given relative paths, so what it
/// records (in a snapshot, for instance) does not name this VM's directory and a restore into a
/// VM of another id finds its files, just as a jailed VMM's in-jail paths do.
struct DirectExecutor: VMMExecutor {
    let jail: Jail
    var isSandboxed: Bool { false }
    /// At the root: no `run/` to make (the jailer makes it for a jailed VMM, and fails if it
    /// exists), so a launch creates one directory less.
    var apiSocket: FilePath { "/firecracker.socket" }

    func vmmPath(_ path: FilePath) -> String {
        path.removingRoot().string
    }

    func prepare(staging: [StagingRequest], logger: Logger) async throws(JailError) -> [StagedFile] {
        let jail = self.jail
        // No jailer needs it as root's: the base of the VMs' directories is made when missing
        // (a user's own, for an unjailed VM run without root).
        let base = jail.layout.chrootBase.string
        if access(base, F_OK) != 0, let error = SandboxPreflight.makeDirectories(base) {
            throw .chrootBaseUnusable(path: base, reason: "it does not exist and could not be created: \(error)")
        }
        return try await prepareDirectory(staging, logger: logger) { () throws(JailError) in
            try JailStager(layout: jail.layout, uid: getuid(), gid: getgid(), logger: logger).stage(staging)
        }
    }

    var opensDriverDescriptors: Bool { cmv_is_dumpable() == 1 }

    /// The config in an anonymous in-memory file, which Firecracker (this process's user, with
    /// the host's `/proc`) opens through `/proc/<driver>/fd`: no file made in the VM's directory.
    /// On an ext4 without a journal, each inode a launch makes costs it 0.1-0.5 ms once VMs have
    /// been torn down in the last minutes (BENCHMARKS.md, session 6). A file when this process
    /// is not dumpable (its `/proc` entries are then root's) or no memfd can be made.
    func provideConfigFile(_ contents: Data, id: String) throws(MicroVMError) -> (path: String, keptOpen: Int32?) {
        let fd = opensDriverDescriptors ? cmv_memfd_cloexec("vm.json") : -1
        guard fd >= 0 else {
            try writeFile(VMFiles.configFile, contents: contents, id: id)
            return (vmmPath(VMFiles.configFile), nil)
        }
        let written = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == contents.count else {
            let error = written < 0 ? errno : EIO
            Glibc.close(fd)
            throw .file(id: id, SystemCallError(call: "write", subject: "the in-memory config file", errno: error))
        }
        return ("/proc/\(getpid())/fd/\(fd)", fd)
    }

    func launch(
        arguments: [String], guest: GuestResources, streams: VMMStreams, logger: Logger
    ) async throws(MicroVMError) -> (SupervisedProcess, JailerCommand?) {
        let binary = jail.configuration.firecrackerBinary
        defer { streams.closeChildEnds() }
        if let monitor = streams.monitor {
            let result: Result<SupervisedProcess, MonitoredLaunchFailure>
            do {
                result = try await launchMonitored(
                    monitor, executable: binary, arguments: ["--api-sock", vmmPath(apiSocket)] + arguments,
                    workingDirectory: jail.layout.rootDirectory, pidFile: nil, logger: logger)
            } catch {
                // The monitor itself could not be started: neither Firecracker's nor the jailer's fault.
                throw .createFailed(id: jail.id.rawValue, step: "starting the VM's monitor", cause: error, exit: nil)
            }
            switch result {
            case .success(let process):
                return (process, nil)
            case .failure(let failure):
                if failure.vmmStarted { throw endedAtOnce(failure, monitor: monitor) }
                throw .sandbox(id: jail.id.rawValue, .firecrackerMissing(path: binary.string, reason: failure.spawnError ?? failure.reason))
            }
        }
        do {
            let spawned = try await ProcessLauncher.spawn(
                executable: binary,
                arguments: ["--api-sock", vmmPath(apiSocket)] + arguments,
                workingDirectory: jail.layout.rootDirectory,
                standardInput: streams.childInput, standardOutput: streams.childOutput, standardError: streams.childError)
            logger.debug("started Firecracker (unjailed)", metadata: ["pid": "\(spawned.pid)"])
            return (SupervisedProcess(pid: spawned.pid, pidfd: spawned.pidfd, reaper: .launcher(spawned.termination)), nil)
        } catch {
            throw .sandbox(id: jail.id.rawValue, .firecrackerMissing(path: binary.string, reason: error.message))
        }
    }
}
