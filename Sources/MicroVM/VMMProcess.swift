public import Logging
import Subprocess
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// A running Firecracker (or jailer) process, with its serial console and standard input.
///
/// The process is started with swift-subprocess (which clears the signal mask in the child
/// and reaps it without blocking a thread) in its own session, so a terminal's SIGINT or
/// SIGHUP aimed at the host process does not reach the VMM: Firecracker turns SIGHUP into
/// exit code 156. All interaction happens inside subprocess's structured scope, driven by a
/// task this object owns; `exit()` returns once the process is gone and its output drained.
public final class VMMProcess: Sendable {
    public struct LaunchError: Error, Sendable, CustomStringConvertible {
        public let executable: String
        public let message: String
        public var description: String {
            "could not start \(executable): \(message). Hint: check that the file exists and is executable"
        }
    }

    /// The guest's serial console (Firecracker's standard output).
    public let console: Console
    /// Firecracker's standard error: argument errors and, without a log path, nothing else.
    public let standardError: Console
    /// The pid of the process that was started.
    public let pid: Int32

    private let commands: AsyncStream<Command>.Continuation
    private let outcome: Task<VMMExit, Never>
    private let exitState: ExitState

    private enum Command: Sendable {
        case input([UInt8])
        case signal(Int32)
    }

    private init(
        console: Console, standardError: Console, pid: pid_t,
        commands: AsyncStream<Command>.Continuation, outcome: Task<VMMExit, Never>, exitState: ExitState
    ) {
        self.exitState = exitState
        self.console = console
        self.standardError = standardError
        self.pid = pid
        self.commands = commands
        self.outcome = outcome
    }

    /// Starts `executable` with `arguments` and returns once it runs (or throws if it could not
    /// be started). The caller must eventually observe ``exit()`` or the process is left running.
    public static func launch(
        executable: FilePath, arguments: [String], workingDirectory: FilePath? = nil,
        environment: [String: String]? = nil,
        logger: Logger
    ) async throws -> VMMProcess {
        let console = Console()
        let standardError = Console(capacity: 1_000)
        let (commandStream, commands) = AsyncStream<Command>.makeStream()
        let (started, startedContinuation) = AsyncStream<Result<pid_t, LaunchError>>.makeStream()

        var options = PlatformOptions()
        options.createSession = true
        var env: Environment = .inherit
        if let environment {
            env = .custom(Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) }))
        }
        let configuration = Configuration(
            executable: .path(executable), arguments: Arguments(arguments), environment: env,
            workingDirectory: workingDirectory, platformOptions: options)

        let exitState = ExitState()
        let outcome = Task<VMMExit, Never> {
            let exit = await run()
            await exitState.resolve(exit)
            return exit
        }
        @Sendable func run() async -> VMMExit {
            do {
                let result = try await Subprocess.run(
                    configuration, input: .inputWriter, output: .sequence, error: .sequence
                ) { execution in
                    startedContinuation.yield(.success(execution.processIdentifier.value))
                    startedContinuation.finish()
                    await withTaskGroup(of: Void.self) { group in
                        group.addTask {
                            do {
                                for try await chunk in execution.standardOutput {
                                    await console.append(chunk.withUnsafeBytes { Array($0) })
                                }
                            } catch {}
                            await console.finish()
                        }
                        group.addTask {
                            do {
                                for try await chunk in execution.standardError {
                                    await standardError.append(chunk.withUnsafeBytes { Array($0) })
                                }
                            } catch {}
                            await standardError.finish()
                        }
                        let control = Task {
                            for await command in commandStream {
                                switch command {
                                case .input(let bytes):
                                    _ = try? await execution.standardInputWriter.write(bytes)
                                case .signal(let signal):
                                    try? execution.send(signal: Signal(rawValue: signal))
                                }
                            }
                        }
                        await group.waitForAll()
                        control.cancel()
                        _ = try? await execution.standardInputWriter.finish()
                    }
                }
                commands.finish()
                switch result.terminationStatus {
                case .exited(let code): return .exited(code: code)
                case .signaled(let signal): return .signaled(signal: signal)
                }
            } catch {
                startedContinuation.yield(.failure(LaunchError(executable: executable.string, message: "\(error)")))
                startedContinuation.finish()
                commands.finish()
                await console.finish()
                await standardError.finish()
                return .exited(code: -1)
            }
        }

        var iterator = started.makeAsyncIterator()
        guard let first = await iterator.next() else {
            throw LaunchError(executable: executable.string, message: "the launch did not report back")
        }
        switch first {
        case .success(let pid):
            logger.debug("started VMM process", metadata: ["pid": "\(pid)", "executable": "\(executable)"])
            return VMMProcess(
                console: console, standardError: standardError, pid: pid, commands: commands, outcome: outcome, exitState: exitState)
        case .failure(let error):
            throw error
        }
    }

    /// Writes bytes to the process's standard input (the guest's serial input).
    public func write(_ text: String) {
        commands.yield(.input(Array(text.utf8)))
    }

    /// Sends a signal through the process's pidfd (no pid-reuse race). A no-op once it is gone.
    public func send(signal: Int32) {
        commands.yield(.signal(signal))
    }

    /// Waits until the process has exited and its output is drained.
    public func exit() async -> VMMExit {
        await outcome.value
    }

    /// Waits at most `timeout` for the exit; nil if the process is still running then, or if
    /// the waiting task is cancelled. Unlike ``exit()`` this returns promptly on cancellation,
    /// so it can be raced against other work in a task group.
    public func exit(within timeout: Duration?) async -> VMMExit? {
        await exitState.wait(timeout: timeout)
    }

    /// Ends the process: SIGTERM (Firecracker does not handle it, so this is immediate), then
    /// SIGKILL if it is still there after `grace`.
    @discardableResult
    public func terminate(grace: Duration = .seconds(2)) async -> VMMExit {
        send(signal: SIGTERM)
        if let exit = await exit(within: grace) { return exit }
        send(signal: SIGKILL)
        return await exit()
    }
}

/// The exit of a process, awaited by any number of waiters that may give up (timeout or
/// cancellation) without waiting for the process itself.
actor ExitState {
    private var exit: VMMExit?
    private var waiters: [Int: CheckedContinuation<VMMExit?, Never>] = [:]
    private var nextToken = 0

    func resolve(_ exit: VMMExit) {
        self.exit = exit
        for waiter in waiters.values { waiter.resume(returning: exit) }
        waiters.removeAll()
    }

    func wait(timeout: Duration?) async -> VMMExit? {
        if let exit { return exit }
        let token = nextToken
        nextToken += 1
        let timer = timeout.map { timeout in
            Task { [weak self] in
                try? await Task.sleep(for: timeout)
                await self?.give(up: token)
            }
        }
        defer { timer?.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if let exit {
                    continuation.resume(returning: exit)
                } else if Task.isCancelled {
                    continuation.resume(returning: nil)
                } else {
                    waiters[token] = continuation
                }
            }
        } onCancel: {
            Task { await self.give(up: token) }
        }
    }

    private func give(up token: Int) {
        waiters.removeValue(forKey: token)?.resume(returning: nil)
    }
}
