import CMicroVMSys
import NIOCore
import NIOPosix

/// Event loops for the driver's work that can wait for a free CPU: reading every VM's console
/// and Firecracker's log, and the timeouts of waits. Their threads are `SCHED_BATCH`, which the
/// kernel never lets preempt a running thread when they wake.
///
/// On a small host the driver shares its CPUs with the VMMs it supervises. Traced with ftrace
/// over 20 launches on two CPUs (BENCHMARKS.md, session 7), Firecracker's threads spent 0.5-0.9
/// ms per launch (p50) runnable but preempted, mostly by NIO's shared loops reading the console
/// and the log and by Dispatch's timer thread, against 0.1-0.15 ms for raw Firecracker read by a
/// plain thread. A batch thread runs when a CPU is free instead: on a busy host the guests keep
/// their CPUs, and a console line or a timeout reaches the driver up to a scheduler tick later.
///
/// Firecracker's log, which readiness waits for, moved here too (session 15), together with
/// the record's write (``BatchThreadPool``): its last lines come as the guest starts, when
/// KVM's worker for the new VM and the vCPU want both CPUs of a small host, and a driver that
/// woke at normal priority then to take them (and write the record) took a CPU from the VM.
/// Same-run A/Bs, 200 launches per arm, five runs: the banner 0.13-0.31 ms sooner (p50), and
/// `run` 0.3-0.5 ms later, as it waits for the record (BENCHMARKS.md, session 15). The API
/// stays on NIO's shared loops.
enum BatchEventLoops {
    /// One loop per CPU, at most four: a loop reads many consoles (each read is a few
    /// microseconds), and a large host should not get a hundred more threads for it.
    static let group: MultiThreadedEventLoopGroup = {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: min(System.coreCount, 4))
        for loop in group.makeIterator() {
            // Best effort: where it is refused (a seccomp policy), the loops run as they are.
            loop.execute { _ = cmv_sched_batch() }
        }
        return group
    }()
}

/// A timeout for a waiter, on the batch event loops rather than a task in `Task.sleep`.
///
/// A cancelled `Task.sleep` leaves its timer with Dispatch until the deadline passes, and each
/// one wakes Dispatch's timer thread: a launch set three, the longest as long as the readiness
/// timeout. On NIO's shared loops a cancel from another thread wakes the loop instead. Either
/// woke a thread that preempted Firecracker's (BENCHMARKS.md, session 7).
struct WaitTimer: Sendable {
    private let scheduled: Scheduled<Void>

    /// Calls `expire` once `timeout` has passed, unless cancelled first.
    init(after timeout: Duration, _ expire: @escaping @Sendable () -> Void) {
        let (seconds, attoseconds) = timeout.components
        let nanoseconds = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        let amount: TimeAmount =
            nanoseconds.overflow ? .hours(24 * 365) : .nanoseconds(max(0, nanoseconds.partialValue &+ attoseconds / 1_000_000_000))
        scheduled = BatchEventLoops.group.any().scheduleTask(in: amount, expire)
    }

    func cancel() {
        scheduled.cancel()
    }
}

/// A thread pool for the driver's background file work (VMs' records), on `SCHED_BATCH`
/// threads like ``BatchEventLoops``: a record is written as a guest starts (the first one) or
/// after a change the caller already has its answer for (``MicroVM/persist()``), and neither
/// may take a CPU from a VM. Blocking calls never run on Swift's cooperative threads.
enum BatchThreadPool {
    static let pool: NIOThreadPool = {
        let pool = NIOThreadPool(numberOfThreads: 2)
        pool.start()
        return pool
    }()

    /// `body` on the pool, its typed error kept; `unavailable` makes the error for a pool that
    /// no longer runs work.
    static func run<T: Sendable, Failure: Error>(
        _ body: @escaping @Sendable () throws(Failure) -> T, unavailable: (any Error) -> Failure
    ) async throws(Failure) -> T {
        let batch = { @Sendable () throws(Failure) -> T in
            _ = cmv_sched_batch_once()  // best effort, as for the loops
            return try body()
        }
        return try await onThreadPool(on: pool, batch, unavailable: unavailable)
    }
}
