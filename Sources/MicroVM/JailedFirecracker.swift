import CMicroVMSys
public import FirecrackerAPI
public import Logging
public import MicroVMHost
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A Firecracker launched through the official jailer: chroot, uid/gid drop, cgroup limits, new
/// PID namespace, seccomp left on.
///
/// The jailer is only the launcher: with `--new-pid-ns` it exits right after cloning, and the
/// VMM, whose pid comes from the jail's pid file, is what this object supervises, signals and
/// reaps. The embedding process makes itself a child subreaper (`PR_SET_CHILD_SUBREAPER`) so the
/// orphaned VMM is re-parented to it: that is the only way to learn its real exit status and to
/// reap it promptly, which its cgroups need before they can be removed. Firecracker inherits the
/// jailer's standard streams, so the serial console and input work as for an unjailed VMM.
public final class JailedFirecracker: Sendable {
    public let jail: Jail
    public let command: JailerCommand
    /// What was staged into the jail, with in-jail paths for the API.
    public let staged: [StagedFile]
    /// The real Firecracker (pid from the jail's pid file).
    public let vmm: JailedVMM
    /// Client on the API socket's host path (under the jail's `root/`).
    public let client: FirecrackerClient
    /// The guest's serial console.
    public var console: Console { launcher.console }
    /// Always true; the unjailed path is ``FirecrackerInstance``.
    public var isSandboxed: Bool { true }

    private let launcher: VMMProcess
    private let pidfd: Int32
    private let exitState: ExitState
    private let monitor: Task<Void, Never>
    private let tornDown = Mutex<TeardownReport?>(nil)
    private let logger: Logger

    private init(
        jail: Jail, command: JailerCommand, staged: [StagedFile], vmm: JailedVMM, client: FirecrackerClient,
        launcher: VMMProcess, pidfd: Int32, exitState: ExitState, monitor: Task<Void, Never>, logger: Logger
    ) {
        self.jail = jail
        self.command = command
        self.staged = staged
        self.vmm = vmm
        self.client = client
        self.launcher = launcher
        self.pidfd = pidfd
        self.exitState = exitState
        self.monitor = monitor
        self.logger = logger
    }

    /// Makes this process the reaper of orphaned descendants, once. Returns the errno on failure.
    static let becomeSubreaper: Int32 = cmv_set_child_subreaper() == 0 ? 0 : errno

    /// Prepares the jail (a stale one of the same id is removed, a live one refused), stages
    /// `staging`, runs the jailer with `limits`, waits for the VMM's pid and for its API.
    ///
    /// On any failure everything created so far (process, jail, cgroups) is removed again and the
    /// error carries the jailer's or Firecracker's own words.
    public static func start(
        jail: Jail, limits: ResourceLimits = .none, guest: GuestResources, staging: [StagingRequest] = [],
        firecrackerArguments: [String] = JailerCommand.firecrackerArguments(),
        readinessTimeout: Duration = .seconds(5), logger: Logger
    ) async throws(JailError) -> JailedFirecracker {
        var logger = logger
        logger[metadataKey: "vm"] = "\(jail.id.rawValue)"
        let id = jail.id.rawValue
        if becomeSubreaper != 0 {
            logger.warning(
                "could not become a child subreaper; the VMM's exit status will be unknown",
                metadata: ["errno": "\(becomeSubreaper)"])
        }
        try await jail.prepare(logger: logger)
        var launcher: VMMProcess?
        var pid: Int32?
        do throws(JailError) {
            let staged = try jail.stage(staging, logger: logger)
            let command = try jail.command(limits: limits, guest: guest, firecrackerArguments: firecrackerArguments)
            let socketPath = try jail.apiSocketHostPath().string
            logger.debug("launching jailer", metadata: ["command": "\(command)"])
            do {
                launcher = try await VMMProcess.launch(
                    executable: command.executable, arguments: command.arguments, logger: logger)
            } catch {
                throw .jailerMissing(path: command.executable.string, reason: "\(error)")
            }
            let vmm = try await waitForVMM(jail: jail, launcher: launcher!)
            pid = vmm.pid
            let pidfd = cmv_pidfd_open(vmm.pid)
            if pidfd < 0 {
                throw .vmmExitedEarly(
                    id: id, termination: nil,
                    detail: "pid \(vmm.pid) was gone at once; console: \(await launcher!.console.recentLines.suffix(5).map(\.text))")
            }
            let exitState = ExitState()
            let watched = launcher!
            let monitor = Task {
                // Firecracker holds the jailer's stdout until it exits, so the end of the
                // launcher's output is the VMM's exit; a daemonized VMM is polled instead.
                await watched.console.untilFinished()
                while !(await JailedVMM.waitForExit(pidfd: pidfd, pid: vmm.pid, timeout: .seconds(60))) {}
                let termination = await JailedVMM.reap(pidfd)
                await exitState.resolve(VMMExit(termination))
            }
            let client = FirecrackerClient(socketPath: socketPath, logger: logger)
            let instance = JailedFirecracker(
                jail: jail, command: command, staged: staged, vmm: vmm, client: client, launcher: watched,
                pidfd: pidfd, exitState: exitState, monitor: monitor, logger: logger)
            try await instance.waitUntilReady(timeout: readinessTimeout)
            logger.info("jailed VMM ready", metadata: ["pid": "\(vmm.pid)", "socket": "\(socketPath)"])
            return instance
        } catch {
            if let launcher { launcher.send(signal: SIGKILL) }
            let report = await jail.teardown(pid: pid, logger: logger)
            if !report.isComplete {
                logger.error("cleanup after a failed launch was incomplete", metadata: ["failures": "\(report.failures)"])
            }
            throw error
        }
    }

    /// Waits for the pid file, or for the jailer to fail first (then its stderr says why).
    private static func waitForVMM(jail: Jail, launcher: VMMProcess) async throws(JailError) -> JailedVMM {
        enum Event: Sendable {
            case vmm(Result<JailedVMM, JailError>)
            case launcherEnded(VMMExit?)
        }
        let result: Result<JailedVMM, JailError> = await withTaskGroup(of: Event.self) { group in
            group.addTask {
                do throws(JailError) {
                    return .vmm(.success(try await jail.waitForVMM()))
                } catch {
                    return .vmm(.failure(error))
                }
            }
            group.addTask { .launcherEnded(await launcher.exit(within: nil)) }
            defer { group.cancelAll() }
            while let event = await group.next() {
                switch event {
                case .vmm(let result):
                    return result
                case .launcherEnded(let exit?) where exit != .exited(code: 0):
                    let stderr = await launcher.standardError.recentLines.map(\.text).joined(separator: "\n")
                    return .failure(
                        JailerFailure.classify(
                            id: jail.id.rawValue, termination: ProcessTermination(exit) ?? .exited(-1), standardError: stderr,
                            configuration: jail.configuration))
                case .launcherEnded:
                    continue  // exited 0, or cancelled: the pid file decides
                }
            }
            return .failure(.pidFileTimeout(id: jail.id.rawValue, path: jail.layout.pidFile.string, waitedMilliseconds: 0))
        }
        return try result.get()
    }

    private func waitUntilReady(timeout: Duration) async throws(JailError) {
        enum Event: Sendable {
            case ready(FirecrackerAPIError?)
            case exited(VMMExit?)
        }
        let client = self.client
        let exitState = self.exitState
        let event = await withTaskGroup(of: Event.self) { group in
            group.addTask {
                do throws(FirecrackerAPIError) {
                    try await client.waitUntilReady(timeout: timeout)
                    return .ready(nil)
                } catch {
                    return .ready(error)
                }
            }
            group.addTask { .exited(await exitState.wait(timeout: nil)) }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        let id = jail.id.rawValue
        switch event {
        case .ready(nil):
            return
        case .exited(let exit):
            throw .vmmExitedEarly(
                id: id, termination: exit.flatMap(ProcessTermination.init),
                detail: "console: \(await console.recentLines.suffix(5).map(\.text))")
        case .ready(let error?):
            if case .transport(.timedOut, _, _) = error {
                throw .apiSocketTimeout(
                    id: id, hostPath: client.socketPath, waitedMilliseconds: timeout.components.seconds * 1000)
            }
            throw .vmmExitedEarly(id: id, termination: nil, detail: "API not usable: \(error)")
        }
    }

    /// Writes to the guest's serial input.
    public func write(_ text: String) {
        launcher.write(text)
    }

    /// The VMM's exit, if it happens within `timeout` (nil: still running, or cancelled).
    public func exit(within timeout: Duration?) async -> VMMExit? {
        await exitState.wait(timeout: timeout)
    }

    /// Asks the guest to shut down (Ctrl-Alt-Del), waits `grace`, kills the VMM if needed, then
    /// removes the jail and its cgroups. Returns the VMM's exit and what teardown did.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> (exit: VMMExit, teardown: TeardownReport) {
        if await exitState.wait(timeout: .zero) == nil {
            do {
                try await client.sendCtrlAltDel()
            } catch {
                logger.debug("SendCtrlAltDel failed; killing", metadata: ["error": "\(error)"])
            }
            if await exitState.wait(timeout: grace) == nil {
                logger.warning("guest did not stop within the grace period; killing the VMM")
            }
        }
        return await kill()
    }

    /// Kills the VMM (SIGKILL: as PID 1 of its namespace it ignores SIGTERM), reaps it and tears
    /// the jail down. Idempotent.
    @discardableResult
    public func kill() async -> (exit: VMMExit, teardown: TeardownReport) {
        if await exitState.wait(timeout: .zero) == nil {
            _ = cmv_pidfd_send_signal(pidfd, SIGKILL)
        }
        let exit = await exitState.wait(timeout: .seconds(10)) ?? .unknown
        await monitor.value
        if let report = tornDown.withLock({ $0 }) { return (exit, report) }
        await client.close()
        let report = await jail.teardown(pid: vmm.pid, logger: logger)
        let first = tornDown.withLock { stored -> Bool in
            if stored != nil { return false }
            stored = report
            return true
        }
        if first { close(pidfd) }
        if !report.isComplete {
            logger.error("teardown incomplete", metadata: ["failures": "\(report.failures)"])
        }
        return (exit, report)
    }
}

extension VMMExit {
    init(_ termination: ProcessTermination?) {
        switch termination {
        case .exited(let code): self = .exited(code: code)
        case .signaled(let signal): self = .signaled(signal: signal)
        case nil: self = .unknown
        }
    }
}

extension ProcessTermination {
    init?(_ exit: VMMExit) {
        switch exit {
        case .exited(let code): self = .exited(code)
        case .signaled(let signal): self = .signaled(signal)
        case .unknown: return nil
        }
    }
}
