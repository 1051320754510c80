import DequeModule
public import Logging
public import Metrics
import MicroVMHost

/// VMs restored ahead of time from one snapshot, kept paused, and handed out resumed.
///
/// A restore costs a VMM's start, the snapshot's load and, jailed, a jail: tens of
/// milliseconds. Resuming a paused VM is one API call. The pool pays the restores before they
/// are asked for, then refills in the background, one restore at a time so that a busy host's
/// CPUs stay with the guests already handed out. A VM handed out is the caller's, as any VM
/// from the provider is: the pool forgets it.
///
/// Every VM of a pool is a clone of the same guest: one snapshot, the same network overrides.
/// Clones run side by side only where their resources do not collide: without a network, or in
/// network namespaces (jailed VMs with a `network` section), not on one fixed TAP.
///
/// Its ``statistics`` also go to swift-metrics (the bootstrapped backend, or `metricsFactory`),
/// with the dimension `pool` = the id prefix: the gauge `microvm_pool_ready`, the counters
/// `microvm_pool_handed_out`, `microvm_pool_cold_restores`, `microvm_pool_discarded` and
/// `microvm_pool_failed_restores`, and the timer `microvm_pool_acquire` (each acquire's duration).
///
/// ```swift
/// let pool = try WarmPool(snapshot: snapshot, size: 4, provider: FirecrackerProvider(configuration: driver))
/// try await pool.start()              // four restores, paused
/// let vm = try await pool.acquire()   // one resumed, a refill started
/// ```
public actor WarmPool<Provider: MicroVMProvider> {
    /// What the pool has done, for an operator's metrics.
    public struct Statistics: Sendable, Hashable {
        /// Paused VMs waiting to be handed out.
        public var ready = 0
        /// VMs handed out from the pool, warm.
        public var handedOut = 0
        /// VMs restored for a caller while the pool was empty (the restore's own time).
        public var coldRestores = 0
        /// Pooled VMs found ended, or that would not resume, and removed.
        public var discarded = 0
        /// Restores for the pool that failed; ``WarmPool/lastError`` holds the latest.
        public var failedRestores = 0
    }

    public nonisolated let snapshot: Snapshot
    /// How many paused VMs the pool keeps.
    public nonisolated let size: Int
    /// The pool's VMs are named `<prefix>-<token>-<n>`: the random token keeps two pools (or
    /// a pool and the leftovers of a crashed process) of the same prefix apart.
    public nonisolated let idPrefix: String
    public nonisolated let networkOverrides: [String: String]
    private let provider: Provider
    private let logger: Logger
    private let token = String(UInt32.random(in: 0...UInt32.max), radix: 16)

    private var ready = Deque<Provider.VM>() {
        didSet { if statistics.ready != ready.count { statistics.ready = ready.count } }
    }
    /// Restores under way for the pool (two `start()` calls at once do not overfill it).
    private var restoring = 0
    private var counter = 0
    private var closed = false
    private var filler: Task<Void, Never>?
    private var wake: AsyncStream<Void>.Continuation?
    public private(set) var statistics = Statistics() {
        didSet { report(from: oldValue) }
    }
    private let metrics: PoolMetrics
    /// The latest failed restore for the pool; cleared by the next one that succeeds.
    public private(set) var lastError: MicroVMError?

    /// Checks the settings; restores nothing until ``start()``.
    public init(
        snapshot: Snapshot, size: Int, idPrefix: String = "pool", networkOverrides: [String: String] = [:], provider: Provider,
        logger: Logger = Logger(label: "microvm"), metricsFactory: (any MetricsFactory)? = nil
    ) throws(MicroVMError) {
        var problems: [SpecProblem] = []
        if size < 1 {
            problems.append(SpecProblem(field: "size", message: "\(size) is not a pool size", hint: "keep at least 1 VM ready"))
        }
        // The longest id the pool makes must be a valid VM id (the jailer's 64 characters).
        do {
            _ = try VMIdentifier("\(idPrefix)-ffffffff-\(Int32.max)")
        } catch {
            problems.append(
                SpecProblem(
                    field: "idPrefix", message: "\"\(idPrefix)\" does not make valid VM ids: \(error.summary)",
                    hint: "use at most 42 characters of A-Z, a-z, 0-9 and -"))
        }
        if !problems.isEmpty { throw .invalidSpec(id: nil, problems: problems) }
        self.snapshot = snapshot
        self.size = size
        self.idPrefix = idPrefix
        self.networkOverrides = networkOverrides
        self.provider = provider
        self.metrics = PoolMetrics(pool: idPrefix, factory: metricsFactory)
        var logger = logger
        logger[metadataKey: "pool"] = "\(idPrefix)"
        self.logger = logger
    }

    deinit {
        // A pool dropped without `shutdown()` still leaves no VMM behind.
        filler?.cancel()
        wake?.finish()
        let idle = Array(ready)
        if !idle.isEmpty {
            Task { for vm in idle { await vm.kill() } }
        }
    }

    /// Fills the pool in the caller's task, then keeps it full in the background. A failed
    /// restore is thrown (the snapshot is unusable, the host refuses): what was restored before
    /// it stays in the pool, and ``shutdown()`` removes it. Calling it again once started does
    /// nothing.
    public func start() async throws(MicroVMError) {
        if closed { throw .poolClosed(pool: idPrefix) }
        if filler != nil { return }
        while ready.count + restoring < size {
            let vm = try await restoreForPool()
            if closed {
                await vm.kill()
                throw .poolClosed(pool: idPrefix)
            }
            ready.append(vm)
        }
        if filler == nil, !closed { startFiller() }
    }

    /// A running VM: a paused one of the pool, resumed (an API call), or, when the pool is
    /// empty, one restored now. A pooled VM that has ended meanwhile (its VMM was killed) or
    /// does not resume is removed and the next one tried.
    public func acquire() async throws(MicroVMError) -> Provider.VM {
        if closed { throw .poolClosed(pool: idPrefix) }
        let start = ContinuousClock.now
        defer { metrics.acquire.recordNanoseconds((ContinuousClock.now - start).nanoseconds) }
        // The refill is woken once the VM is handed out: a restore started meanwhile would
        // take the CPUs from this resume on a small host (0.3-0.9 ms of a 2 ms acquire here).
        defer { wake?.yield() }
        while let vm = ready.popFirst() {
            do {
                try await vm.resume()
                statistics.handedOut += 1
                return vm
            } catch {
                statistics.discarded += 1
                logger.warning("discarding a pooled VM that does not resume", metadata: ["vm": "\(vm.id)", "error": "\(error)"])
                await vm.kill()
            }
        }
        statistics.coldRestores += 1
        return try await provider.restore(snapshot, id: nextID(), resume: true, networkOverrides: networkOverrides)
    }

    /// Stops refilling (a restore under way is cancelled and undone) and kills the paused VMs.
    /// VMs already handed out are not touched. Later calls of ``acquire()`` throw.
    public func shutdown() async {
        closed = true
        wake?.finish()
        filler?.cancel()
        await filler?.value
        filler = nil
        while let vm = ready.popFirst() { await vm.kill() }
    }

    /// Passes a change of ``statistics`` on to swift-metrics.
    private func report(from old: Statistics) {
        let new = statistics
        if new.ready != old.ready { metrics.ready.record(new.ready) }
        for (counter, delta) in [
            (metrics.handedOut, new.handedOut - old.handedOut), (metrics.coldRestores, new.coldRestores - old.coldRestores),
            (metrics.discarded, new.discarded - old.discarded), (metrics.failedRestores, new.failedRestores - old.failedRestores),
        ] where delta > 0 {
            counter.increment(by: delta)
        }
    }

    private func nextID() -> String {
        counter += 1
        return "\(idPrefix)-\(token)-\(counter)"
    }

    private func restoreForPool() async throws(MicroVMError) -> Provider.VM {
        restoring += 1
        defer { restoring -= 1 }
        return try await provider.restore(snapshot, id: nextID(), resume: false, networkOverrides: networkOverrides)
    }

    private func startFiller() {
        let (signals, wake) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        self.wake = wake
        // Weak: a pool dropped without `shutdown()` ends its filler (and its VMs, in deinit).
        filler = Task { [weak self] in
            for await _ in signals {
                guard let self else { return }
                await self.refill()
            }
        }
    }

    /// Restores until the pool is full again. A failure waits before the next try (100 ms,
    /// doubling to 5 s), so that a broken snapshot or a full host is not retried in a loop.
    private func refill() async {
        var delay = Duration.milliseconds(100)
        while !closed, ready.count + restoring < size, !Task.isCancelled {
            do throws(MicroVMError) {
                let vm = try await restoreForPool()
                if closed {
                    await vm.kill()
                    return
                }
                ready.append(vm)
                lastError = nil
                delay = .milliseconds(100)
            } catch {
                if error.isCancellation || closed { return }
                statistics.failedRestores += 1
                lastError = error
                logger.error("restore for the pool failed; retrying in \(delay)", metadata: ["error": "\(error)"])
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    return
                }
                delay = min(delay * 2, .seconds(5))
            }
        }
    }
}

/// The pool's swift-metrics handles.
private struct PoolMetrics: Sendable {
    let ready: Gauge
    let handedOut: Counter
    let coldRestores: Counter
    let discarded: Counter
    let failedRestores: Counter
    let acquire: Metrics.Timer

    init(pool: String, factory: (any MetricsFactory)?) {
        let (dimensions, factory) = ([("pool", pool)], factory ?? MetricsSystem.factory)
        ready = Gauge(label: "microvm_pool_ready", dimensions: dimensions, factory: factory)
        handedOut = Counter(label: "microvm_pool_handed_out", dimensions: dimensions, factory: factory)
        coldRestores = Counter(label: "microvm_pool_cold_restores", dimensions: dimensions, factory: factory)
        discarded = Counter(label: "microvm_pool_discarded", dimensions: dimensions, factory: factory)
        failedRestores = Counter(label: "microvm_pool_failed_restores", dimensions: dimensions, factory: factory)
        acquire = Metrics.Timer(label: "microvm_pool_acquire", dimensions: dimensions, factory: factory)
    }
}
