#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys

/// Starting processes: the one spawn every launch goes through (Firecracker, the jailer and a
/// VM's monitor, by the driver's `ProcessLauncher`), and a runner for short host commands
/// (`jailer --version`).
package enum HostCommand {
    package struct Output: Sendable {
        package var termination: ProcessTermination
        package var standardOutput: String
        package var standardError: String
    }

    /// Spawns `executable` with `arguments` (`posix_spawn` in the C target, on this thread,
    /// which waits only until the child has exec'd), `standardInput` (nil: /dev/null) and the
    /// given descriptors as stdout/stderr. The child gets an empty signal mask and every
    /// signal's default action (a child must not inherit the blocked signals of a
    /// Swift-concurrency thread, nor an ignored SIGPIPE), no descriptor above 2, this process's
    /// environment, `workingDirectory` and, with `newSession`, a session of its own. Returns the
    /// pid, and with `pidfd` a pidfd of the child (the caller closes it).
    package static func spawn(
        _ executable: String, _ arguments: [String], workingDirectory: String? = nil, standardInput: Int32? = nil,
        stdout: Int32, stderr: Int32, newSession: Bool = false, pidfd: Bool = false
    ) throws(SystemCallError) -> (pid: Int32, pidfd: Int32) {
        var nullDevice: Int32 = -1
        if standardInput == nil {
            nullDevice = try SystemCallError.check("open", "/dev/null") { open("/dev/null", O_RDONLY | O_CLOEXEC) }
        }
        defer { if nullDevice >= 0 { close(nullDevice) } }
        var pointers: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) }
        pointers.append(nil)
        defer { pointers.forEach { free($0) } }
        var pid: pid_t = 0
        var descriptor: Int32 = -1
        let flags = CMV_SPAWN_CLOSE_OTHERS | (newSession ? CMV_SPAWN_NEW_SESSION : 0)
        let result = pointers.withUnsafeBufferPointer { argv in
            cmv_spawn(
                executable, argv.baseAddress!, workingDirectory, standardInput ?? nullDevice, stdout, stderr, flags, &pid, &descriptor)
        }
        if result != 0 { throw SystemCallError(call: "posix_spawn", subject: executable, errno: errno) }
        if !pidfd, descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
        return (pid, descriptor)
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
        let pid = try spawn(executable, arguments, stdout: out[1], stderr: err[1]).pid
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
