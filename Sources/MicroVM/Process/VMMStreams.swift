import CMicroVMSys
import Foundation
import Logging
import MicroVMHost
import NIOCore
import NIOPosix
import Synchronization
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The VMM's standard streams and Firecracker's log FIFO, owned by the driver and read with
/// SwiftNIO. The streams are pipes the driver makes, not swift-subprocess's: a jailed VMM is
/// the jailer's grandchild and writes its console long after the process that was spawned has
/// exited, and the console must outlive the driver itself so a new driver can attach (through
/// `/proc/<pid>/fd`). Under a monitor they come from the monitor's socket instead.
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

    /// The child's ends, handed to the spawned process (this process closes its copies after the spawn).
    let childInput: Int32
    let childOutput: Int32
    let childError: Int32

    /// The driver's ends, in two phases: descriptors opened before the spawn (cheap, and the
    /// FIFOs hold whatever Firecracker writes meanwhile), NIO channels set up after it, while
    /// the VM boots, so they are not on the launch's critical path.
    private struct Ends {
        var input: Int32
        var output: Int32
        var error: Int32
        var log: Int32
        var inputChannel: (any Channel)?
        /// Input written while the input channel is being set up (it is set up on the first
        /// write: most VMs are never written to, and a channel costs CPU while the VM boots).
        var pendingInput: [UInt8] = []
        var inputStarting = false
        var readers: [any Channel] = []
        var closed = false
    }

    private let ends: Mutex<Ends>
    private let childEndsClosed = Atomic(false)
    private let consoleOnDemand: Bool
    /// Where the end of the log is marked once the VMM has exited (this process's descriptor of
    /// the log's FIFO or pipe; nil under a monitor, which marks it).
    private let endOfLogPath: String?
    /// Firecracker's log as a pipe (no FIFO): its inode, which a later driver looks for among
    /// the VMM's descriptors.
    let logPipeInode: UInt64?
    /// What Firecracker is given as `--log-path` when its log is a pipe.
    let logPathForVMM: String?
    /// With a monitor, the streams come from its socket instead of the FIFOs.
    let monitor: MonitoredStreams?

    struct MonitoredStreams: Sendable {
        var settings: MonitorSettings
        var stateDirectory: FilePath
        /// A driver attaching to a VM another one launched: the log the monitor kept from
        /// before is taken into the recent lines (they explain how the VMM ends) but not
        /// re-emitted through swift-log, which the earlier driver did.
        var attaching = false
        /// A lazy restore's page-fault server, which the monitor runs (it outlives the driver).
        var lazyMemory: LazyMemoryServer? = nil
        var socket: String { MonitorFiles.socket(in: stateDirectory).string }
    }

    /// Where a lazy restore's page-fault server listens and what it serves.
    struct LazyMemoryServer: Sendable {
        /// The socket's host path (in the VM's directory).
        var socket: FilePath
        var memoryFile: FilePath
        /// The VMM's user, who must be able to connect (a jailed VMM's); nil: this process's.
        var owner: (uid: UInt32, gid: UInt32)?
    }

    private init(
        console: Console, standardError: Console, log: FirecrackerLog, child: (Int32, Int32, Int32), ends: Ends,
        consoleOnDemand: Bool, endOfLogPath: String?, monitor: MonitoredStreams? = nil, logPipeInode: UInt64? = nil,
        logPathForVMM: String? = nil
    ) {
        self.logPipeInode = logPipeInode
        self.logPathForVMM = logPathForVMM
        self.monitor = monitor
        self.console = console
        self.standardError = standardError
        self.log = log
        (childInput, childOutput, childError) = child
        self.ends = Mutex(ends)
        self.consoleOnDemand = consoleOnDemand
        self.endOfLogPath = monitor == nil ? endOfLogPath : nil
    }

    /// The streams of a launch: three pipes, and Firecracker's log FIFO. ``start()`` then reads
    /// them.
    ///
    /// The VMM's end of each pipe is opened again read-write through `/proc/self/fd`, as a
    /// FIFO opened read-write: Firecracker itself holds a reader of its stdout (it never dies
    /// of SIGPIPE when no driver reads: its console writes wait for the next driver to attach,
    /// and nothing the guest wrote is lost) and a writer of its stdin (it never sees end of
    /// file). Pipes rather than FIFOs in the state directory: a filesystem inode made and
    /// removed per stream costs up to a few hundred microseconds each on a busy ext4 without
    /// a journal, on the launch's critical path.
    ///
    /// Without `logFIFO`, Firecracker's log is a pipe too, which Firecracker opens through
    /// `/proc/<driver>/fd` (``logPathForVMM``): one inode less per launch, for a VMM that can
    /// reach this process's `/proc` (unjailed). The driver holds it read-write, as it holds a
    /// FIFO, so the log never ends while no VMM writes; a later driver finds it among the VMM's
    /// descriptors by its inode (``logPipeInode``, kept in the record).
    static func pipes(
        console: Console, log: FirecrackerLog, logFIFO: String?, consoleOnDemand: Bool = false
    ) throws(SystemCallError) -> VMMStreams {
        var fds: [Int32] = []  // closed on failure
        /// A pipe: the driver's end (non-blocking), and the VMM's end, read-write (and blocking:
        /// an open makes a new open file description, which does not share O_NONBLOCK).
        func pipe(driverReads: Bool) throws(SystemCallError) -> (driver: Int32, vmm: Int32) {
            var ends: [Int32] = [-1, -1]
            _ = try SystemCallError.check("pipe2", "the VMM's standard streams") { cmv_pipe_cloexec_nonblock(&ends) }
            fds += ends
            let (driver, other) = driverReads ? (ends[0], ends[1]) : (ends[1], ends[0])
            let path = "/proc/self/fd/\(other)"
            let vmm = try SystemCallError.check("open", path) { Glibc.open(path, O_RDWR | O_CLOEXEC) }
            fds.append(vmm)
            Glibc.close(other)
            fds.removeAll { $0 == other }
            return (driver, vmm)
        }
        do throws(SystemCallError) {
            let input = try pipe(driverReads: false)
            let output = try pipe(driverReads: true)
            let error = try pipe(driverReads: true)
            let logFD: Int32
            if let logFIFO {
                logFD = try SystemCallError.check("open", logFIFO) { Glibc.open(logFIFO, O_RDWR | O_NONBLOCK | O_CLOEXEC) }
            } else {
                var ends: [Int32] = [-1, -1]
                _ = try SystemCallError.check("pipe2", "Firecracker's log") { cmv_pipe_cloexec_nonblock(&ends) }
                fds += ends
                let path = "/proc/self/fd/\(ends[0])"
                logFD = try SystemCallError.check("open", path) { Glibc.open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC) }
                for end in ends { Glibc.close(end) }
                fds.removeAll { ends.contains($0) }
            }
            fds.append(logFD)
            return VMMStreams(
                console: console, standardError: Console(limits: .init(lines: 200, bytes: 64 * 1024)), log: log,
                child: (input.vmm, output.vmm, error.vmm), ends: Ends(input: input.driver, output: output.driver, error: error.driver, log: logFD),
                consoleOnDemand: consoleOnDemand, endOfLogPath: "/proc/self/fd/\(logFD)", logPipeInode: logFIFO == nil ? Self.pipeInode(of: logFD) : nil,
                logPathForVMM: logFIFO == nil ? "/proc/\(getpid())/fd/\(logFD)" : nil)
        } catch {
            for fd in fds { Glibc.close(fd) }
            throw error
        }
    }

    /// The streams of a running VMM, to attach to it: new ends of its standard streams,
    /// opened through `/proc/<pid>/fd` (pipes, or the FIFOs of an older driver's VMs), and
    /// Firecracker's log FIFO.
    static func attach(
        console: Console, log: FirecrackerLog, streams paths: (input: String, output: String, error: String), logFIFO: String,
        consoleOnDemand: Bool = false
    ) throws(SystemCallError) -> VMMStreams {
        var fds: [Int32] = []  // closed on failure
        func openFD(_ path: String, _ flags: Int32) throws(SystemCallError) -> Int32 {
            let fd = try SystemCallError.check("open", path) { Glibc.open(path, flags | O_CLOEXEC) }
            fds.append(fd)
            return fd
        }
        do throws(SystemCallError) {
            let ends = Ends(
                input: try openFD(paths.input, O_WRONLY | O_NONBLOCK), output: try openFD(paths.output, O_RDONLY | O_NONBLOCK),
                error: try openFD(paths.error, O_RDONLY | O_NONBLOCK), log: try openFD(logFIFO, O_RDWR | O_NONBLOCK))
            return VMMStreams(
                console: console, standardError: Console(limits: .init(lines: 200, bytes: 64 * 1024)), log: log, child: (-1, -1, -1),
                ends: ends, consoleOnDemand: consoleOnDemand, endOfLogPath: "/proc/self/fd/\(ends.log)",
                logPipeInode: Self.pipeInode(of: ends.log))
        } catch {
            for fd in fds { Glibc.close(fd) }
            throw error
        }
    }

    /// The inode of the pipe behind `fd`; nil for anything else (a FIFO is a file's inode).
    static func pipeInode(of fd: Int32) -> UInt64? {
        var status = stat()
        guard fstat(fd, &status) == 0, (status.st_mode & S_IFMT) == S_IFIFO, linkTarget("/proc/self/fd/\(fd)")?.hasPrefix("pipe:[") == true
        else { return nil }
        return UInt64(status.st_ino)
    }

    private static func linkTarget(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 128)
        let count = buffer.withUnsafeMutableBytes { readlink(path, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count], as: UTF8.self)
    }

    /// The path of `pid`'s descriptor of the pipe `inode` (Firecracker's log, after a crash of
    /// the driver that made it); nil when it has none.
    static func descriptorPath(of pid: Int32, pipe inode: UInt64) -> String? {
        let directory = "/proc/\(pid)/fd"
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return nil }
        return entries.filter { Int($0).map { $0 > 2 } ?? false }.map { directory + "/" + $0 }.first { linkTarget($0) == "pipe:[\(inode)]" }
    }

    /// The streams of a VM whose monitor owns them: nothing is opened until ``start()``
    /// connects to the monitor's socket (at a launch, once the monitor has started the VMM).
    static func monitored(
        console: Console, log: FirecrackerLog, monitor: MonitoredStreams, logFIFO: String?, consoleOnDemand: Bool
    ) -> VMMStreams {
        VMMStreams(
            console: console, standardError: Console(limits: .init(lines: 200, bytes: 64 * 1024)), log: log, child: (-1, -1, -1),
            ends: Ends(input: -1, output: -1, error: -1, log: -1), consoleOnDemand: consoleOnDemand, endOfLogPath: nil, monitor: monitor)
    }

    /// The streams of a VM whose monitor was killed: its console and stderr went with the
    /// monitor (nothing reads the VMM's pipes any more), but Firecracker's log FIFO still works.
    static func orphaned(console: Console, log: FirecrackerLog, logFIFO: String) throws(SystemCallError) -> VMMStreams {
        let fd = try SystemCallError.check("open", logFIFO) { Glibc.open(logFIFO, O_RDWR | O_NONBLOCK | O_CLOEXEC) }
        return VMMStreams(
            console: console, standardError: Console(limits: .init(lines: 200, bytes: 64 * 1024)), log: log, child: (-1, -1, -1),
            ends: Ends(input: -1, output: -1, error: -1, log: fd), consoleOnDemand: false, endOfLogPath: "/proc/self/fd/\(fd)")
    }

    /// Sets up the NIO channels that read, all at once: the console's (unless it is read on
    /// demand) and Firecracker's log. The guest's input gets its channel on the first write
    /// (``write(_:)``); stderr is never read live (``drainStandardError()``). On failure every
    /// descriptor is closed.
    func start() async throws(SystemCallError) {
        if let monitor {
            try await startMonitored(socket: monitor.socket, quietHistory: monitor.attaching)
            return
        }
        let (input, output, logFD) = ends.withLock { ($0.input, $0.output, $0.log) }
        if input < 0 {
            // A VM whose monitor is gone: only Firecracker's log can still be read.
            await console.finish()
            await standardError.finish()
            if logFD >= 0, let channel = try? await Self.reader(fd: logFD, on: log.loop, sink: log.readerSink) {
                ends.withLock {
                    $0.readers.append(channel)
                    $0.log = -1
                }
            } else {
                await log.finish()
            }
            return
        }
        let console = self.console
        let log = self.log
        async let outputChannel: (any Channel)? =
            consoleOnDemand ? nil : Self.reader(fd: output, on: console.loop, gathersBursts: true, sink: console.readerSink)
        async let logChannel: (any Channel)? = logFD >= 0 ? Self.reader(fd: logFD, on: log.loop, sink: log.readerSink) : nil
        // Every one is awaited, so none is left open when another failed.
        var failure: (any Error)?
        do {
            if let channel = try await outputChannel {
                ends.withLock {
                    $0.readers.append(channel)
                    $0.output = -1
                }
            }
        } catch { failure = error }
        do {
            if let channel = try await logChannel {
                ends.withLock {
                    $0.readers.append(channel)
                    $0.log = -1
                }
            }
        } catch { failure = failure ?? error }
        if logFD < 0 { await log.finish() }
        if consoleOnDemand {
            await console.startReading { [weak self] in await self?.startConsoleReader() }
        }
        if let failure {
            await close()
            throw SystemCallError(call: "NIO pipe bootstrap", subject: "VMM streams: \(failure)", errno: EIO)
        }
    }

    /// Closes this process's copies of the child's ends, once, after the spawn (whatever its
    /// outcome): the console's end of file then means the VMM is gone.
    func closeChildEnds() {
        guard !childEndsClosed.exchange(true, ordering: .relaxed) else { return }
        for fd in [childInput, childOutput, childError] where fd >= 0 { Glibc.close(fd) }
    }

    /// Writes bytes to the guest's serial input, in order. The first write sets up the input's
    /// channel; what is written meanwhile waits and goes first.
    func write(_ bytes: [UInt8]) {
        let unstarted: Int32? = ends.withLock { ends in
            guard !ends.closed else { return nil }
            if let channel = ends.inputChannel {
                // Enqueued under the lock: a write never overtakes the one before it.
                Self.enqueue(bytes, on: channel)
                return nil
            }
            guard ends.input >= 0 || ends.inputStarting else { return nil }
            ends.pendingInput += bytes
            guard !ends.inputStarting else { return nil }
            ends.inputStarting = true
            defer { ends.input = -1 }  // the channel owns it now
            return ends.input
        }
        if let fd = unstarted {
            Task { await self.startInput(fd: fd) }
        }
    }

    private static func enqueue(_ bytes: [UInt8], on channel: any Channel) {
        channel.eventLoop.execute {
            channel.writeAndFlush(channel.allocator.buffer(bytes: bytes), promise: nil)
        }
    }

    /// The input's channel, on the first write: the pending input goes first.
    private func startInput(fd: Int32) async {
        let channel: any Channel
        do {
            channel = try await NIOPipeBootstrap(group: MultiThreadedEventLoopGroup.singleton).takingOwnershipOfDescriptor(output: fd).get()
        } catch {
            Glibc.close(fd)
            ends.withLock {
                $0.pendingInput = []
                $0.inputStarting = false
            }
            return
        }
        let closedMeanwhile = ends.withLock { ends in
            ends.inputStarting = false
            guard !ends.closed else { return true }
            ends.inputChannel = channel
            if !ends.pendingInput.isEmpty { Self.enqueue(ends.pendingInput, on: channel) }
            ends.pendingInput = []
            return false
        }
        if closedMeanwhile { try? await channel.close() }
    }

    /// Reads what the VMM has written to stderr so far into ``standardError``. Nothing reads it
    /// live: Firecracker (and the jailer) write there only about their command line, or when
    /// they cannot log (a panic), and then exit; the pipe keeps it until the exit is handled.
    /// Called when the VMM or the launcher has exited, and before stderr explains a failure.
    func drainStandardError() async {
        let bytes: [UInt8] = ends.withLock { ends in
            guard ends.error >= 0 else { return [] }
            var collected: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(ends.error, $0.baseAddress, $0.count) }
                if count > 0 {
                    collected += buffer[0..<count]
                } else if count < 0, errno == EINTR {
                    continue
                } else {
                    return collected  // EAGAIN: all read; 0: no writer left
                }
            }
        }
        if !bytes.isEmpty { await standardError.append(bytes) }
    }

    /// The VMM has exited: mark the end of its log and wait until everything before is read.
    func vmmExited() async {
        await drainStandardError()
        if let monitor {
            // The monitor ends the log's connection once it has drained the FIFO, and the
            // console's once it has sent all of it. A console read on demand that nobody asked
            // for yet (a guest that ended at once, under `microvm run`) takes its output from
            // the monitor's file now, before the VM's state directory goes: a reader that
            // comes later still gets it. One being read is let finish.
            if await console.awaitsFirstReader {
                await console.dropActivation()
                await console.append(Self.consoleTail(of: monitor, limit: console.limits.bytes))
                await console.finish()
            } else {
                await console.waitUntilFinished(timeout: .seconds(1))
            }
        } else if let endOfLogPath {
            let fd = Glibc.open(endOfLogPath, O_WRONLY | O_NONBLOCK | O_CLOEXEC)
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

    /// Connects to the monitor: one connection for the guest's input, one per stream read from
    /// its first retained byte (the console waits for on-demand reading).
    private func startMonitored(socket: String, quietHistory: Bool) async throws(SystemCallError) {
        let console = self.console
        let standardError = self.standardError
        let log = self.log
        let group = MultiThreadedEventLoopGroup.singleton
        async let inputChannel = Self.monitorConnection(socket: socket, request: "input 0", group: group, consume: nil)
        async let outputChannel: (any Channel)? =
            consoleOnDemand
            ? nil
            : Self.monitorConnection(socket: socket, request: "console 0", group: console.loop, gathersBursts: true) { chunks, _ in
                await console.consume(chunks)
            }
        async let errorChannel = Self.monitorConnection(socket: socket, request: "stderr 0", group: group) { chunks, _ in await standardError.consume(chunks) }
        async let logChannel = Self.monitorConnection(socket: socket, request: "log 0", group: log.loop) { chunks, history in
            await log.consume(chunks, quietBytes: quietHistory ? await history() : 0)
        }
        var failure: (any Error)?
        var opened: [any Channel] = []
        var input: (any Channel)?
        do { input = try await inputChannel } catch { failure = error }
        do { if let channel = try await outputChannel { opened.append(channel) } } catch { failure = failure ?? error }
        do { opened.append(try await errorChannel) } catch { failure = failure ?? error }
        do { opened.append(try await logChannel) } catch { failure = failure ?? error }
        ends.withLock {
            $0.inputChannel = input
            $0.readers += opened
        }
        if consoleOnDemand {
            await console.startReading { [weak self] in await self?.startConsoleReader() }
        }
        if let failure {
            await close()
            throw SystemCallError(call: "connect", subject: "the VM's monitor at \(socket): \(failure)", errno: ECONNREFUSED)
        }
    }

    /// How many bytes of a stream the monitor held from before the request, from its answer
    /// `ok START END` (END - START); 0 for an answer without END (a monitor of an earlier
    /// build) or one that does not parse.
    static func historyLength(answer: some Collection<UInt8>) -> Int {
        let words = answer.split(separator: UInt8(ascii: " ")).map { String(decoding: $0, as: UTF8.self) }
        guard words.count == 3, words[0] == "ok", let start = UInt64(words[1]), let end = UInt64(words[2]), end >= start else { return 0 }
        return Int(clamping: end - start)
    }

    /// A connection to the monitor asking for one stream (`consume` reads it) or for input.
    /// `consume` is also handed how many of the stream's first bytes the monitor held from
    /// before the request (its answer says; 0 from a monitor that does not), to await when it
    /// needs it.
    private static func monitorConnection(
        socket: String, request: String, group: any EventLoopGroup, gathersBursts: Bool = false,
        consume: (@Sendable (AsyncStream<[UInt8]>, _ history: @escaping @Sendable () async -> Int) async -> Void)?
    ) async throws -> any Channel {
        let (chunks, continuation) = AsyncStream<[UInt8]>.makeStream()
        let reads = consume != nil
        let history = ExitState<Int>()
        let channel = try await ClientBootstrap(group: group)
            .channelOption(.autoRead, value: !(reads && gathersBursts))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if reads {
                        try channel.pipeline.syncOperations.addHandler(
                            PipeReader(
                                sink: .stream(continuation), gathersBursts: gathersBursts,
                                answered: { count in Task { await history.resolve(count) } }))
                    }
                }
            }
            .connect(unixDomainSocketPath: socket)
            .get()
        try await channel.writeAndFlush(channel.allocator.buffer(string: request + "\n")).get()
        if let consume {
            // The reader answers on every path (0 when the connection ends first); the limit
            // only guards against a monitor that never answers.
            Task { await consume(chunks) { await history.wait(timeout: .seconds(10)) ?? 0 } }
        } else {
            continuation.finish()
        }
        return channel
    }

    /// Starts reading the console (on-demand reading: the first time anyone asks for it; what
    /// the guest wrote meanwhile waited in the FIFO).
    func startConsoleReader() async {
        if let monitor {
            let console = self.console
            guard !ends.withLock({ $0.closed }) else { return }
            guard let channel = try? await Self.monitorConnection(
                socket: monitor.socket, request: "console 0", group: console.loop, gathersBursts: true,
                consume: { chunks, _ in await console.consume(chunks) })
            else {
                // The monitor is gone, which it is only once the VMM has ended and its output
                // is all in its file: the output is that.
                await console.append(Self.consoleTail(of: monitor, limit: console.limits.bytes))
                await console.finish()
                return
            }
            let closedMeanwhile = ends.withLock { ends in
                if !ends.closed { ends.readers.append(channel) }
                return ends.closed
            }
            if closedMeanwhile { try? await channel.close() }
            return
        }
        let fd = ends.withLock { ends in
            defer { ends.output = -1 }
            return ends.closed ? -1 : ends.output
        }
        guard fd >= 0 else { return }
        let console = self.console
        do {
            let channel = try await Self.reader(fd: fd, on: console.loop, gathersBursts: true, sink: console.readerSink)
            let closedMeanwhile = ends.withLock { ends in
                if !ends.closed { ends.readers.append(channel) }
                return ends.closed
            }
            if closedMeanwhile { try? await channel.close() }
        } catch {
            Glibc.close(fd)
        }
    }

    /// Closes every descriptor and channel; the console and stderr end (their last lines are kept).
    func close() async {
        let taken = ends.withLock { ends in
            defer {
                ends = Ends(input: -1, output: -1, error: -1, log: -1, closed: true)
            }
            return ends
        }
        try? await taken.inputChannel?.close()
        for reader in taken.readers { try? await reader.close() }
        for fd in [taken.input, taken.output, taken.error, taken.log] where fd >= 0 { Glibc.close(fd) }
        await console.finish()
        await standardError.finish()
        await log.finish()
    }

    /// The newest `limit` bytes the guest wrote, from the monitor's console files (the rotated
    /// one, then the current one).
    static func consoleTail(of monitor: MonitoredStreams, limit: Int) -> [UInt8] {
        let file = MonitorFiles.consoleLog(in: monitor.stateDirectory).string
        var tail: [UInt8] = []
        for path in [file + ".1", file] {
            let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { Glibc.close(fd) }
            let size = Int(lseek(fd, 0, SEEK_END))
            let count = min(max(size, 0), limit)
            var bytes = [UInt8](repeating: 0, count: count)
            let read = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(size - count)) }
            tail += bytes.prefix(max(read, 0))
        }
        return Array(tail.suffix(limit))
    }

    /// Reads a pipe on `loop`, handing what arrives to `sink` there: the sink's consumer (a
    /// console or a log) runs on that same loop, so a chunk reaches it without a hop to another
    /// thread. On this host each hop woke a thread that took a CPU from the VM being launched.
    private static func reader(fd: Int32, on loop: any EventLoop, gathersBursts: Bool = false, sink: ChunkSink) async throws -> any Channel {
        try await NIOPipeBootstrap(group: loop)
            .channelOption(.autoRead, value: !gathersBursts)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(PipeReader(sink: sink, gathersBursts: gathersBursts))
                }
            }
            .takingOwnershipOfDescriptor(input: fd)
            .get()
    }

    /// Hands what arrives on a pipe, in order, to its sink, a line at a time.
    ///
    /// Firecracker writes the serial console one byte per write(2), so a reader wakes once per
    /// byte; handing each byte to the consumer's actor cost more CPU than the guest's boot
    /// could spare on a small host. Bytes are held until a line ends (what every line waiter
    /// needs), 16 KiB gather, or 2 ms pass (a prompt without a newline still shows at once).
    ///
    /// A stream from the VM's monitor starts with its answer, `ok START END`, which is not the
    /// stream's: it is checked and dropped (anything else ends the stream), and `answered`
    /// gets the number of bytes the monitor held from before (END - START; 0 from a monitor
    /// that answers `ok START` only).
    ///
    /// A console reader (`gathersBursts`) also stops waking per byte while the guest writes a
    /// burst of lines (a kernel's boot messages): once lines come faster than
    /// ``BurstDetector/lines`` in ``BurstDetector/window``, a read that ends within a line asks
    /// for the next one ``BurstDetector/gatherDelay`` later instead of at once, so the bytes
    /// written meanwhile wait in the pipe and come in one read. A line that ends is asked for
    /// at once, and sparse output (a banner, a prompt, an echo) is read byte by byte as before:
    /// nothing waits longer unless the guest is busy writing. Measured with a guest writing
    /// 20 KiB/s (BENCHMARKS.md, "A chatty guest's console"): the reading side's CPU per KiB fell
    /// from 1.8x raw Firecracker's plain reader to about 1x, and Firecracker's own writes got
    /// cheaper too.
    private final class PipeReader: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        let sink: ChunkSink
        /// The sink was told the end (once).
        private var ended = false
        private var pending: [UInt8] = []
        private var scheduledFlush: Scheduled<Void>?
        /// Until the monitor's answer line is in.
        private var awaitingAnswer: Bool
        /// Told the history's length once: at the answer, or 0 when the stream ends first.
        private var answered: (@Sendable (Int) -> Void)?
        /// Reads are asked for one at a time (the channel's autoRead is off).
        private let gathersBursts: Bool
        private var bursts = BurstDetector()
        private var scheduledRead: Scheduled<Void>?
        /// The last read's last byte was not a line's end.
        private var readEndedMidLine = false

        init(sink: ChunkSink, gathersBursts: Bool = false, answered: (@Sendable (Int) -> Void)? = nil) {
            self.sink = sink
            self.gathersBursts = gathersBursts
            self.awaitingAnswer = answered != nil
            self.answered = answered
        }

        func channelActive(context: ChannelHandlerContext) {
            if gathersBursts { context.read() }
            context.fireChannelActive()
        }

        func channelReadComplete(context: ChannelHandlerContext) {
            guard gathersBursts, scheduledRead == nil, context.channel.isActive else { return }
            if readEndedMidLine, bursts.isBursting(now: .now()) {
                let reader = NIOLoopBound(self, eventLoop: context.eventLoop)
                let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
                scheduledRead = context.eventLoop.scheduleTask(in: BurstDetector.gatherDelay) {
                    reader.value.scheduledRead = nil
                    if bound.value.channel.isActive { bound.value.read() }
                }
            } else {
                context.read()
            }
        }

        private func answer(_ historyLength: Int) {
            answered?(historyLength)
            answered = nil
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            if gathersBursts { readEndedMidLine = buffer.readableBytesView.last != UInt8(ascii: "\n") }
            // Appended straight from NIO's buffer: most reads are one byte of the console.
            var start = pending.count
            pending.append(contentsOf: buffer.readableBytesView)
            if awaitingAnswer {
                guard let newline = pending.firstIndex(of: UInt8(ascii: "\n")) else { return }
                guard pending[..<newline].starts(with: Array("ok ".utf8)) else {
                    pending = []
                    answer(0)
                    end()
                    context.close(promise: nil)
                    return
                }
                answer(VMMStreams.historyLength(answer: pending[..<newline]))
                pending.removeSubrange(...newline)
                awaitingAnswer = false
                guard !pending.isEmpty else { return }
                start = 0
            }
            if pending[start...].contains(UInt8(ascii: "\n")) || pending.count >= 16 * 1024 {
                if gathersBursts { bursts.lineEnded(at: .now()) }
                flush()
            } else if scheduledFlush == nil {
                let reader = NIOLoopBound(self, eventLoop: context.eventLoop)
                scheduledFlush = context.eventLoop.scheduleTask(in: .milliseconds(2)) { reader.value.flush() }
            }
        }

        private func flush() {
            scheduledFlush?.cancel()
            scheduledFlush = nil
            guard !pending.isEmpty, !awaitingAnswer else { return }
            sink.deliver(pending)
            pending = []
        }

        func channelInactive(context: ChannelHandlerContext) {
            scheduledRead?.cancel()
            scheduledRead = nil
            answer(0)
            flush()
            end()
        }

        private func end() {
            guard !ended else { return }
            ended = true
            sink.finish()
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            scheduledRead?.cancel()
            scheduledRead = nil
            answer(0)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if case .inputClosed = event as? ChannelEvent {
                answer(0)
                flush()
                end()
                context.close(promise: nil)
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            answer(0)
            flush()
            end()
            context.close(promise: nil)
        }
    }
}

/// Where a pipe reader hands what it read, in order, and the end: straight to a consumer that
/// runs on the reader's own event loop, or into a stream that a task consumes (a monitor's
/// socket, whose history length the consumer waits for).
struct ChunkSink: Sendable {
    let deliver: @Sendable ([UInt8]) -> Void
    let finish: @Sendable () -> Void

    static func stream(_ continuation: AsyncStream<[UInt8]>.Continuation) -> ChunkSink {
        ChunkSink(deliver: { continuation.yield($0) }, finish: { continuation.finish() })
    }
}

/// Whether a console is in a burst of lines: the last ``lines`` reads that ended a line all
/// fell within ``window``, the newest of them within ``window`` of now.
struct BurstDetector {
    static let lines = 8
    static let window = TimeAmount.milliseconds(40)
    /// How long a read within a line waits for more bytes during a burst.
    static let gatherDelay = TimeAmount.milliseconds(1)

    private var lineEnds: [NIODeadline] = []
    private var next = 0

    mutating func lineEnded(at now: NIODeadline) {
        if lineEnds.count < Self.lines {
            lineEnds.append(now)
        } else {
            lineEnds[next] = now
            next = (next + 1) % Self.lines
        }
    }

    func isBursting(now: NIODeadline) -> Bool {
        guard lineEnds.count == Self.lines else { return false }
        let oldest = lineEnds[next]
        let newest = lineEnds[(next + Self.lines - 1) % Self.lines]
        return newest - oldest < Self.window && now - newest < Self.window
    }
}
