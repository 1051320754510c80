#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys
public import Logging

/// What a pid currently is, relative to one jail.
public enum ProcessIdentity: Sendable, Hashable {
    /// Alive and this jail's VMM: its root directory or executable is the jail's, or (an
    /// unjailed VMM) its working directory is the VM's and its `--id` the VM's id.
    case jailed
    /// Exited but not reaped yet: gone for supervision, but its cgroups stay busy until reaped.
    case zombie
    /// No such process.
    case gone
    /// Alive but not this jail's process (the pid was reused).
    case foreign
}

/// How a stop request ended.
public enum StopOutcome: Sendable, Hashable {
    /// Nothing of this jail was running.
    case notRunning
    /// The pid belongs to another process now; it was left alone.
    case notOurs(pid: Int32)
    /// The VMM was stopped with `signal`; `termination` is known when this process reaped it
    /// (it is the VMM's parent or child subreaper).
    case stopped(pid: Int32, signal: Int32, termination: ProcessTermination?)
    /// It had already exited; `termination` as above.
    case alreadyExited(pid: Int32, termination: ProcessTermination?)
}

/// The jailed Firecracker, identified by the pid the jailer wrote into the jail. This is the
/// process to supervise and signal: with `--new-pid-ns` the jailer exits at once and with
/// `--daemonize` it double-forks, so the jailer's own child is never Firecracker.
public struct JailedVMM: Sendable, Hashable {
    public let pid: Int32
    public let layout: JailLayout

    public init(pid: Int32, layout: JailLayout) {
        self.pid = pid
        self.layout = layout
    }

    /// Waits for the jailer's pid file and reads it. The jailer writes it right after cloning
    /// (with `--new-pid-ns`, after its own exit has already been reported) or before exec, and
    /// the file exists briefly before the number is in it, so an empty file means "not yet".
    public static func waitForPIDFile(
        layout: JailLayout, timeout: Duration = .seconds(5), pollInterval: Duration = .milliseconds(2)
    ) async throws(JailError) -> JailedVMM {
        let clock = ContinuousClock()
        let start = clock.now
        let path = layout.pidFile.string
        while true {
            if let pid = try readPIDFile(layout: layout) {
                return JailedVMM(pid: pid, layout: layout)
            }
            let elapsed = clock.now - start
            if elapsed >= timeout {
                throw .pidFileTimeout(id: layout.id.rawValue, path: path, waitedMilliseconds: elapsed.milliseconds)
            }
            do {
                try await Task.sleep(for: pollInterval)
            } catch {
                throw .cancelled("waiting for \(path)")
            }
        }
    }

    /// The pid in the jail's pid file; nil when there is no file or it is still empty.
    public static func readPIDFile(layout: JailLayout) throws(JailError) -> Int32? {
        let path = layout.pidFile.string
        let text: String
        do {
            text = try readSmallFile(path, limit: 64)
        } catch {
            if error.errno == ENOENT { return nil }
            throw .system(id: layout.id.rawValue, error)
        }
        let trimmed = text.trimmingWhitespace()
        if trimmed.isEmpty { return nil }
        guard let pid = Int32(trimmed), pid > 0 else {
            throw .pidFileInvalid(id: layout.id.rawValue, path: path, contents: String(trimmed.prefix(64)))
        }
        return pid
    }

    /// Whether `pid` is this jail's process. Compares `/proc/PID/root` with the jail root and
    /// `/proc/PID/exe` with the jailer's copy of the binary (both by inode, which survives the
    /// VMM's pivot_root); when the jail is already gone, falls back to the command line the
    /// jailer gives Firecracker (`/<exec file name> --id <id> ...`).
    public static func identify(pid: Int32, layout: JailLayout) -> ProcessIdentity {
        guard let state = processState(pid) else { return .gone }
        if state == "Z" || state == "X" { return .zombie }
        let rootIdentity = (try? JailFileSystem.statPath(layout.rootDirectory.string)).map(FileIdentity.init)
        let exeIdentity = (try? JailFileSystem.statPath(layout.executableCopy.string)).map(FileIdentity.init)
        if let rootIdentity, let processRoot = try? JailFileSystem.statPath("/proc/\(pid)/root"),
            FileIdentity(processRoot) == rootIdentity
        {
            return .jailed
        }
        if let exeIdentity, let processExe = try? JailFileSystem.statPath("/proc/\(pid)/exe"),
            FileIdentity(processExe) == exeIdentity
        {
            return .jailed
        }
        if rootIdentity == nil, let arguments = commandLine(pid), arguments.first == "/" + layout.execFileName,
            zip(arguments, arguments.dropFirst()).contains(where: { $0 == "--id" && $1 == layout.id.rawValue })
        {
            return .jailed
        }
        // An unjailed VMM: the VM's directory as working directory and the VM's id as its
        // `--id` (a shell that merely sits in the directory is not the VM's).
        if let rootIdentity, let processCWD = try? JailFileSystem.statPath("/proc/\(pid)/cwd"), FileIdentity(processCWD) == rootIdentity,
            let arguments = commandLine(pid), zip(arguments, arguments.dropFirst()).contains(where: { $0 == "--id" && $1 == layout.id.rawValue })
        {
            return .jailed
        }
        return processState(pid) == nil ? .gone : .foreign
    }

    /// Every live process whose root directory or working directory is this jail's root: the
    /// VMM even when its pid file is missing or wrong, a jailer child caught between clone and
    /// exec, and an unjailed VMM, which runs with the VM's directory as working directory.
    public static func processesInJail(layout: JailLayout) -> [Int32] {
        guard let root = try? JailFileSystem.statPath(layout.rootDirectory.string),
            let entries = JailFileSystem.directoryEntries("/proc")
        else { return [] }
        let jailRoot = FileIdentity(root)
        return entries.compactMap { Int32($0) }.filter { pid in
            let inside = ["root", "cwd"].contains { link in
                (try? JailFileSystem.statPath("/proc/\(pid)/\(link)")).map(FileIdentity.init) == jailRoot
            }
            guard inside, let state = processState(pid) else { return false }
            return state != "Z" && state != "X"
        }.sorted()
    }

    /// The one-letter state from `/proc/PID/stat`, or nil when there is no such process.
    static func processState(_ pid: Int32) -> Character? {
        guard let stat = try? readSmallFile("/proc/\(pid)/stat", limit: 4096),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        return stat[close...].dropFirst().first(where: { $0 != " " })
    }

    static func commandLine(_ pid: Int32) -> [String]? {
        guard let text = try? readSmallFile("/proc/\(pid)/cmdline", limit: 65536), !text.isEmpty else { return nil }
        return text.split(separator: "\0", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    /// True when the process is PID 1 of a PID namespace below ours (`--new-pid-ns`). The kernel
    /// drops signals from an ancestor namespace that such an init has no handler for, except
    /// SIGKILL and SIGSTOP: Firecracker has no SIGTERM handler, so SIGTERM is silently ignored
    /// (measured with jailer v1.12.1 --new-pid-ns).
    public static func isPIDNamespaceInit(_ pid: Int32) -> Bool {
        guard let status = try? readSmallFile("/proc/\(pid)/status", limit: 65536) else { return false }
        for line in status.split(separator: "\n") where line.hasPrefix("NSpid:") {
            let ids = line.dropFirst("NSpid:".count).split(whereSeparator: { $0 == " " || $0 == "\t" })
            return ids.count > 1 && ids.last == "1"
        }
        return false
    }

    /// Whether the process is alive (not gone, not a zombie).
    public var isAlive: Bool {
        guard let state = Self.processState(pid) else { return false }
        return state != "Z" && state != "X"
    }

    /// Stops the VMM: SIGTERM (skipped for a PID-namespace init, which would ignore it), then
    /// SIGKILL after `grace`, then waits until it has exited. Signals go through a pidfd opened
    /// before the identity check, so a reused pid is never signalled. With `reap`, the zombie is
    /// reaped through the same pidfd when this process is its parent (or child subreaper), which
    /// also frees its cgroups; otherwise whoever is its parent must reap it.
    public func stop(
        grace: Duration = .milliseconds(500), timeout: Duration = .seconds(5), reap: Bool = true, logger: Logger
    ) async throws(JailError) -> StopOutcome {
        let id = layout.id.rawValue
        let pidfd = cmv_pidfd_open(pid)
        if pidfd < 0 {
            if errno == ESRCH { return .notRunning }
            throw .system(id: id, SystemCallError(call: "pidfd_open", subject: "pid \(pid)", errno: errno))
        }
        defer { close(pidfd) }

        switch Self.identify(pid: pid, layout: layout) {
        case .gone:
            return .notRunning
        case .foreign:
            logger.warning(
                "pid no longer belongs to the VM's jail; not signalling it", metadata: ["vm": "\(id)", "pid": "\(pid)"])
            return .notOurs(pid: pid)
        case .zombie:
            return .alreadyExited(pid: pid, termination: reap ? await Self.reap(pidfd) : nil)
        case .jailed:
            break
        }

        var signal = SIGKILL
        if !Self.isPIDNamespaceInit(pid) {
            signal = SIGTERM
            if cmv_pidfd_send_signal(pidfd, SIGTERM) != 0, errno != ESRCH {
                throw .system(id: id, SystemCallError(call: "pidfd_send_signal(SIGTERM)", subject: "pid \(pid)", errno: errno))
            }
            if await Self.waitForExit(pidfd: pidfd, pid: pid, timeout: grace) {
                return .stopped(pid: pid, signal: signal, termination: reap ? await Self.reap(pidfd) : nil)
            }
            signal = SIGKILL
        }
        logger.debug("killing VMM", metadata: ["vm": "\(id)", "pid": "\(pid)"])
        if cmv_pidfd_send_signal(pidfd, SIGKILL) != 0, errno != ESRCH {
            throw .system(id: id, SystemCallError(call: "pidfd_send_signal(SIGKILL)", subject: "pid \(pid)", errno: errno))
        }
        guard await Self.waitForExit(pidfd: pidfd, pid: pid, timeout: timeout) else {
            throw .vmmStillRunning(id: id, pid: pid, detail: "still alive \(timeout) after SIGKILL (state \(Self.processState(pid).map(String.init) ?? "?"))")
        }
        return .stopped(pid: pid, signal: signal, termination: reap ? await Self.reap(pidfd) : nil)
    }

    /// Reaps the exited process behind `pidfd` if it is our child; nil otherwise (ECHILD: its
    /// parent is someone else, who must reap it). The pidfd turns readable a moment before the
    /// kernel makes a multi-threaded leader waitable, so "not yet" is retried briefly.
    public static func reap(_ pidfd: Int32, timeout: Duration = .seconds(2)) async -> ProcessTermination? {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            var exited: Int32 = 0
            var value: Int32 = 0
            switch cmv_pidfd_reap(pidfd, 1, &exited, &value) {
            case 1:
                return exited == 1 ? .exited(value) : .signaled(value)
            case 0 where clock.now < deadline:
                await pause(.milliseconds(1))
            default:
                return nil
            }
        }
    }

    /// Polls until the process has exited (pidfd readable, or zombie/gone in /proc).
    public static func waitForExit(pidfd: Int32, pid: Int32, timeout: Duration) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            var entry = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
            if poll(&entry, 1, 0) > 0 { return true }
            if let state = processState(pid), state != "Z", state != "X" {
                // still running
            } else {
                return true
            }
            if clock.now >= deadline { return false }
            await pause(.milliseconds(2))
        }
    }
}

/// Sleeps without giving up when the task is cancelled: teardown must finish its waits.
func pause(_ duration: Duration) async {
    do {
        try await Task.sleep(for: duration)
    } catch {
        usleep(useconds_t(max(duration.milliseconds, 1) * 1000))
    }
}

extension Duration {
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }
}
