import DequeModule
import FirecrackerAPI
public import Logging
import NIOCore

/// Firecracker's own log, read from the FIFO the driver gives it (never its stdout, which is the
/// guest's console), re-emitted through swift-log with the VM id as metadata and Firecracker's
/// level mapped, and kept (the newest lines) to explain how the VMM ended.
///
/// The log runs on one of the driver's batch event loops, the one that reads the log's pipe
/// or FIFO: each line is taken by the reader itself, with no hop to another thread, and never
/// at the cost of a VM's CPU (readiness waits for these lines; see ``BatchEventLoops``).
public actor FirecrackerLog {
    /// One parsed line: `<timestamp> [<instance>:<thread>:<LEVEL>] <message>`.
    public struct Line: Sendable, Hashable {
        public let timestamp: String
        public let thread: String
        public let level: Logger.Level
        public let message: String
        /// The line as Firecracker wrote it.
        public let raw: String
    }

    /// The log's executor, on which its reader runs.
    nonisolated let loop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
    private var lines: Deque<Line> = []
    private let capacity: Int
    private var partial: [UInt8] = []
    private let logger: Logger
    private let forwardLevel: Logger.Level
    private let ended = ExitState<Bool>()
    /// Set as the log ends, before anything is awaited: a waiter checks it without suspending.
    private var isFinished = false
    /// Messages recently re-emitted: when, and how many repeats were held back since.
    private var repeats: [String: (emitted: ContinuousClock.Instant, suppressed: Int)] = [:]
    private var messageWaiters: [(token: Int, needle: String, continuation: CheckedContinuation<Bool, Never>)] = []
    private var nextWaiter = 0
    /// How many of the bytes still to come were logged before this driver attached.
    private var quietBytes = 0

    /// Lines at `forwardLevel` or above are re-emitted to `logger` (with source "firecracker").
    public init(logger: Logger, forwardLevel: Logger.Level = .info, capacity: Int = 500) {
        self.logger = logger
        self.forwardLevel = forwardLevel
        self.capacity = max(capacity, 16)
        self.loop = BatchEventLoops.group.next()
    }

    /// Where a reader on ``loop`` hands the log: taken at once, on the reader's thread.
    nonisolated var readerSink: ChunkSink {
        ChunkSink(
            deliver: { [self] bytes in self.assumeIsolated { $0.append(bytes) } },
            finish: { [self] in Task { await self.finish() } })
    }

    public func append(_ bytes: some Collection<UInt8>) {
        for byte in bytes {
            let replayed = quietBytes > 0
            if replayed { quietBytes -= 1 }
            if byte == UInt8(ascii: "\n") {
                take(String(decoding: partial, as: UTF8.self), forward: !replayed)
                partial.removeAll(keepingCapacity: true)
            } else if partial.count < 64 * 1024 {
                partial.append(byte)
            }
        }
    }

    /// Appends every chunk of `stream` (on this actor), then marks the end. The lines of its
    /// first `quietBytes` bytes (what a VM's monitor kept from before this driver attached,
    /// which an earlier driver re-emitted already) are kept but not re-emitted.
    func consume(_ stream: AsyncStream<[UInt8]>, quietBytes: Int = 0) async {
        self.quietBytes = quietBytes
        for await chunk in stream { append(chunk) }
        await finish()
    }

    /// The writer is gone (the VMM exited and the pipe drained).
    public func finish() async {
        isFinished = true
        if !partial.isEmpty {
            take(String(decoding: partial, as: UTF8.self))
            partial.removeAll()
        }
        await ended.resolve(true)
        releaseWaiters()
    }

    /// Waits until the log has ended, at most `timeout`.
    func waitUntilFinished(timeout: Duration) async {
        _ = await ended.wait(timeout: timeout)
    }

    /// Returns true once a line whose message contains `needle` has been logged (now or
    /// before, among the lines kept); false when the log ends, `timeout` passes or the waiting
    /// task is cancelled first.
    func waitForMessage(containing needle: String, timeout: Duration) async -> Bool {
        // No suspension between this check and the waiter's registration below: a line taken
        // in between (the actor runs `append` meanwhile) would be missed, and the wait would
        // last its whole timeout. Awaiting `ended` here did that to about one launch in 100.
        if lines.contains(where: { $0.message.containsBytes(needle) }) { return true }
        if isFinished || Task.isCancelled { return false }
        let token = nextWaiter
        nextWaiter += 1
        let timer = WaitTimer(after: timeout) { [weak self] in
            Task { await self?.release(token) }
        }
        defer { timer.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if lines.contains(where: { $0.message.containsBytes(needle) }) {
                    continuation.resume(returning: true)
                } else if isFinished || Task.isCancelled {
                    continuation.resume(returning: false)
                } else {
                    messageWaiters.append((token, needle, continuation))
                }
            }
        } onCancel: {
            Task { await self.release(token) }
        }
    }

    /// Whether a kept line's message contains `needle`.
    func contains(_ needle: String) -> Bool {
        lines.contains { $0.message.containsBytes(needle) }
    }

    private func release(_ token: Int) {
        guard let index = messageWaiters.firstIndex(where: { $0.token == token }) else { return }
        messageWaiters.remove(at: index).continuation.resume(returning: false)
    }

    private func releaseWaiters() {
        let released = messageWaiters
        messageWaiters.removeAll()
        for waiter in released { waiter.continuation.resume(returning: false) }
    }

    /// The newest lines, oldest first.
    public var recentLines: [Line] { Array(lines) }

    /// The line the driver writes behind Firecracker's last one once the VMM has exited.
    static let endOfLog = "\u{1}microvm: end of Firecracker's log\u{1}"

    private func take(_ text: String, forward forwarding: Bool = true) {
        guard !text.isEmpty else { return }
        if text == Self.endOfLog {
            Task { await self.finish() }
            return
        }
        let line = Self.parse(text)
        lines.append(line)
        if !messageWaiters.isEmpty {
            let matched = messageWaiters.filter { line.message.containsBytes($0.needle) }
            messageWaiters.removeAll { line.message.containsBytes($0.needle) }
            for waiter in matched { waiter.continuation.resume(returning: true) }
        }
        if lines.count > capacity { lines.removeFirst() }
        if forwarding, line.level >= forwardLevel { forward(line) }
    }

    /// Re-emits a line, but a message that repeats within a second is counted, not repeated:
    /// Firecracker logs every failed console write (a console nobody reads any more), which
    /// would otherwise flood the host's log. The count goes with the message's next emission.
    private func forward(_ line: Line) {
        // Before any work: the lines arrive while Firecracker starts, on the same CPUs.
        guard logger.logLevel <= line.level else { return }
        let now = ContinuousClock.now
        if let last = repeats[line.message], now - last.emitted < .seconds(1) {
            repeats[line.message]?.suppressed += 1
            return
        }
        var metadata: Logger.Metadata = ["firecracker_thread": "\(line.thread)"]
        if let suppressed = repeats[line.message]?.suppressed, suppressed > 0 { metadata["repeated"] = "\(suppressed)" }
        if repeats.count >= 64 { repeats.removeAll() }
        repeats[line.message] = (now, 0)
        logger.log(level: line.level, "\(line.message)", metadata: metadata, source: "firecracker")
    }

    /// Parses a line written with `--show-level`; anything else is kept whole at level info.
    /// Over the line's bytes: every API request logs two lines, and a launch's first lines come
    /// while Firecracker starts on the same CPUs.
    static func parse(_ text: String) -> Line {
        let bytes = text.utf8
        guard let open = bytes.firstIndex(of: UInt8(ascii: "[")), let close = bytes[open...].firstIndex(of: UInt8(ascii: "]")) else {
            return Line(timestamp: "", thread: "", level: .info, message: text, raw: text)
        }
        // `<instance>:<thread>:<LEVEL>`; ids and thread names hold no colon.
        let fields = bytes[bytes.index(after: open)..<close].split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
        var level = Logger.Level.info
        if fields.count >= 3 {
            let name = fields[2]
            if name.elementsEqual("ERROR".utf8) {
                level = .error
            } else if name.elementsEqual("WARN".utf8) {
                level = .warning
            } else if name.elementsEqual("DEBUG".utf8) {
                level = .debug
            } else if name.elementsEqual("TRACE".utf8) {
                level = .trace
            }
        }
        return Line(
            timestamp: Self.trimmingSpaces(bytes[..<open]), thread: fields.count >= 2 ? String(decoding: fields[1], as: UTF8.self) : "",
            level: level, message: Self.trimmingSpaces(bytes[bytes.index(after: close)...]), raw: text)
    }

    private static func trimmingSpaces(_ bytes: Substring.UTF8View) -> String {
        var slice = bytes
        while slice.first == UInt8(ascii: " ") { slice.removeFirst() }
        while slice.last == UInt8(ascii: " ") { slice.removeLast() }
        return String(Substring(slice))
    }
}

extension LogLevel {
    /// Firecracker's level as swift-log's.
    var swiftLogLevel: Logger.Level {
        switch self {
        case .off: .critical
        case .error: .error
        case .warning: .warning
        case .info: .info
        case .debug: .debug
        case .trace: .trace
        }
    }
}
