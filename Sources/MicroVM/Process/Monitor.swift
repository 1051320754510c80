import CMicroVMSys
import Foundation
import NIOCore
import NIOPosix
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Where to find the per-VM monitor (`microvm-monitor`) and how it keeps the VM's streams.
///
/// A VM launched with a monitor is detached from the process that created it: the monitor is
/// the VMM's parent, so it learns its real exit status and writes it into the VM's directory;
/// it is the one reader of the console, stderr and Firecracker's log, so the guest never waits
/// on an unread console; and it serves those streams, and the console's input, to any later
/// driver. Without one (the default), the VMM is supervised by the process that created it.
public struct MonitorSettings: Sendable, Hashable {
    /// The `microvm-monitor` executable.
    public var binary: FilePath
    /// The console's bytes kept in the monitor's memory for drivers that attach later.
    public var consoleRingBytes: Int
    /// The console log and Firecracker's log files are rotated once at this size.
    public var fileMaximumBytes: Int

    public static let environmentVariable = "MICROVM_MONITOR_BIN"

    public init(binary: FilePath, consoleRingBytes: Int = 256 * 1024, fileMaximumBytes: Int = 8 << 20) {
        self.binary = binary
        self.consoleRingBytes = consoleRingBytes
        self.fileMaximumBytes = fileMaximumBytes
    }

    /// `$MICROVM_MONITOR_BIN`, else `microvm-monitor` beside this process's executable (where
    /// SwiftPM builds it), else the first on `PATH`; nil when none is executable.
    public static func locate(environment: [String: String]) -> MonitorSettings? {
        var candidates: [String] = []
        if let path = environment[environmentVariable], !path.isEmpty { return MonitorSettings(binary: FilePath(path)) }
        if let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            candidates.append(FilePath(executable).removingLastComponent().appending("microvm-monitor").string)
        }
        for directory in (environment["PATH"] ?? "/usr/local/bin:/usr/bin").split(separator: ":") {
            candidates.append("\(directory)/microvm-monitor")
        }
        return candidates.first { access($0, X_OK) == 0 }.map { MonitorSettings(binary: FilePath($0)) }
    }
}

/// The files the monitor keeps in the VM's state directory.
enum MonitorFiles {
    static func socket(in directory: FilePath) -> FilePath { directory.appending("monitor.sock") }
    static func exit(in directory: FilePath) -> FilePath { directory.appending("exit") }
    static func consoleLog(in directory: FilePath) -> FilePath { directory.appending("console.log") }
    static func firecrackerLog(in directory: FilePath) -> FilePath { directory.appending("firecracker.log") }
    static func standardError(in directory: FilePath) -> FilePath { directory.appending("stderr.log") }
    static func diagnostics(in directory: FilePath) -> FilePath { directory.appending("monitor.err") }
    /// How a lazy restore's page-fault server ended (`key value` lines), written by the monitor
    /// when the server's thread ends.
    static func lazyMemory(in directory: FilePath) -> FilePath { directory.appending("lazy-memory") }

    /// The failure the monitor's page-fault server recorded; nil when it did not fail (or
    /// wrote nothing).
    static func lazyMemoryFailure(in directory: FilePath) -> LazyMemoryError? {
        guard let text = try? String(contentsOfFile: lazyMemory(in: directory).string, encoding: .utf8) else { return nil }
        let fields = LazyMemoryStatistics.reportFields(text)
        guard fields["state"] == "failed" else { return nil }
        let step: LazyMemoryError.Step =
            switch fields["step"] {
            case "listening": .listening
            case "opening-memory": .openingMemory
            case "starting": .starting
            case "accepting": .accepting
            case "handshake": .handshake
            default: .serving
            }
        return LazyMemoryError(step: step, path: fields["path"] ?? "", errno: Int32(fields["errno"] ?? "") ?? 0, detail: fields["detail"] ?? "")
    }

    /// The page-fault server's final counters, as the monitor recorded them when it ended.
    static func lazyMemoryStatistics(in directory: FilePath) -> LazyMemoryStatistics? {
        guard let text = try? String(contentsOfFile: lazyMemory(in: directory).string, encoding: .utf8) else { return nil }
        return LazyMemoryStatistics(report: LazyMemoryStatistics.reportFields(text))
    }

    /// Asks the monitor listening at `socket` for its page-fault server's counters as they are
    /// now (the request `lazy-memory`, answered `ok` and `key value` lines, then the end of
    /// the connection). nil when it cannot say: no monitor, no server, or no answer within
    /// `timeout`.
    static func liveLazyMemoryStatistics(socket: FilePath, timeout: Duration = .seconds(1)) async -> LazyMemoryStatistics? {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(TimeAmount(timeout))
                .connect(unixDomainSocketPath: socket.string) { channel in
                    channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
                }
            // A monitor that never answers is left behind, not waited for.
            let deadline = channel.channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) { channel.channel.close(promise: nil) }
            defer { deadline.cancel() }
            return try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: "lazy-memory 0\n"))
                var answer = ""
                for try await var chunk in inbound {
                    answer += chunk.readString(length: chunk.readableBytes) ?? ""
                    if answer.utf8.count > 4096 { return nil }
                }
                guard answer.hasPrefix("ok\n") else { return nil }
                return LazyMemoryStatistics(report: LazyMemoryStatistics.reportFields(answer))
            }
        } catch {
            return nil
        }
    }

    /// The last lines of one of the monitor's files (none when it is missing).
    static func lastLines(of file: FilePath) -> [String] {
        guard let text = try? String(contentsOfFile: file.string, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").suffix(200).map(String.init)
    }
}

/// The monitor's `exit` file: how the VMM (or, when it never started, its launcher) ended.
public struct MonitorExit: Sendable, Hashable {
    /// Whose status it is: the VMM, or the launcher (jailer) that failed before starting it.
    public var isVMM: Bool
    public var pid: Int32?
    public var exit: VMMExit
    /// The launcher could not be started at all (its error message).
    public var spawnError: String?

    /// Reads the file; nil while it is not there.
    static func read(_ path: FilePath) -> MonitorExit? {
        guard let text = try? String(contentsOfFile: path.string, encoding: .utf8) else { return nil }
        var result = MonitorExit(isVMM: false, pid: nil, exit: .unknown)
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "role": result.isVMM = parts[1] == "vmm"
            case "pid": result.pid = Int32(parts[1])
            case "exited": result.exit = Int32(parts[1]).map { .exited(code: $0) } ?? .unknown
            case "signaled": result.exit = Int32(parts[1]).map { .signaled(signal: $0) } ?? .unknown
            case "message": result.spawnError = parts[1]
            default: continue
            }
        }
        return result
    }

    /// Waits for the file (the monitor writes it once it has reaped the VMM and drained its
    /// streams, a moment after the VMM's pidfd turned readable); nil after `timeout`.
    static func wait(_ path: FilePath, timeout: Duration) async -> MonitorExit? {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        var interval = Duration.microseconds(200)
        while true {
            if let exit = read(path) { return exit }
            guard clock.now < deadline, !Task.isCancelled else { return nil }
            try? await Task.sleep(for: interval)
            interval = min(interval * 2, .milliseconds(20))
        }
    }
}

/// Starts a launcher (Firecracker, or the jailer) under a new monitor, and reads the monitor's
/// one line: the VMM's pid, or why there is none.
enum MonitorLauncher {
    enum Outcome: Sendable {
        case vmm(pid: Int32)
        case failed(String)
    }

    struct Launched: Sendable {
        let monitor: ProcessLauncher.Spawned
        let outcome: Outcome
    }

    static func spawn(
        settings: MonitorSettings, stateDirectory: FilePath, logFIFO: FilePath?, pidFile: FilePath?, workingDirectory: FilePath?,
        lazyMemory: VMMStreams.LazyMemoryServer? = nil, executable: FilePath, arguments: [String]
    ) async throws(LaunchFailure) -> Launched {
        var monitorArguments = [
            "--dir", stateDirectory.string, "--console-ring", "\(settings.consoleRingBytes)", "--file-max", "\(settings.fileMaximumBytes)",
        ]
        if let logFIFO { monitorArguments += ["--log-fifo", logFIFO.string] }
        if let pidFile { monitorArguments += ["--pid-file", pidFile.string] }
        monitorArguments += ["--stdin-fifo", stateDirectory.appending("stdin").string]
        if let workingDirectory { monitorArguments += ["--cwd", workingDirectory.string] }
        if let lazyMemory {
            monitorArguments += ["--uffd-socket", lazyMemory.socket.string, "--uffd-memory", lazyMemory.memoryFile.string]
            if let owner = lazyMemory.owner { monitorArguments += ["--uffd-owner", "\(owner.uid):\(owner.gid)"] }
        }
        monitorArguments += ["--", executable.string] + arguments

        var pipe: [Int32] = [-1, -1]
        guard cmv_pipe_cloexec(&pipe) == 0 else {
            throw LaunchFailure(executable: settings.binary.string, message: "pipe: \(String(cString: strerror(errno)))")
        }
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        let diagnostics = open(MonitorFiles.diagnostics(in: stateDirectory).string, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        defer {
            close(pipe[0])
            for fd in [null, diagnostics] where fd >= 0 { close(fd) }
        }
        let spawned: ProcessLauncher.Spawned
        do {
            spawned = try await ProcessLauncher.spawn(
                executable: settings.binary, arguments: monitorArguments, workingDirectory: nil,
                standardInput: null, standardOutput: pipe[1], standardError: diagnostics >= 0 ? diagnostics : null)
            close(pipe[1])
        } catch {
            close(pipe[1])
            throw error
        }
        // One line, then end of file (the monitor points its stdout at /dev/null).
        var line: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while !line.contains(UInt8(ascii: "\n")) {
            await ExitWatcher.shared.waitForExit(pidfd: pipe[0])  // readable: data or end of file
            let count = buffer.withUnsafeMutableBytes { read(pipe[0], $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            if count <= 0 { break }
            line += buffer[..<count]
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if text.hasPrefix("vmm "), let pid = Int32(text.dropFirst(4)), pid > 0 {
            return Launched(monitor: spawned, outcome: .vmm(pid: pid))
        }
        let diagnosis = (try? String(contentsOfFile: MonitorFiles.diagnostics(in: stateDirectory).string, encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        let reason = text.hasPrefix("failed ") ? String(text.dropFirst(7)) : (text.isEmpty ? "the monitor exited without a word" : text)
        return Launched(monitor: spawned, outcome: .failed(diagnosis.isEmpty ? reason : "\(reason); \(diagnosis)"))
    }
}
