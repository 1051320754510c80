import CMicroVMSys
import NIOCore
import NIOPosix

/// Event loops for the driver's work that can wait for a free CPU: reading every VM's console,
/// and the timeouts of waits. Their threads are `SCHED_BATCH`, which the kernel never lets
/// preempt a running thread when they wake.
///
/// On a small host the driver shares its CPUs with the VMMs it supervises. Traced with ftrace
/// over 20 launches on two CPUs (BENCHMARKS.md, session 7), Firecracker's threads spent 0.5-0.9
/// ms per launch (p50) runnable but preempted, mostly by NIO's shared loops reading the console
/// and the log and by Dispatch's timer thread, against 0.1-0.15 ms for raw Firecracker read by a
/// plain thread. A batch thread runs when a CPU is free instead: on a busy host the guests keep
/// their CPUs, and a console line or a timeout reaches the driver up to a scheduler tick later.
/// Firecracker's log, which readiness waits for, and the API stay on NIO's shared loops.
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
