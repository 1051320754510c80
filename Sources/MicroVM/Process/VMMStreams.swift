import CMicroVMSys
import Logging
import MicroVMHost
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The VMM's standard streams and Firecracker's log FIFO, owned by the driver and read with
/// SwiftNIO. They are FIFOs in the VM's state directory, not pipes of swift-subprocess: a
/// jailed VMM is the jailer's grandchild and writes its console long after the process that was
/// spawned has exited, and the console must outlive the driver itself so a new driver can attach.
///
/// - stdout is the guest's serial console (``Console``), stdin its serial input;
/// - stderr holds Firecracker's (or the jailer's) complaints about its command line;
/// - the log FIFO carries Firecracker's log (``FirecrackerLog``). The driver opens it read-write
///   so it never sees a premature end of file before Firecracker opens it; once the VMM has
///   exited, a sentinel line written behind Firecracker's last line marks the end, so the exit
///   reason is read from the complete log.
final class VMMStreams: Sendable {
    let console: Console
    let standardError: Console
    let log: FirecrackerLog

    /// The child's ends, handed to the spawned process (which closes them after the spawn).
    let childInput: Int32
    let childOutput: Int32
    let childError: Int32

    private let childEndsClosed = Atomic(false)
    /// The console FIFO's read end while nobody has asked for the console (on-demand reading),
    /// then its reader channel.
    private let pendingConsole: Mutex<Int32>
    private let lateReaders = Mutex<[any Channel]>([])
    private let input: any Channel
    private let readers: [any Channel]
    private let logFIFO: String?

    private init(
        console: Console, standardError: Console, log: FirecrackerLog, childInput: Int32, childOutput: Int32,
        childError: Int32, input: any Channel, readers: [any Channel], logFIFO: String?, pendingConsole: Int32
    ) {
        self.pendingConsole = Mutex(pendingConsole)
        self.console = console
        self.standardError = standardError
        self.log = log
        self.childInput = childInput
        self.childOutput = childOutput
        self.childError = childError
        self.input = input
        self.readers = readers
        self.logFIFO = logFIFO
    }

    /// Opens the VMM's streams on the FIFOs of its state directory and Firecracker's log FIFO.
    ///
    /// For a launch (`forLaunch`), the child's ends are opened too: read-write, so Firecracker
    /// itself holds a reader of its stdout (it never dies of SIGPIPE when no driver reads: its
    /// console writes wait for the next driver to attach, and nothing the guest wrote is lost)
    /// and a writer of its stdin (it never sees end of file). To attach to a running VM, only the
    /// driver's ends are opened.
    static func open(
        console: Console, log: FirecrackerLog, streams paths: (input: String, output: String, error: String), logFIFO: String?,
        forLaunch: Bool, consoleOnDemand: Bool = false
    ) async throws(SystemCallError) -> VMMStreams {
        var fds: [Int32] = []  // closed on failure
        func openFD(_ path: String, _ flags: Int32) throws(SystemCallError) -> Int32 {
            let fd = try SystemCallError.check("open", path) { Glibc.open(path, flags | O_CLOEXEC) }
            fds.append(fd)
            return fd
        }
        var channels: [any Channel] = []
        do throws(SystemCallError) {
            var child: (input: Int32, output: Int32, error: Int32) = (-1, -1, -1)
            if forLaunch {
                child = (try openFD(paths.input, O_RDWR), try openFD(paths.output, O_RDWR), try openFD(paths.error, O_RDWR))
            }
            let inputWriter = try openFD(paths.input, O_WRONLY | O_NONBLOCK)
            let outputReader = try openFD(paths.output, O_RDONLY | O_NONBLOCK)
            let errorReader = try openFD(paths.error, O_RDONLY | O_NONBLOCK)
            var logFD: Int32 = -1
            if let logFIFO { logFD = try openFD(logFIFO, O_RDWR | O_NONBLOCK) }
            let standardError = Console(limits: .init(lines: 200, bytes: 64 * 1024))
            let group = MultiThreadedEventLoopGroup.singleton
            let logReader = logFD
            do {
                // The channels are set up at once, not one event-loop round trip after another.
                async let inputChannel = NIOPipeBootstrap(group: group).takingOwnershipOfDescriptor(output: inputWriter).get()
                async let outputChannel: (any Channel)? =
                    consoleOnDemand ? nil : reader(fd: outputReader, group: group) { await console.append($0) } end: { await console.finish() }
                async let errorChannel = reader(fd: errorReader, group: group) { await standardError.append($0) } end: { await standardError.finish() }
                async let logChannel: (any Channel)? =
                    logReader >= 0 ? reader(fd: logReader, group: group) { await log.append($0) } end: { await log.finish() } : nil
                // Every one is awaited, so none is left open when another failed.
                var failure: (any Error)?
                do {
                    channels.append(try await inputChannel)
                    fds.removeAll { $0 == inputWriter }
                } catch { failure = error }
                do {
                    if let channel = try await outputChannel {
                        channels.append(channel)
                        fds.removeAll { $0 == outputReader }
                    }
                } catch { failure = failure ?? error }
                do {
                    channels.append(try await errorChannel)
                    fds.removeAll { $0 == errorReader }
                } catch { failure = failure ?? error }
                do {
                    if let channel = try await logChannel {
                        channels.append(channel)
                        fds.removeAll { $0 == logReader }
                    }
                } catch { failure = failure ?? error }
                if let failure { throw failure }
            } catch {
                throw SystemCallError(call: "NIO pipe bootstrap", subject: "VMM streams: \(error)", errno: EIO)
            }
            if logFD < 0 { await log.finish() }
            let streams = VMMStreams(
                console: console, standardError: standardError, log: log, childInput: child.input, childOutput: child.output,
                childError: child.error, input: channels[0], readers: Array(channels.dropFirst()), logFIFO: logFIFO,
                pendingConsole: consoleOnDemand ? outputReader : -1)
            if consoleOnDemand {
                fds.removeAll { $0 == outputReader }
                await console.startReading { [weak streams] in await streams?.startConsoleReader() }
            }
            return streams
        } catch {
            for fd in fds { Glibc.close(fd) }
            for channel in channels { channel.close(promise: nil) }
            throw error
        }
    }

    /// Closes this process's copies of the child's ends, once, after the spawn (whatever its
    /// outcome): the console's end of file then means the VMM is gone.
    func closeChildEnds() {
        guard !childEndsClosed.exchange(true, ordering: .relaxed) else { return }
        for fd in [childInput, childOutput, childError] where fd >= 0 { Glibc.close(fd) }
    }

    /// Writes bytes to the guest's serial input.
    func write(_ bytes: [UInt8]) {
        let channel = input
        channel.eventLoop.execute {
            channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
        }
    }

    /// The VMM has exited: mark the end of its log and wait until everything before is read.
    func vmmExited() async {
        if let logFIFO {
            let fd = Glibc.open(logFIFO, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
            if fd >= 0 {
                let line = Array(("\n" + FirecrackerLog.endOfLog + "\n").utf8)
                _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
                Glibc.close(fd)
            } else {
                await log.finish()
            }
        }
        await log.waitUntilFinished(timeout: .seconds(2))
    }

    /// Starts reading the console (on-demand reading: the first time anyone asks for it; what
    /// the guest wrote meanwhile waited in the FIFO).
    func startConsoleReader() async {
        let fd = pendingConsole.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        guard fd >= 0 else { return }
        let console = self.console
        do {
            let channel = try await Self.reader(fd: fd, group: MultiThreadedEventLoopGroup.singleton) { await console.append($0) } end: {
                await console.finish()
            }
            lateReaders.withLock { $0.append(channel) }
        } catch {
            Glibc.close(fd)
        }
    }

    /// Closes every descriptor; the console and stderr end (their last lines are kept).
    func close() async {
        try? await input.close()
        for reader in readers { try? await reader.close() }
        for reader in lateReaders.withLock({ $0 }) { try? await reader.close() }
        let pending = pendingConsole.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        if pending >= 0 { Glibc.close(pending) }
        await console.finish()
        await standardError.finish()
        await log.finish()
    }

    /// Reads a pipe into `chunk`, in order; `end` runs once at its end.
    private static func reader(
        fd: Int32, group: any EventLoopGroup, chunk: @escaping @Sendable ([UInt8]) async -> Void,
        end: @escaping @Sendable () async -> Void
    ) async throws -> any Channel {
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
            for await bytes in chunks { await chunk(bytes) }
            await end()
        }
        return channel
    }

    /// Hands what arrives on a pipe, in order, to the stream's consumer.
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
}
