import Dispatch
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The built `microvm` binary, run as a user would from a shell.
enum CLI {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("microvm").path
    }

    struct Result: CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String

        var lines: [String] { stdout.split(separator: "\n").map(String.init) }
        var description: String { "exit \(status)\nstdout: \(stdout)\nstderr: \(stderr)" }

        func json() throws -> Any {
            try JSONSerialization.jsonObject(with: Data(stdout.utf8))
        }
    }

    static func status(_ termination: TerminationStatus) -> Int32 {
        switch termination {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
    }

    /// Runs `microvm ARGS` to completion.
    static func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> Result {
        var overrides: [Environment.Key: String?] = [:]
        for (key, value) in environment { overrides[Environment.Key(stringLiteral: key)] = value }
        let result = try await Subprocess.run(
            .path(FilePath(binary)), arguments: Arguments(arguments), environment: .inherit.updating(overrides),
            output: .string(limit: 4 << 20), error: .string(limit: 4 << 20))
        return Result(status: status(result.terminationStatus), stdout: result.standardOutput, stderr: result.standardError)
    }

    /// The flags that put a VM's jail, cgroups and record where `EndToEnd.withDriver` checks them.
    static func driverFlags(_ configuration: DriverConfiguration) -> [String] {
        ["--state-dir", configuration.stateStore.root.string]
    }

    static func vmFlags(
        _ configuration: DriverConfiguration, _ assets: TestAssets, policy: SandboxPolicy = .required, uid: UInt32 = EndToEnd.uid,
        gid: UInt32 = EndToEnd.gid
    ) -> [String] {
        driverFlags(configuration) + [
            "--chroot-base", configuration.jailer.chrootBase.string, "--parent-cgroup", configuration.jailer.parentCgroup ?? "microvm",
            "--uid", "\(uid)", "--gid", "\(gid)", "--firecracker", assets.firecracker, "--jailer", assets.jailer,
            "--kernel", assets.kernel, "--boot-arg", "console=ttyS0", "--boot-arg", "microvm.heartbeat_ms=100", "--memory", "64",
            "--sandbox", policy.rawValue,
        ]
    }

    /// After a failure: kills every VM still recorded and collects what they left, so the
    /// leak check of `withDriver` reports the test's failure, not a straggler.
    static func cleanUp(_ configuration: DriverConfiguration) async {
        for listing in MicroVM.list(configuration: configuration) where listing.process.isAlive {
            _ = try? await run(["kill", listing.id] + driverFlags(configuration))
        }
        _ = try? await run(["gc"] + driverFlags(configuration))
    }

    /// Runs `body`, cleaning up the VMs of `configuration` if it throws.
    static func cleaningUp<T>(_ configuration: DriverConfiguration, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            await cleanUp(configuration)
            throw error
        }
    }
}

/// A `microvm` process the test talks to: its stdin is a pipe the test writes, its stdout is
/// collected line by line.
final class InteractiveCLI: Sendable {
    let pid: Int32
    private let input: Int32
    private let output = Mutex<[String]>([])
    private let errorOutput = Mutex<[String]>([])
    private let errorClosed = Mutex(false)
    private let inputOpen = Mutex(true)
    private let finished: Task<Int32, Never>

    private init(pid: Int32, input: Int32, finished: Task<Int32, Never>) {
        self.pid = pid
        self.input = input
        self.finished = finished
    }

    static func start(_ arguments: [String]) async throws -> InteractiveCLI {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        var errPipe: [Int32] = [-1, -1]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0, pipe(&errPipe) == 0 else { throw PrerequisiteMissing("pipe failed") }
        _ = fcntl(inPipe[1], F_SETFD, FD_CLOEXEC)
        _ = fcntl(outPipe[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(errPipe[0], F_SETFD, FD_CLOEXEC)
        let errorEnd = FileDescriptor(rawValue: errPipe[1])
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        let readEnd = FileDescriptor(rawValue: inPipe[0])
        let writeEnd = FileDescriptor(rawValue: outPipe[1])
        let finished = Task<Int32, Never> {
            do {
                let result = try await Subprocess.run(
                    .path(FilePath(CLI.binary)), arguments: Arguments(arguments),
                    input: .fileDescriptor(readEnd, closeAfterSpawningProcess: true),
                    output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true),
                    error: .fileDescriptor(errorEnd, closeAfterSpawningProcess: true)
                ) { execution in
                    pidContinuation.yield(execution.processIdentifier.value)
                    pidContinuation.finish()
                }
                return CLI.status(result.terminationStatus)
            } catch {
                pidContinuation.finish()
                return -1
            }
        }
        var iterator = pids.makeAsyncIterator()
        guard let pid = await iterator.next() else { throw PrerequisiteMissing("microvm did not start: \(CLI.binary)") }
        let process = InteractiveCLI(pid: pid, input: inPipe[1], finished: finished)
        let fd = outPipe[0]
        EndToEnd.readLines(from: fd) { line in process.output.withLock { $0.append(line) } }
        EndToEnd.readLines(from: errPipe[0], { line in process.errorOutput.withLock { $0.append(line) } }, end: { process.errorClosed.withLock { $0 = true } })
        return process
    }

    var lines: [String] { output.withLock { $0 } }
    /// What it wrote on standard error (notes and errors).
    var errorLines: [String] { errorOutput.withLock { $0 } }

    func write(_ text: String) {
        _ = text.utf8CString.withUnsafeBufferPointer { Glibc.write(input, $0.baseAddress, $0.count - 1) }
    }

    func closeInput() {
        if inputOpen.withLock({ open in defer { open = false }; return open }) { close(input) }
    }

    func signal(_ number: Int32) {
        kill(pid, number)
    }

    /// Waits for a line containing `text`; nil on timeout.
    func waitForLine(containing text: String, timeout: Duration = .seconds(10)) async -> String? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = lines.first(where: { $0.contains(text) }) { return line }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return nil
    }

    /// The exit status, once it has exited (SIGKILL after `timeout`).
    func exitStatus(timeout: Duration = .seconds(20)) async -> Int32 {
        let watchdog = Task {
            try await Task.sleep(for: timeout)
            kill(pid, SIGKILL)
        }
        defer { watchdog.cancel() }
        let status = await finished.value
        closeInput()
        // Its last words on standard error are read (the VM's monitor does not hold that pipe).
        let deadline = ContinuousClock.now + .seconds(2)
        while !errorClosed.withLock({ $0 }), ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(10)) }
        return status
    }
}
