import ArgumentParser
import Dispatch
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import Synchronization
import SystemPackage

/// A chatty guest read for a while: what reading its console costs the host, per KiB, through
/// the library (in this process), through a VM's monitor (detached VMs), and for raw
/// Firecracker's stdout read by a plain thread.
///
/// The test guest beats every millisecond, about 20 KiB/s of console, and Firecracker writes
/// the serial port one byte per `write(2)`: the reading side wakes for nearly every byte, as it
/// would for a guest kernel's boot messages. Series are shuffled in each round.
struct ConsoleBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "A chatty guest's console: CPU per KiB read, library vs monitor vs raw stdout.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Rounds (each series once per round, shuffled).") var rounds = 3
    @Option(help: "Seconds measured per series and round (after a second of warm-up).") var seconds = 4

    static let arguments = ["console=ttyS0", "microvm.heartbeat_ms=1"]

    /// One series' measurement: console bytes read, and CPU time of the reading side and of
    /// Firecracker over the same window.
    struct Window {
        var bytes: Int
        var reader: Duration
        var firecracker: Duration
        var elapsed: Duration
    }

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let kernel = try assets.kernelPath
        guard let monitor = MonitorSettings.locate(environment: ProcessInfo.processInfo.environment) else {
            throw ValidationError("microvm-monitor not found beside microvm-bench; swift build builds it")
        }
        let workspace = try BenchWorkspace("console")
        defer { workspace.remove() }
        var inProcess = try assets.driverConfiguration(policy: .disabled, chrootBase: workspace.jails)
        inProcess.stateStore = StateStore(root: FilePath(workspace.directory + "/state"))
        var monitored = inProcess
        monitored.monitor = monitor
        let configPath = workspace.directory + "/vm.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"\(kernel)","boot_args":"\(Self.arguments.joined(separator: " "))"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[]}
            """.utf8
        ).write(to: URL(fileURLWithPath: configPath))
        let spec = VMSpec(id: "console", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: kernel, args: Self.arguments))
        let logger = quietLogger()

        var results: [String: [Window]] = [:]
        for round in 1...rounds {
            for series in ["raw", "library", "monitor"].shuffled() {
                let id = "console-\(round)-\(series)"
                switch series {
                case "raw":
                    results[series, default: []].append(try await rawWindow(firecracker: firecracker, config: configPath))
                case "library":
                    let vm = try await MicroVM.run(spec.renamed(id), configuration: inProcess, logger: logger)
                    results[series, default: []].append(try await libraryWindow(vm, monitorPID: nil))
                    await vm.kill()
                default:
                    let vm = try await MicroVM.run(spec.renamed(id), configuration: monitored, logger: logger)
                    let monitorPID = try monitored.stateStore.read(id: id).monitorPID
                    results[series, default: []].append(try await libraryWindow(vm, monitorPID: monitorPID))
                    await vm.kill()
                }
            }
        }

        func microseconds(_ value: Duration) -> Double {
            Double(value.components.seconds) * 1e6 + Double(value.components.attoseconds) / 1e12
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        print("chatty guest console (heartbeat every 1 ms), \(rounds) rounds of \(seconds) s, medians")
        print("series".padding(toLength: 58, withPad: " ", startingAt: 0) + "KiB/s   reader CPU us/KiB   Firecracker CPU us/KiB")
        let labels = [
            ("raw", "raw firecracker stdout, a plain reading thread"), ("library", "library (MicroVM console, this process)"),
            ("monitor", "monitor (detached VM: its monitor + this driver)"),
        ]
        var readerCost: [String: Double] = [:]
        for (key, label) in labels {
            let windows = results[key] ?? []
            guard !windows.isEmpty else { continue }
            let rate = median(windows.map { Double($0.bytes) / 1024 / (microseconds($0.elapsed) / 1e6) })
            let reader = median(windows.map { microseconds($0.reader) / (Double($0.bytes) / 1024) })
            let vmm = median(windows.map { microseconds($0.firecracker) / (Double($0.bytes) / 1024) })
            readerCost[key] = reader
            print(
                label.padding(toLength: 58, withPad: " ", startingAt: 0) + String(format: "%5.1f   %17.0f   %22.0f", rate, reader, vmm))
        }
        if let raw = readerCost["raw"], raw > 0 {
            for key in ["library", "monitor"] {
                if let cost = readerCost[key] { print(String(format: "  %@ / raw reader CPU per KiB: %.2fx", key, cost / raw)) }
            }
        }
    }

    /// Raw Firecracker, its stdout read on a plain thread that counts bytes.
    private func rawWindow(firecracker: String, config: String) async throws -> Window {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw CocoaError(.fileWriteUnknown) }
        let readEnd = fds[0]
        let writeEnd = FileDescriptor(rawValue: fds[1])
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        let termination = Task {
            _ = try? await Subprocess.run(
                .path(FilePath(firecracker)), arguments: ["--no-api", "--config-file", config, "--log-path", "/dev/null"],
                environment: .custom(InheritedEnvironment.entries), input: .none,
                output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true), error: .discarded
            ) { execution in
                pidContinuation.yield(execution.processIdentifier.value)
                pidContinuation.finish()
            }
        }
        let bytes = Atomic<Int>(0)
        let readerDone = DispatchSemaphore(value: 0)
        let marks = Mutex<[Duration]>([])
        let markRequest = Atomic<Int>(0)
        Thread.detachNewThread {
            defer {
                close(readEnd)
                readerDone.signal()
            }
            var buffer = [UInt8](repeating: 0, count: 4096)
            var marked = 0
            while true {
                let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if count <= 0 { return }
                bytes.add(count, ordering: .relaxed)
                // The reading thread's own CPU time, sampled when asked (it is the raw reader's
                // whole cost; this process's other threads are idle meanwhile).
                if markRequest.load(ordering: .acquiring) > marked {
                    marked += 1
                    marks.withLock { $0.append(Self.threadCPUTime()) }
                }
            }
        }
        var iterator = pids.makeAsyncIterator()
        let pid = await iterator.next() ?? -1
        try await Task.sleep(for: .seconds(1))
        func mark() async throws -> (Duration, Int, Duration, ContinuousClock.Instant) {
            let before = marks.withLock { $0.count }
            markRequest.add(1, ordering: .releasing)
            while marks.withLock({ $0.count }) == before { try await Task.sleep(for: .milliseconds(1)) }
            return (marks.withLock { $0.last! }, bytes.load(ordering: .relaxed), ProcFS.cpuTime(of: pid) ?? .zero, .now)
        }
        let start = try await mark()
        try await Task.sleep(for: .seconds(seconds))
        let end = try await mark()
        kill(pid, SIGKILL)
        await termination.value
        readerDone.wait()
        return Window(bytes: end.1 - start.1, reader: end.0 - start.0, firecracker: end.2 - start.2, elapsed: end.3 - start.3)
    }

    /// A VM of the library: console bytes from its heartbeats' numbers; the reading side's CPU
    /// is this whole process's (and the monitor's, for a detached VM).
    private func libraryWindow(_ vm: MicroVM, monitorPID: Int32?) async throws -> Window {
        _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 100", timeout: .seconds(10))
        try await Task.sleep(for: .seconds(1))
        func mark() async -> (Int, Duration, Duration, ContinuousClock.Instant) {
            let beat = Self.lastHeartbeat(await vm.console.recentLines)
            let monitor = monitorPID.flatMap { ProcFS.cpuTime(of: $0) } ?? .zero
            return (beat, Self.processCPUTime() + monitor, ProcFS.cpuTime(of: vm.pid) ?? .zero, .now)
        }
        let start = await mark()
        try await Task.sleep(for: .seconds(seconds))
        let end = await mark()
        let bytes = ((start.0 + 1)...max(start.0 + 1, end.0)).reduce(0) { $0 + "microvm-guest: heartbeat \($1)\n".utf8.count }
        return Window(bytes: bytes, reader: end.1 - start.1, firecracker: end.2 - start.2, elapsed: end.3 - start.3)
    }

    static func lastHeartbeat(_ lines: [Console.Line]) -> Int {
        lines.compactMap { line -> Int? in
            guard let range = line.text.range(of: "microvm-guest: heartbeat ") else { return nil }
            return Int(line.text[range.upperBound...])
        }.last ?? 0
    }

    static func processCPUTime() -> Duration { cpuTime(RUSAGE_SELF.rawValue) }
    /// `RUSAGE_THREAD` (1 on Linux; Glibc exports it only with `_GNU_SOURCE`).
    static func threadCPUTime() -> Duration { cpuTime(1) }

    private static func cpuTime(_ who: Int32) -> Duration {
        var usage = rusage()
        getrusage(__rusage_who_t(who), &usage)
        func duration(_ value: timeval) -> Duration { .seconds(value.tv_sec) + .microseconds(value.tv_usec) }
        return duration(usage.ru_utime) + duration(usage.ru_stime)
    }
}

extension VMSpec {
    fileprivate func renamed(_ id: String) -> VMSpec {
        var spec = self
        spec.id = id
        return spec
    }
}
