import CMicroVMSys
import Logging
import MicroVMHost
import Synchronization
package import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Starts a process (Firecracker itself, the jailer that starts it, or a VM's monitor) with
/// `posix_spawn` from the C target, which returns once the child has exec'd (0.1-0.2 ms here;
/// on the calling thread unless another spawn is under way there, see below), and watches its
/// exit through a pidfd.
///
/// What the child gets is what swift-subprocess gives it: an empty signal mask and every
/// signal's default action (an ignored SIGINT or SIGPIPE of this process would survive the
/// exec), its own session (a terminal's SIGINT or SIGHUP aimed at this process does not reach
/// the VMM; Firecracker turns SIGHUP into exit code 156), every descriptor above 2 closed, and
/// this process's environment byte for byte. swift-subprocess is not used for these three:
/// its `run` hands the spawn to its one worker thread and the result back to the caller's task,
/// and those hops cost 0.43-0.49 ms per spawn here, on top of the spawn itself (0.16 ms,
/// measured side by side, p50 of 300: BENCHMARKS.md, session 12), in every launch. The exit is
/// collected by `waitid` on the pidfd once it turns readable (`ExitWatcher`), on no thread of
/// its own.
package enum ProcessLauncher {
    package struct Spawned: Sendable {
        package let pid: Int32
        /// A private duplicate of the launcher's pidfd: it stays valid after the child is
        /// reaped, so a signal can never reach a recycled pid.
        package let pidfd: Int32
        /// The started process's exit, once it is reaped.
        package let termination: Task<VMMExit, Never>
    }

    /// Spawns `executable` with `standardInput/Output/Error` as its standard streams. They stay
    /// open here: the caller closes its copies after the spawn, whether it succeeded or not.
    package static func spawn(
        executable: FilePath, arguments: [String], workingDirectory: FilePath?,
        standardInput: Int32, standardOutput: Int32, standardError: Int32
    ) async throws(LaunchFailure) -> Spawned {
        let spawn = { @Sendable () throws(SystemCallError) -> (pid: Int32, pidfd: Int32) in
            try HostCommand.spawn(
                executable.string, arguments, workingDirectory: workingDirectory?.string, standardInput: standardInput,
                stdout: standardOutput, stderr: standardError, newSession: true, pidfd: true)
        }
        let pid: pid_t
        let watched: Int32
        do throws(SystemCallError) {
            // The caller's thread waits until the child has exec'd: 0.16 ms alone, but up to a few
            // milliseconds when many VMMs compete for the CPUs, and a cooperative thread that
            // waits holds up every task behind it. So one spawn at a time runs here; the others,
            // meanwhile, on NIO's thread pool (20 concurrent raw jailer launches ran at 0.6-0.7x
            // their rate with every spawn on the cooperative threads: BENCHMARKS.md, session 12).
            if inlineSpawn.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
                defer { inlineSpawn.store(false, ordering: .releasing) }
                (pid, watched) = try spawn()
            } else {
                (pid, watched) = try await onThreadPool(spawn) { _ in
                    SystemCallError(call: "posix_spawn", subject: "NIO's thread pool", errno: ESHUTDOWN)
                }
            }
        } catch {
            throw LaunchFailure(executable: executable.string, message: String(cString: strerror(error.errno)))
        }
        let pidfd = watched >= 0 ? dup(watched) : -1
        guard pidfd >= 0 else {
            // No pidfd, no supervision that is safe from pid reuse: the child does not stay.
            let reason = String(cString: strerror(errno))
            kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            if watched >= 0 { close(watched) }
            throw LaunchFailure(executable: executable.string, message: "no pidfd for the started process: \(reason)")
        }
        let termination = Task<VMMExit, Never> {
            await ExitWatcher.shared.waitForExit(pidfd: watched)
            let status = await reapChild(pidfd: watched)
            close(watched)
            return status
        }
        return Spawned(pid: pid, pidfd: pidfd, termination: termination)
    }
}

extension ProcessLauncher {
    /// Whether a spawn runs on a caller's thread now.
    fileprivate static let inlineSpawn = Atomic<Bool>(false)
}

/// Reaps this process's exited child behind `pidfd`. The pidfd turns readable a moment before
/// the kernel makes a multi-threaded leader waitable, so "not yet" is retried briefly. Unknown
/// when it is not this process's child (someone else reaps it).
func reapChild(pidfd: Int32) async -> VMMExit {
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

/// A process that could not be started at all (missing or non-executable binary).
public struct LaunchFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public let executable: String
    public let message: String
    public var description: String {
        "could not start \(executable): \(message). Hint: \(hint)"
    }

    public var hint: String { "check that the file exists and is executable" }
}
