import CMicroVMSys
import MicroVMHost
import SystemPackage
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The one running Firecracker process of a VM: its pid, a pidfd for signals (immune to pid
/// reuse), its start time (its identity once the pid could have been recycled) and its exit.
///
/// Both executors hand one of these to the VM. An unjailed Firecracker is the child that
/// ``ProcessLauncher`` spawned and reaps; a jailed one is the jailer's grandchild (the jailer
/// exits right after cloning it into a new PID namespace), which the driver reaps itself as child
/// subreaper. Either way the exit is learned from the pidfd turning readable, and the pidfd is
/// closed as soon as the exit is known: a stopped VM holds no descriptor.
public final class SupervisedProcess: Sendable {
    public let pid: Int32
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid, names this process
    /// and no later one.
    public let startTime: UInt64?

    enum Reaper: Sendable {
        /// ``ProcessLauncher`` reaps it; its termination is the exit.
        case launcher(Task<VMMExit, Never>)
        /// The driver reaps it through the pidfd (it is our child by the subreaper rule).
        case pidfd
        /// Its monitor reaps it and writes the status into this file.
        case monitor(exitFile: FilePath)
    }

    /// The VM's monitor, when it has one: it outlives the VMM by the moment it takes to record
    /// the exit and drain the streams.
    let monitor: MonitorProcess?

    private let descriptor: Mutex<Int32>
    private let exit = ExitState<VMMExit>()

    /// Takes ownership of `pidfd`.
    init(pid: Int32, pidfd: Int32, reaper: Reaper, monitor: MonitorProcess? = nil) {
        self.pid = pid
        self.startTime = ProcFS.startTime(of: pid)
        self.descriptor = Mutex(pidfd)
        self.monitor = monitor
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
            status = await reapChild(pidfd: pidfd)
        case .monitor(let exitFile):
            status = await MonitorExit.wait(exitFile, timeout: .seconds(5))?.exit ?? .unknown
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

}

/// A VM's monitor process, watched through a pidfd so it is never confused with a later process
/// of the same pid.
final class MonitorProcess: Sendable {
    let pid: Int32
    let startTime: UInt64?
    private let descriptor: Mutex<Int32>
    /// Its reaping by ``ProcessLauncher``, when this process spawned it.
    private let termination: Task<VMMExit, Never>?

    /// Takes ownership of `pidfd`.
    init(pid: Int32, pidfd: Int32, termination: Task<VMMExit, Never>?) {
        self.pid = pid
        self.startTime = ProcFS.startTime(of: pid)
        self.descriptor = Mutex(pidfd)
        self.termination = termination
    }

    /// Waits (at most `timeout`) for the monitor to finish after its VMM, reaps it when it is
    /// this process's child, and closes the pidfd.
    func ended(within timeout: Duration) async {
        let fd = descriptor.withLock { $0 }
        guard fd >= 0 else { return }
        // Polled, not watched: the wait must end at the timeout, and the monitor leaves within
        // milliseconds of its VMM (it only drains the streams and writes one file).
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        var interval = Duration.microseconds(200)
        var gone = false
        while clock.now < deadline {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, 0) == 1 {
                gone = true
                break
            }
            try? await Task.sleep(for: interval)
            interval = min(interval * 2, .milliseconds(20))
        }
        if let termination {
            if gone { _ = await termination.value }
        } else {
            // A monitor found by a later driver may have been re-parented to it (child
            // subreaper); reap it then, or it stays a zombie.
            var exited: Int32 = 0
            var value: Int32 = 0
            _ = cmv_pidfd_reap(fd, 1, &exited, &value)
        }
        descriptor.withLock { descriptor in
            if descriptor >= 0 { close(descriptor) }
            descriptor = -1
        }
    }

    /// Sends `signal` to the monitor (tests kill it; the driver never needs to).
    @discardableResult
    func send(signal: Int32) -> Bool {
        descriptor.withLock { fd in fd >= 0 && cmv_pidfd_send_signal(fd, signal) == 0 }
    }
}
