/// The guest's serial console as the host sees it: Firecracker's standard output.
///
/// Bytes are split into lines as they arrive and kept (up to `capacity` lines, oldest
/// dropped) so that callers can wait for a line that may already have been printed, which
/// is how readiness and test assertions avoid races with a fast guest.
public actor Console {
    /// One console line and its position in the whole output (0 = first line ever printed).
    public struct Line: Sendable, Hashable {
        public let index: Int
        public let text: String
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

    public let capacity: Int
    private var lines: [Line] = []
    private var nextIndex = 0
    private var partial: [UInt8] = []
    private var finished = false
    private var waiters: [Int: Waiter] = [:]
    private var subscribers: [Int: AsyncStream<Line>.Continuation] = [:]
    private var nextToken = 0

    private struct Waiter {
        let after: Int
        let predicate: @Sendable (String) -> Bool
        let continuation: CheckedContinuation<Line?, Never>
    }

    public init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    /// Feeds raw console bytes. A carriage return before a newline is dropped.
    public func append(_ bytes: some Sequence<UInt8>) {
        for byte in bytes {
            if byte == UInt8(ascii: "\n") {
                if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
                emit(String(decoding: partial, as: UTF8.self))
                partial.removeAll(keepingCapacity: true)
            } else {
                partial.append(byte)
            }
        }
    }

    /// Marks the end of output: a trailing partial line is emitted and every waiter released.
    public func finish() {
        guard !finished else { return }
        if !partial.isEmpty {
            emit(String(decoding: partial, as: UTF8.self))
            partial.removeAll()
        }
        finished = true
        for waiter in waiters.values { waiter.continuation.resume(returning: nil) }
        waiters.removeAll()
        for subscriber in subscribers.values { subscriber.finish() }
        subscribers.removeAll()
    }

    /// The lines still held, oldest first.
    public var recentLines: [Line] { lines }

    /// Whether the output has ended.
    public var isFinished: Bool { finished }

    /// Lines printed from now on (and, with `replay`, those still held), until the output ends.
    public func subscribe(replay: Bool = false) -> AsyncStream<Line> {
        let (stream, continuation) = AsyncStream<Line>.makeStream(bufferingPolicy: .bufferingNewest(capacity))
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
        if let found = lines.first(where: { $0.index >= after && predicate($0.text) }) { return found }
        if finished { throw .ended(description: description, lastLines: tail()) }
        let token = nextToken
        nextToken += 1
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.expire(token)
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

    /// Returns once the output has ended (its last writer closed it), or when cancelled.
    public func untilFinished() async {
        while !finished && !Task.isCancelled {
            _ = try? await waitForLine(timeout: .seconds(3600), "(end of output)") { _ in false }
        }
    }

    /// Waits for a line containing `text`.
    public func waitForLine(
        containing text: String, after: Int = 0, timeout: Duration
    ) async throws(WaitError) -> Line {
        try await waitForLine(after: after, timeout: timeout, "containing '\(text)'") { $0.contains(text) }
    }

    private func emit(_ text: String) {
        let line = Line(index: nextIndex, text: text)
        nextIndex += 1
        lines.append(line)
        if lines.count > capacity { lines.removeFirst(lines.count - capacity) }
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
