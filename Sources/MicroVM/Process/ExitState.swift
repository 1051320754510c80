/// A value that arrives once (a process's exit), awaited by any number of waiters that may give
/// up (timeout or cancellation) without waiting for the value itself.
actor ExitState<Value: Sendable> {
    private var value: Value?
    private var waiters: [Int: CheckedContinuation<Value?, Never>] = [:]
    private var nextToken = 0

    func resolve(_ value: Value) {
        guard self.value == nil else { return }
        self.value = value
        for waiter in waiters.values { waiter.resume(returning: value) }
        waiters.removeAll()
    }

    /// The value if it is already there.
    var current: Value? { value }

    /// Waits at most `timeout` (nil: without limit); nil when it did not arrive in time or the
    /// waiting task was cancelled.
    func wait(timeout: Duration?) async -> Value? {
        if let value { return value }
        if timeout == .zero { return nil }
        let token = nextToken
        nextToken += 1
        let timer = timeout.map { timeout in
            WaitTimer(after: timeout) { [weak self] in
                Task { await self?.give(up: token) }
            }
        }
        defer { timer?.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                if let value {
                    continuation.resume(returning: value)
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
