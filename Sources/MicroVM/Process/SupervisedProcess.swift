import CMicroVMSys
import MicroVMHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The one running Firecracker process of a VM: its pid, a pidfd for signals (immune to pid
/// reuse), its start time (its identity once the pid could have been recycled) and its exit.
///
/// Both executors hand one of these to the VM. An unjailed Firecracker is the child that
/// swift-subprocess spawned and reaps; a jailed one is the jailer's grandchild (the jailer exits
/// right after cloning it into a new PID namespace), which the driver reaps itself as child
/// subreaper. Either way the exit is learned from the pidfd turning readable, and the pidfd is
/// closed as soon as the exit is known: a stopped VM holds no descriptor.
public final class SupervisedProcess: Sendable {
    public let pid: Int32
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid, names this process
    /// and no later one.
    public let startTime: UInt64?

    enum Reaper: Sendable {
        /// swift-subprocess reaps it; its termination is the exit.
        case launcher(Task<VMMExit, Never>)
        /// The driver reaps it through the pidfd (it is our child by the subreaper rule).
        case pidfd
    }

    private let descriptor: Mutex<Int32>
    private let exit = ExitState<VMMExit>()

    /// Takes ownership of `pidfd`.
    init(pid: Int32, pidfd: Int32, reaper: Reaper) {
        self.pid = pid
        self.startTime = ProcFS.startTime(of: pid)
        self.descriptor = Mutex(pidfd)
        Task { await self.supervise(pidfd: pidfd, reaper: reaper) }
    }

    /// Waits for the exit, collects the status, and closes the pidfd at once: a process that is
    /// gone needs no descriptor, and a stopped VM must hold none.
    private func supervise(pidfd: Int32, reaper: Reaper) async {
        if pidfd >= 0 { await ExitWatcher.shared.waitForExit(pidfd: pidfd) }
        let status: VMMExit
        switch reaper {
        case .launcher(let termination):
            status = await termination.value
        case .pidfd:
            status = await Self.reap(pidfd)
        }
        descriptor.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
        await exit.resolve(status)
    }

    /// Sends `signal` through the pidfd. False once the process is gone (or was never ours).
    @discardableResult
    public func send(signal: Int32) -> Bool {
        descriptor.withLock { fd in fd >= 0 && cmv_pidfd_send_signal(fd, signal) == 0 }
    }

    /// Whether the exit is known.
    public var hasExited: Bool {
        get async { await exit.current != nil }
    }

    /// Waits for the exit; nil when it does not come within `timeout` or the task is cancelled.
    public func exit(within timeout: Duration?) async -> VMMExit? {
        await exit.wait(timeout: timeout)
    }

    /// Waits for the exit without limit.
    public func exited() async -> VMMExit {
        await exit.wait(timeout: nil) ?? .unknown
    }

    /// Reaps the exited process behind `pidfd`. The pidfd turns readable a moment before the
    /// kernel makes a multi-threaded leader waitable, so "not yet" is retried briefly.
    private static func reap(_ pidfd: Int32) async -> VMMExit {
        for _ in 0..<2000 {
            var exited: Int32 = 0
            var value: Int32 = 0
            switch cmv_pidfd_reap(pidfd, 1, &exited, &value) {
            case 1: return exited == 1 ? .exited(code: value) : .signaled(signal: value)
            case 0: try? await Task.sleep(for: .milliseconds(1))
            default: return .unknown  // ECHILD: not our child (no subreaper); someone else reaps it
            }
        }
        return .unknown
    }
}
