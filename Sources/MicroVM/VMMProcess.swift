import CMicroVMSys
public import Logging
import NIOCore
import NIOPosix
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

    private let input: any Channel
    private let pidfd: Int32
    private let outcome: Task<VMMExit, Never>
    private let exitState: ExitState

    private init(
        console: Console, standardError: Console, pid: Int32, input: any Channel, pidfd: Int32,
        outcome: Task<VMMExit, Never>, exitState: ExitState
    ) {
        self.console = console
        self.standardError = standardError
        self.pid = pid
        self.input = input
        self.pidfd = pidfd
        self.outcome = outcome
        self.exitState = exitState
    }

    /// Starts `executable` with `arguments` and returns once it runs (or throws if it could not
    /// be started). The caller must eventually observe ``exit()`` or the process is left running.
    ///
    /// The standard streams are pipes this object owns and reads through SwiftNIO, not
    /// swift-subprocess's: subprocess stops reading when its child exits, but a jailed VMM is
    /// the jailer's grandchild and keeps writing the console long after the jailer is gone.
    /// ``exit()`` is the started process's exit; the console ends when the last writer (the VMM)
    /// closes it.
    public static func launch(
        executable: FilePath, arguments: [String], workingDirectory: FilePath? = nil,
        environment: [String: String]? = nil,
        logger: Logger
    ) async throws -> VMMProcess {
        let console = Console()
        let standardError = Console(capacity: 1_000)
        let pipes = try (Pipe(), Pipe(), Pipe())
        let (stdin, stdout, stderr) = pipes
        var childEnds = [stdin.read, stdout.write, stderr.write]
        var parentEnds = [stdin.write, stdout.read, stderr.read]
        defer {
            // Whatever was not handed over is closed here, on success and failure alike.
            for fd in childEnds + parentEnds where fd >= 0 { close(fd) }
        }

        var options = PlatformOptions()
        options.createSession = true
        var env: Environment = .inherit
        if let environment {
            env = .custom(Dictionary(uniqueKeysWithValues: environment.map { (Environment.Key(stringLiteral: $0.key), $0.value) }))
        }
        let configuration = Configuration(
            executable: .path(executable), arguments: Arguments(arguments), environment: env,
            workingDirectory: workingDirectory, platformOptions: options)

        let group = MultiThreadedEventLoopGroup.singleton
        let outputChannel = try await Self.reader(fd: stdout.read, into: console, group: group)
        parentEnds[1] = -1
        let errorChannel = try await Self.reader(fd: stderr.read, into: standardError, group: group)
        parentEnds[2] = -1
        let inputChannel = try await NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(output: stdin.write).get()
        parentEnds[0] = -1

        let (started, startedContinuation) = AsyncStream<Result<(pid: Int32, pidfd: Int32), LaunchError>>.makeStream()
        let childInput = FileDescriptor(rawValue: stdin.read)
        let childOutput = FileDescriptor(rawValue: stdout.write)
        let childError = FileDescriptor(rawValue: stderr.write)
        childEnds = [-1, -1, -1]  // subprocess closes them after spawning
        let exitState = ExitState()
        let outcome = Task<VMMExit, Never> {
            let exit: VMMExit
            do {
                let result = try await Subprocess.run(
                    configuration,
                    input: .fileDescriptor(childInput, closeAfterSpawningProcess: true),
                    output: .fileDescriptor(childOutput, closeAfterSpawningProcess: true),
                    error: .fileDescriptor(childError, closeAfterSpawningProcess: true)
                ) { execution in
                    // A private duplicate of subprocess's pidfd stays valid after the child is
                    // reaped, so signals can never reach a recycled pid.
                    let identifier = execution.processIdentifier
                    let pidfd = identifier.processDescriptor >= 0 ? dup(identifier.processDescriptor) : -1
                    startedContinuation.yield(.success((identifier.value, pidfd)))
                    startedContinuation.finish()
                }
                switch result.terminationStatus {
                case .exited(let code): exit = .exited(code: code)
                case .signaled(let signal): exit = .signaled(signal: signal)
                }
            } catch {
                startedContinuation.yield(.failure(LaunchError(executable: executable.string, message: "\(error)")))
                startedContinuation.finish()
                try? await inputChannel.close()
                try? await outputChannel.close()
                try? await errorChannel.close()
                exit = .unknown
            }
            await exitState.resolve(exit)
            return exit
        }

        var iterator = started.makeAsyncIterator()
        guard let first = await iterator.next() else {
            throw LaunchError(executable: executable.string, message: "the launch did not report back")
        }
        switch first {
        case .success(let (pid, pidfd)):
            logger.debug("started process", metadata: ["pid": "\(pid)", "executable": "\(executable)"])
            return VMMProcess(
                console: console, standardError: standardError, pid: pid, input: inputChannel, pidfd: pidfd,
                outcome: outcome, exitState: exitState)
        case .failure(let error):
            throw error
        }
    }

    deinit {
        if pidfd >= 0 { close(pidfd) }
        input.close(promise: nil)
    }

    /// Writes bytes to the process's standard input (the guest's serial input).
    public func write(_ text: String) {
        let channel = input
        channel.eventLoop.execute {
            channel.writeAndFlush(channel.allocator.buffer(string: text), promise: nil)
        }
    }

    /// Sends a signal through the process's pidfd (no pid-reuse race). A no-op once it is gone.
    public func send(signal: Int32) {
        if pidfd >= 0 {
            _ = cmv_pidfd_send_signal(pidfd, signal)
        }
    }

    /// Waits until the started process has exited.
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

    /// Reads a pipe into a console until its last writer closes it.
    private static func reader(fd: Int32, into console: Console, group: any EventLoopGroup) async throws -> any Channel {
        let (chunks, continuation) = AsyncStream<[UInt8]>.makeStream()
        let channel = try await NIOPipeBootstrap(group: group)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PipeReader(continuation: continuation))
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .get()
        Task {
            for await chunk in chunks { await console.append(chunk) }
            await console.finish()
        }
        return channel
    }

    /// Hands what arrives on a pipe, in order, to the console's feeder.
    private final class PipeReader: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let continuation: AsyncStream<[UInt8]>.Continuation

        init(continuation: AsyncStream<[UInt8]>.Continuation) {
            self.continuation = continuation
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var buffer = unwrapInboundIn(data)
            continuation.yield(buffer.readBytes(length: buffer.readableBytes) ?? [])
        }

        func channelInactive(context: ChannelHandlerContext) {
            continuation.finish()
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .inputClosed = event as? ChannelEvent {
                continuation.finish()
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            continuation.finish()
            context.close(promise: nil)
        }
    }

    /// A pipe whose ends are close-on-exec (the child gets its end through dup2).
    private struct Pipe {
        let read: Int32
        let write: Int32

        init() throws {
            var fds: [Int32] = [-1, -1]
            guard cmv_pipe_cloexec(&fds) == 0 else {
                throw LaunchError(executable: "pipe", message: String(cString: strerror(errno)))
            }
            read = fds[0]
            write = fds[1]
        }
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
