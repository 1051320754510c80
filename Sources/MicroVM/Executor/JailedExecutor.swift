import CMicroVMSys
import FirecrackerAPI
import Logging
import MicroVMHost
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Firecracker started through the official jailer: chroot, uid/gid drop, cgroup limits, new
/// PID namespace, seccomp left on.
///
/// The jailer is only the launcher: with `--new-pid-ns` it exits right after cloning, and the
/// VMM, whose pid comes from the jail's pid file, is the process supervised. The driver makes
/// itself a child subreaper so the orphaned VMM is re-parented to it: the only way to learn its
/// real exit status and to reap it promptly, which its cgroups need before they can be removed.
struct JailedExecutor: VMMExecutor {
    let jail: Jail
    let limits: ResourceLimits
    var isSandboxed: Bool { true }
    /// Chrooted before it starts, with no `/proc`.
    var opensDriverDescriptors: Bool { false }
    /// Firecracker's default, in the `run/` the jailer makes for it.
    var apiSocket: FilePath { JailLayout.defaultAPISocket }

    /// Makes this process the reaper of orphaned descendants, once. The errno on failure.
    static let becomeSubreaper: Int32 = cmv_set_child_subreaper() == 0 ? 0 : errno

    func vmmPath(_ path: FilePath) -> String {
        path.string
    }

    func prepare(staging: [StagingRequest], logger: Logger) async throws(JailError) -> [StagedFile] {
        let jail = self.jail
        return try await prepareDirectory(staging, logger: logger) { () throws(JailError) in try jail.stage(staging, logger: logger) }
    }

    func launch(
        arguments: [String], guest: GuestResources, streams: VMMStreams, logger: Logger
    ) async throws(MicroVMError) -> (SupervisedProcess, JailerCommand?) {
        let id = jail.id.rawValue
        if Self.becomeSubreaper != 0 {
            logger.warning(
                "could not become a child subreaper; the VMM's exit status will be unknown",
                metadata: ["errno": "\(Self.becomeSubreaper)"])
        }
        let command: JailerCommand
        do {
            command = try jail.command(
                limits: limits, guest: guest,
                firecrackerArguments: ["--api-sock", apiSocket.string] + arguments)
        } catch {
            throw .sandbox(id: id, error)
        }
        logger.debug("launching jailer", metadata: ["command": "\(command)"])
        defer { streams.closeChildEnds() }
        if let monitor = streams.monitor {
            let exitsEarly = jail.configuration.newPIDNamespace || jail.configuration.daemonize
            let result: Result<SupervisedProcess, MonitoredLaunchFailure>
            do {
                result = try await launchMonitored(
                    monitor, executable: command.executable, arguments: command.arguments, workingDirectory: nil,
                    pidFile: exitsEarly ? jail.layout.pidFile : nil, logger: logger)
            } catch {
                // The monitor itself could not be started: neither Firecracker's nor the jailer's fault.
                throw .createFailed(id: id, step: "starting the VM's monitor", cause: error, exit: nil)
            }
            switch result {
            case .success(let process):
                return (process, command)
            case .failure(let failure):
                if failure.vmmStarted { throw endedAtOnce(failure, monitor: monitor) }
                if let spawnError = failure.spawnError {
                    throw .sandbox(id: id, .jailerMissing(path: command.executable.string, reason: spawnError))
                }
                let termination: ProcessTermination =
                    switch failure.exit {
                    case .exited(let code)?: .exited(code)
                    case .signaled(let signal)?: .signaled(signal)
                    case .unknown?, nil: .exited(-1)
                    }
                throw .sandbox(
                    id: id,
                    JailerFailure.classify(
                        id: id, termination: termination, standardError: failure.standardError.isEmpty ? failure.reason : failure.standardError,
                        configuration: jail.configuration))
            }
        }
        let launcher: ProcessLauncher.Spawned
        do {
            launcher = try await ProcessLauncher.spawn(
                executable: command.executable, arguments: command.arguments, workingDirectory: nil,
                standardInput: streams.childInput, standardOutput: streams.childOutput, standardError: streams.childError)
        } catch {
            throw .sandbox(id: id, .jailerMissing(path: command.executable.string, reason: error.message))
        }
        // The jailer is reaped by its launcher's termination and never signalled; its pidfd only
        // tells, at once, when it has exited.
        defer { close(launcher.pidfd) }
        let pid = try await waitForVMM(launcher: launcher, streams: streams)
        let pidfd = cmv_pidfd_open(pid)
        if pidfd < 0 {
            await streams.drainStandardError()
            throw .sandbox(
                id: id,
                .vmmExitedEarly(id: id, termination: nil, detail: "pid \(pid) was gone at once; stderr: \(await streams.standardError.recentLines.suffix(5).map(\.text))"))
        }
        logger.debug("jailed VMM started", metadata: ["pid": "\(pid)"])
        return (SupervisedProcess(pid: pid, pidfd: pidfd, reaper: .pidfd), command)
    }

    /// Waits for the pid file, or for the jailer to fail first (then its stderr says why).
    private func waitForVMM(launcher: ProcessLauncher.Spawned, streams: VMMStreams) async throws(MicroVMError) -> Int32 {
        enum Event: Sendable {
            case vmm(Result<JailedVMM, JailError>)
            /// The jailer has exited (its pidfd), before its termination has its status.
            case launcherGone
            case launcherEnded(VMMExit)
        }
        let jail = self.jail
        // With --new-pid-ns (or --daemonize) the jailer exits once the VMM is cloned and the pid
        // file follows at once: until then a slow poll (many launches at once must not spin),
        // after it a fast one. A jailer that execs Firecracker itself never exits: polled only.
        let exitsEarly = jail.configuration.newPIDNamespace || jail.configuration.daemonize
        @Sendable func poll(every interval: Duration, for timeout: Duration) async -> Event {
            do throws(JailError) {
                return .vmm(.success(try await jail.waitForVMM(timeout: timeout, pollInterval: interval)))
            } catch {
                return .vmm(.failure(error))
            }
        }
        let result: Result<Int32, JailError> = await withTaskGroup(of: Event.self) { group in
            group.addTask { await poll(every: exitsEarly ? .milliseconds(10) : .microseconds(500), for: .seconds(5)) }
            group.addTask {
                if launcher.pidfd >= 0 { await ExitWatcher.shared.waitForExit(pidfd: launcher.pidfd) }
                return .launcherGone
            }
            group.addTask { .launcherEnded(await launcher.termination.value) }
            defer { group.cancelAll() }
            while let event = await group.next() {
                switch event {
                case .vmm(let result):
                    return result.map(\.pid)
                case .launcherEnded(let exit) where exit != .exited(code: 0):
                    // The pid file may still have been written (the failure came after the clone).
                    if let pid = try? JailedVMM.readPIDFile(layout: jail.layout) {
                        return .success(pid)
                    }
                    await streams.drainStandardError()
                    let stderr = await streams.standardError.recentLines.map(\.text).joined(separator: "\n")
                    let termination: ProcessTermination =
                        switch exit {
                        case .exited(let code): .exited(code)
                        case .signaled(let signal): .signaled(signal)
                        case .unknown: .exited(-1)
                        }
                    return .failure(
                        JailerFailure.classify(
                            id: jail.id.rawValue, termination: termination, standardError: stderr,
                            configuration: jail.configuration))
                case .launcherGone:
                    // It cloned the VMM and left (or failed: its status says so next): the pid
                    // file is there or imminent.
                    group.addTask { await poll(every: .microseconds(100), for: .seconds(2)) }
                case .launcherEnded:
                    continue  // exited 0; the pid file decides
                }
            }
            return .failure(.pidFileTimeout(id: jail.id.rawValue, path: jail.layout.pidFile.string, waitedMilliseconds: 0))
        }
        do {
            return try result.get()
        } catch {
            throw .sandbox(id: jail.id.rawValue, error)
        }
    }
}
