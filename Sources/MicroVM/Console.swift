import DequeModule
import NIOCore
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The guest's serial console as the host sees it: Firecracker's standard output, which carries
/// only what the guest wrote (the driver always sends Firecracker's own log elsewhere).
///
/// Bytes are split into lines as they arrive and the newest are kept, bounded both in lines and
/// in bytes, so callers can wait for a line that may already have been printed (how readiness
/// and tests avoid racing a fast guest) and a chatty guest cannot grow the driver without limit.
/// Optionally every byte also goes, unchanged, to a size-capped rotating file.
///
/// The console runs on one of the driver's batch event loops, the one that reads the VMM's
/// output: what the guest writes is appended by the reader itself, with no hop to another
/// thread (see ``VMMStreams``).
public actor Console {
    /// One console line and its position in the whole output (0 = first line ever printed).
    public struct Line: Sendable, Hashable {
        public let index: Int
        public let text: String
    }

    /// Bounds of the in-memory ring.
    public struct Limits: Sendable, Hashable, Codable {
        public var lines: Int
        public var bytes: Int

        public init(lines: Int = 10_000, bytes: Int = 1 << 20) {
            self.lines = max(lines, 1)
            self.bytes = max(bytes, 1)
        }
    }

    public enum WaitError: Error, Sendable, Hashable, CustomStringConvertible {
        /// No matching line within the timeout; carries the last lines seen for the message.
        case timedOut(description: String, lastLines: [String])
        /// The output ended (the VMM exited) before a matching line.
        case ended(description: String, lastLines: [String])
        case cancelled

        public var description: String {
            switch self {
            case .timedOut(let what, let last):
                "no console line \(what) in time; last lines: \(last)"
            case .ended(let what, let last):
                "the console ended (the VMM exited) before a line \(what); last lines: \(last)"
            case .cancelled: "cancelled while waiting for a console line"
            }
        }
    }

    public let limits: Limits
    /// The console's executor, on which its reader runs.
    nonisolated let loop: any EventLoop
    public nonisolated var unownedExecutor: UnownedSerialExecutor { loop.executor.asUnownedSerialExecutor() }
    private var lines: Deque<Line> = []
    private var heldBytes = 0
    private var nextIndex = 0
    private var partial: [UInt8] = []
    private var finished = false
    private var waiters: [Int: Waiter] = [:]
    private var subscribers: [Int: AsyncStream<Line>.Continuation] = [:]
    private var byteSubscribers: [Int: AsyncStream<[UInt8]>.Continuation] = [:]
    /// The newest raw bytes (at most `limits.bytes`), for byte subscribers that replay.
    private var rawTail: Deque<UInt8> = []
    private var nextToken = 0
    private var file: RotatingFile?
    /// Starts reading the VMM's output the first time anyone asks (on-demand reading).
    private var activation: (@Sendable () async -> Void)?
    private let ended = ExitState<Bool>()

    private struct Waiter {
        let after: Int
        let predicate: @Sendable (String) -> Bool
        let continuation: CheckedContinuation<Line?, Never>
    }

    public init(limits: Limits = Limits(), file: RotatingFile.Configuration? = nil) {
        self.limits = limits
        self.file = file.map(RotatingFile.init)
        self.loop = BatchEventLoops.group.next()
    }

    /// Where a reader on ``loop`` hands the output: appended at once, on the reader's thread.
    nonisolated var readerSink: ChunkSink {
        ChunkSink(
            deliver: { [self] bytes in self.assumeIsolated { $0.append(bytes) } },
            finish: { [self] in self.assumeIsolated { $0.finish() } })
    }

    /// Feeds raw console bytes. A carriage return before a newline is dropped from the line (the
    /// file keeps it).
    public func append(_ bytes: some Collection<UInt8>) {
        file?.write(bytes)
        if !bytes.isEmpty {
            rawTail.append(contentsOf: bytes)
            if rawTail.count > limits.bytes { rawTail.removeFirst(rawTail.count - limits.bytes) }
            let chunk = Array(bytes)
            for subscriber in byteSubscribers.values { subscriber.yield(chunk) }
        }
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
                emit(String(decoding: partial, as: UTF8.self))
                partial.removeAll(keepingCapacity: true)
            } else {
                partial.append(byte)
                // A line without end must not grow without bound either.
                if partial.count >= limits.bytes {
                    emit(String(decoding: partial, as: UTF8.self))
                    partial.removeAll(keepingCapacity: true)
                }
            }
        }
    }

    /// Appends every chunk of `stream`, then marks the end: the reader of the VMM's output runs
    /// here, on the console's own executor.
    func consume(_ stream: AsyncStream<[UInt8]>) async {
        for await chunk in stream { append(chunk) }
        finish()
    }

    /// Marks the end of output: a trailing partial line is emitted and every waiter released.
    public func finish() {
        guard !finished else { return }
        if !partial.isEmpty {
            emit(String(decoding: partial, as: UTF8.self))
            partial.removeAll()
        }
        finished = true
        file?.close()
        file = nil
        for waiter in waiters.values { waiter.continuation.resume(returning: nil) }
        waiters.removeAll()
        for subscriber in subscribers.values { subscriber.finish() }
        subscribers.removeAll()
        for subscriber in byteSubscribers.values { subscriber.finish() }
        byteSubscribers.removeAll()
        Task { [ended] in await ended.resolve(true) }
    }

    /// Waits, at most `timeout`, until the output has ended.
    func waitUntilFinished(timeout: Duration) async {
        if finished { return }
        _ = await ended.wait(timeout: timeout)
    }

    /// Sets what starts the reading of the VMM's output on first use (see
    /// ``DriverConfiguration/ConsoleReading/onDemand``).
    func startReading(on first: @escaping @Sendable () async -> Void) {
        activation = first
    }

    /// Whether the console is read on demand and nobody has asked for it yet.
    var awaitsFirstReader: Bool { activation != nil }

    /// The reading on demand will not be needed (the output was taken another way).
    func dropActivation() {
        activation = nil
    }

    private func activateIfNeeded() async {
        guard let activation else { return }
        self.activation = nil
        await activation()
    }

    /// The output exactly as the guest wrote it, in chunks as they arrive (carriage returns and
    /// unfinished lines such as prompts included); with `replay`, first the newest bytes held.
    public func subscribeBytes(replay: Bool = false) async -> AsyncStream<[UInt8]> {
        await activateIfNeeded()
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream(bufferingPolicy: .bufferingNewest(4096))
        if replay, !rawTail.isEmpty { continuation.yield(Array(rawTail)) }
        if finished {
            continuation.finish()
            return stream
        }
        let token = nextToken
        nextToken += 1
        byteSubscribers[token] = continuation
        continuation.onTermination = { [weak self] _ in
            Task { await self?.unsubscribeBytes(token) }
        }
        return stream
    }

    private func unsubscribeBytes(_ token: Int) {
        byteSubscribers[token] = nil
    }

    /// The lines still held, oldest first.
    public var recentLines: [Line] {
        get async {
            await activateIfNeeded()
            return Array(lines)
        }
    }

    /// Whether the output has ended.
    public var isFinished: Bool { finished }

    /// Lines printed from now on (and, with `replay`, those still held), until the output ends.
    public func subscribe(replay: Bool = false) async -> AsyncStream<Line> {
        await activateIfNeeded()
        let (stream, continuation) = AsyncStream<Line>.makeStream(bufferingPolicy: .bufferingNewest(limits.lines))
        if replay { for line in lines { continuation.yield(line) } }
        if finished {
            continuation.finish()
            return stream
        }
        let token = nextToken
        nextToken += 1
        subscribers[token] = continuation
        continuation.onTermination = { [weak self] _ in
            Task { await self?.unsubscribe(token) }
        }
        return stream
    }

    /// Waits for the first line with index >= `after` that satisfies `predicate`.
    public func waitForLine(
        after: Int = 0, timeout: Duration, _ description: String = "matching",
        where predicate: @escaping @Sendable (String) -> Bool
    ) async throws(WaitError) -> Line {
        await activateIfNeeded()
        if let found = lines.first(where: { $0.index >= after && predicate($0.text) }) { return found }
        if finished { throw .ended(description: description, lastLines: tail()) }
        let token = nextToken
        nextToken += 1
        let timer = WaitTimer(after: timeout) { [weak self] in
            Task { await self?.expire(token) }
        }
        defer { timer.cancel() }
        let line = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                waiters[token] = Waiter(after: after, predicate: predicate, continuation: continuation)
            }
        } onCancel: {
            Task { await self.expire(token) }
        }
        if let line { return line }
        if Task.isCancelled { throw .cancelled }
        throw finished ? .ended(description: description, lastLines: tail()) :
            .timedOut(description: description, lastLines: tail())
    }

    /// Waits for a line containing `text` (its bytes, exactly as the guest wrote them).
    public func waitForLine(
        containing text: String, after: Int = 0, timeout: Duration
    ) async throws(WaitError) -> Line {
        try await waitForLine(after: after, timeout: timeout, "containing '\(text)'") { $0.containsBytes(text) }
    }

    /// The index the next line will have: wait for lines `after:` this to ignore older ones.
    public var nextLineIndex: Int {
        get async {
            await activateIfNeeded()
            return nextIndex
        }
    }

    private func emit(_ text: String) {
        let line = Line(index: nextIndex, text: text)
        nextIndex += 1
        lines.append(line)
        heldBytes += text.utf8.count
        while lines.count > limits.lines || (heldBytes > limits.bytes && lines.count > 1) {
            heldBytes -= lines.removeFirst().text.utf8.count
        }
        for (token, waiter) in waiters where line.index >= waiter.after && waiter.predicate(text) {
            waiters[token] = nil
            waiter.continuation.resume(returning: line)
        }
        for subscriber in subscribers.values { subscriber.yield(line) }
    }

    private func expire(_ token: Int) {
        waiters.removeValue(forKey: token)?.continuation.resume(returning: nil)
    }

    private func unsubscribe(_ token: Int) {
        subscribers[token] = nil
    }

    private func tail() -> [String] {
        lines.suffix(5).map(\.text)
    }
}

/// A log file capped in size: when a write would pass `maximumBytes`, `path` becomes `path.1`
/// (`path.1` becomes `path.2`, ... up to `keep` old files) and a new `path` is started.
public struct RotatingFile: Sendable {
    public struct Configuration: Sendable, Hashable, Codable {
        public var path: FilePath
        public var maximumBytes: Int
        public var keep: Int

        public init(path: FilePath, maximumBytes: Int = 8 << 20, keep: Int = 2) {
            self.path = path
            self.maximumBytes = max(maximumBytes, 4096)
            self.keep = max(keep, 0)
        }
    }

    public let configuration: Configuration
    private var fd: Int32
    private var size: Int

    public init(_ configuration: Configuration) {
        self.configuration = configuration
        fd = open(configuration.path.string, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        var status = stat()
        size = fd >= 0 && fstat(fd, &status) == 0 ? Int(status.st_size) : 0
    }

    mutating func write(_ bytes: some Collection<UInt8>) {
        guard fd >= 0, !bytes.isEmpty else { return }
        if size + bytes.count > configuration.maximumBytes, size > 0 { rotate() }
        let written = Array(bytes).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        if written > 0 { size += written }
    }

    mutating func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    private mutating func rotate() {
        let path = configuration.path.string
        Glibc.close(fd)
        if configuration.keep == 0 {
            unlink(path)
        } else {
            for generation in stride(from: configuration.keep - 1, through: 1, by: -1) {
                rename("\(path).\(generation)", "\(path).\(generation + 1)")
            }
            rename(path, "\(path).1")
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0o640)
        size = 0
    }
}

extension Console {
    /// The console a spec asks for: its ring's bounds and its optional rotating file.
    init(for spec: VMSpec) {
        let settings = spec.console
        self.init(
            limits: Limits(lines: settings?.ringLines ?? 10_000, bytes: settings?.ringBytes ?? 1 << 20),
            file: settings?.file.map {
                RotatingFile.Configuration(path: FilePath($0), maximumBytes: settings?.maxFileBytes ?? 8 << 20, keep: settings?.keepFiles ?? 2)
            })
    }
}
