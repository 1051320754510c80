#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys

/// A minimal posix_spawn runner for short host commands (`jailer --version`). The host module
/// does not depend on the driver's process library; this is not meant for supervising VMMs.
package enum HostCommand {
    package struct Output: Sendable {
        package var termination: ProcessTermination
        package var standardOutput: String
        package var standardError: String
    }

    /// Spawns `executable` with `arguments`, stdin from /dev/null and the given descriptors as
    /// stdout/stderr, with an empty signal mask and default signal actions (a child must not
    /// inherit the blocked signals of a Swift-concurrency thread). Returns the pid.
    static func spawn(
        _ executable: String, _ arguments: [String], stdout: Int32, stderr: Int32, newSession: Bool = false
    ) throws(SystemCallError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
        posix_spawn_file_actions_adddup2(&actions, stderr, 2)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigfillset(&defaults)
        sigdelset(&defaults, SIGKILL)
        sigdelset(&defaults, SIGSTOP)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
        if newSession { flags |= 0x80 }  // POSIX_SPAWN_SETSID (glibc 2.26+)
        posix_spawnattr_setflags(&attributes, Int16(flags))

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) }
        defer { argv.forEach { free($0) } }
        var pointers = argv + [nil]
        var pid: pid_t = 0
        let result = pointers.withUnsafeMutableBufferPointer { buffer in
            posix_spawn(&pid, executable, &actions, &attributes, buffer.baseAddress!, environ)
        }
        if result != 0 { throw SystemCallError(call: "posix_spawn", subject: executable, errno: result) }
        return pid
    }

    /// Blocks until `pid` exits and returns how.
    static func wait(_ pid: pid_t) throws(SystemCallError) -> ProcessTermination {
        var status: Int32 = 0
        try SystemCallError.check("waitpid", "pid \(pid)") { waitpid(pid, &status, 0) }
        let signal = status & 0x7f
        return signal == 0 ? .exited((status >> 8) & 0xff) : .signaled(signal)
    }

    /// Runs a short command to completion, collecting its output (up to `limit` bytes each).
    /// Blocks the calling thread; only for commands that answer at once.
    package static func run(_ executable: String, _ arguments: [String], limit: Int = 65536) throws(SystemCallError) -> Output {
        var out: [Int32] = [-1, -1]
        var err: [Int32] = [-1, -1]
        try SystemCallError.check("pipe2", executable) { cmv_pipe_cloexec(&out) }
        defer { for fd in out where fd >= 0 { close(fd) } }
        try SystemCallError.check("pipe2", executable) { cmv_pipe_cloexec(&err) }
        defer { for fd in err where fd >= 0 { close(fd) } }
        let pid = try spawn(executable, arguments, stdout: out[1], stderr: err[1])
        close(out[1])
        out[1] = -1
        close(err[1])
        err[1] = -1

        var collected: [[UInt8]] = [[], []]
        var open = [true, true]
        var buffer = [UInt8](repeating: 0, count: 4096)
        while open[0] || open[1] {
            var fds = [
                pollfd(fd: open[0] ? out[0] : -1, events: Int16(POLLIN), revents: 0),
                pollfd(fd: open[1] ? err[0] : -1, events: Int16(POLLIN), revents: 0),
            ]
            let ready = poll(&fds, 2, 10_000)
            if ready < 0, errno == EINTR { continue }
            if ready <= 0 {
                // No output for 10 s: not a command that answers at once.
                kill(pid, SIGKILL)
                break
            }
            for index in 0..<2 where open[index] && fds[index].revents != 0 {
                let count = buffer.withUnsafeMutableBytes { read(fds[index].fd, $0.baseAddress, $0.count) }
                if count <= 0 {
                    if count < 0, errno == EINTR { continue }
                    open[index] = false
                } else if collected[index].count < limit {
                    collected[index].append(contentsOf: buffer[0..<min(count, limit - collected[index].count)])
                }
            }
        }
        let termination = try wait(pid)
        return Output(
            termination: termination, standardOutput: String(decoding: collected[0], as: UTF8.self),
            standardError: String(decoding: collected[1], as: UTF8.self))
    }
}

/// The version a Firecracker-family binary (firecracker, jailer) prints for `--version`.
public enum BinaryVersion {
    /// `vX.Y.Z`, or nil when the binary cannot be run or prints no version.
    public static func read(_ path: String) -> String? {
        guard access(path, X_OK) == 0, let output = try? HostCommand.run(path, ["--version"]) else { return nil }
        let text = output.standardOutput + output.standardError
        guard let match = text.firstMatch(of: #/v?\d+\.\d+\.\d+/#) else { return nil }
        let version = String(match.output)
        return version.hasPrefix("v") ? version : "v" + version
    }
}
