import CMicroVMSys
import Dispatch
import MicroVM
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// SIGINT, SIGTERM and SIGHUP, caught from the moment a command starts changing the host until
/// it exits. This process is the VMs' driver: killed by a signal's default action halfway
/// through a creation or a snapshot, it would leave a VM that nobody stops (its monitor keeps
/// it running) or one left paused. So a signal is turned into what the current phase can undo
/// or finish: a creation is cancelled (the library then removes everything it made), a
/// snapshot or stop is finished first, an attached console stops or detaches.
final class Interrupts: Sendable {
    private struct State {
        var received = 0
        /// What the current phase does with a signal; a signal that comes while there is none
        /// is kept for the next phase that sets one.
        var handler: (@Sendable () -> Void)?
        var pending = false
    }

    private let state = Mutex(State())

    static let numbers = [SIGINT, SIGTERM, SIGHUP]

    /// The process's one catcher (a signal's handler is process-wide).
    private static let shared: Interrupts = {
        let interrupts = Interrupts()
        // A reader gone from standard output is an EPIPE that `Output` handles, never a death by
        // SIGPIPE halfway through (Firecracker, written in Rust, ignores it too).
        signal(SIGPIPE, SIG_IGN)
        var fds: [Int32] = [-1, -1]
        guard cmv_pipe_cloexec(&fds) == 0 else { return interrupts }
        // The handler must never block: the write end is non-blocking (a full pipe drops the
        // byte, and a signal is already pending then).
        _ = fcntl(fds[1], F_SETFL, O_NONBLOCK)
        for number in numbers { _ = cmv_catch_signal_into_pipe(number, fds[1]) }
        let reader = fds[0]
        DispatchQueue.global().async {
            var byte: UInt8 = 0
            while true {
                let count = read(reader, &byte, 1)
                if count < 0, errno == EINTR { continue }
                guard count == 1 else { return }
                interrupts.deliver()
            }
        }
        return interrupts
    }()

    /// Catches the signals from now on (instead of their default action, which ends this
    /// process) and delivers them to the phases. A handler, not `SIG_IGN`: the processes this
    /// command starts (the monitor, Firecracker) get the default action back at their exec.
    static func catching() -> Interrupts { shared }

    /// Whether a signal came since the command started.
    var received: Bool { state.withLock { $0.received > 0 } }

    private func deliver() {
        let handler = state.withLock { state -> (@Sendable () -> Void)? in
            state.received += 1
            guard let handler = state.handler else {
                state.pending = true
                return nil
            }
            return handler
        }
        handler?()
    }

    /// Runs `body` with `handler` as what a signal does; one that came before (between phases)
    /// is handled at once.
    func handling<T>(_ handler: @escaping @Sendable () -> Void, _ body: () async throws -> T) async rethrows -> T {
        let pending = state.withLock { state -> Bool in
            state.handler = handler
            defer { state.pending = false }
            return state.pending
        }
        if pending { handler() }
        defer { state.withLock { $0.handler = nil } }
        return try await body()
    }

    /// Runs `body` in a task that a signal cancels: for a creation, which undoes what it made
    /// when cancelled.
    func cancelling<T: Sendable>(_ body: sending @escaping () async throws -> T) async throws -> T {
        let work = Task { try await body() }
        let before = state.withLock { $0.received }
        let result = try await handling({ work.cancel() }) { try await work.value }
        // A signal that came as the work was ending did not cancel it: the next phase has it.
        state.withLock { state in
            if state.received > before { state.pending = true }
        }
        return result
    }

    /// Runs `body` to its end whatever signal comes (a snapshot, a stop: stopped halfway they
    /// would leave a VM paused or half-removed); the signal is only noted, for `exitIfInterrupted`.
    func deferring<T>(_ body: () async throws -> T) async rethrows -> T {
        try await handling({}, body)
    }

    /// Ends the command with status 130 when a signal came: what the command was doing is
    /// finished, and a script sees that it was interrupted.
    func exitIfInterrupted(_ what: String) throws {
        guard received else { return }
        throw CLIError(.interrupted, "interrupted; \(what)")
    }

    /// A VM whose creation ended as a signal came, too late to cancel it: removed, as the
    /// signal asked.
    func removeIfInterrupted(_ vm: MicroVM) async throws {
        guard received else { return }
        await vm.kill()
        throw CLIError(.interrupted, "interrupted; VM \(vm.id) was created, then removed", id: vm.id.rawValue)
    }

}
