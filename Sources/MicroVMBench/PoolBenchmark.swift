import ArgumentParser
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Synchronization
import SystemPackage

/// A VM from a warm pool against a restore made on demand, and against raw Firecracker's own
/// restore, each timed from the request to the guest's first reaction: a line written to its
/// serial input, echoed on its console.
struct PoolBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pool", abstract: "Warm pool acquire vs restore on demand vs raw restore, to the guest's first reaction.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "VMs taken per series.") var runs = 30
    @Option(help: "Paused VMs the pool keeps.") var size = 2

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let kernel = try assets.kernelPath
        let workspace = try BenchWorkspace("pool")
        defer { workspace.remove() }
        let (directory, base) = (workspace.directory, workspace.jails)
        let logger = quietLogger()
        let spec = VMSpec(
            id: "pool-source", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: kernel, args: ["console=ttyS0", "microvm.heartbeat_ms=1000"]))

        // One snapshot of the booted guest, for every series.
        let unjailed = try assets.driverConfiguration(policy: .disabled, chrootBase: base)
        let source = try await MicroVM.run(spec, configuration: unjailed, logger: logger)
        _ = try await source.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
        let snapshot = try await source.snapshot(to: FilePath(directory + "/snapshot"))
        await source.kill()

        var raw = Samples()
        var rawResume = Samples()
        var onDemand = [SandboxPolicy.disabled: Samples(), .required: Samples()]
        var pooled = [SandboxPolicy.disabled: Samples(), .required: Samples()]
        var acquire = [SandboxPolicy.disabled: Samples(), .required: Samples()]

        // Raw: exec firecracker, load the snapshot, write a line, until its echo. Once with the
        // load resuming the guest (a restore on demand), once with it restored paused
        // beforehand and timed from `PATCH /vm Resumed` (what a raw pool would do).
        for round in 0..<runs {
            for paused in [false, true] {
                let socket = directory + "/raw-\(round).sock"
                var fds: [Int32] = [-1, -1]
                guard pipe(&fds) == 0 else { throw ValidationError("pipe: errno \(errno)") }
                let inputWrite = fds[1]
                defer { close(inputWrite) }
                let resumedAt = Mutex<ContinuousClock.Instant?>(nil)
                let text = "raw-\(round)-\(paused)"
                let restored = try await RawLaunch.untilBanner(
                    executable: firecracker, arguments: ["--api-sock", socket, "--log-path", "/dev/null"],
                    banner: "microvm-guest: echo \(text)", input: FileDescriptor(rawValue: fds[0])
                ) {
                    let client = FirecrackerClient(socketPath: socket)
                    try await client.waitUntilReady(initialBackoff: .microseconds(500), maximumBackoff: .milliseconds(2))
                    try await client.loadSnapshot(
                        SnapshotLoadParams(snapshotPath: snapshot.statePath.string, memBackend: .file(snapshot.memoryPath.string), resumeVm: !paused))
                    if paused {
                        try await Task.sleep(for: .milliseconds(20))
                        resumedAt.withLock { $0 = ContinuousClock.now }
                        try await client.resume()
                    }
                    await client.close()
                    let line = Array((text + "\n").utf8)
                    _ = line.withUnsafeBytes { write(inputWrite, $0.baseAddress, $0.count) }
                }
                if let resumed = resumedAt.withLock({ $0 }) { rawResume.append(restored.found - resumed) } else { raw.append(restored.elapsed) }
                kill(restored.pid, SIGKILL)
                await restored.termination.value
                unlink(socket)
            }
        }

        for policy in [SandboxPolicy.disabled, .required] {
            let configuration = try assets.driverConfiguration(policy: policy, chrootBase: base)
            let tag = policy.rawValue.prefix(3)
            // On demand: restore (resume), write, until the echo.
            for round in 0..<runs {
                let start = ContinuousClock.now
                let vm = try await MicroVM.restore(snapshot, id: "cold-\(tag)-\(round)", configuration: configuration, logger: logger)
                try await Self.react(vm, "cold-\(round)")
                onDemand[policy]!.append(ContinuousClock.now - start)
                await vm.kill()
            }
            // Pooled: acquire, write, until the echo; the pool refilled between takes, as a
            // pool sized for its load is.
            let pool = try WarmPool(
                snapshot: snapshot, size: size, idPrefix: "pool-\(tag)", provider: FirecrackerProvider(configuration: configuration, logger: logger),
                logger: logger)
            try await pool.start()
            for round in 0..<runs {
                while await pool.statistics.ready < size { try await Task.sleep(for: .milliseconds(5)) }
                let start = ContinuousClock.now
                let vm = try await pool.acquire()
                acquire[policy]!.append(ContinuousClock.now - start)
                try await Self.react(vm, "warm-\(round)")
                pooled[policy]!.append(ContinuousClock.now - start)
                await vm.kill()
            }
            let statistics = await pool.statistics
            await pool.shutdown()
            if statistics.coldRestores > 0 || statistics.discarded > 0 { print("pool \(policy): \(statistics)") }
        }

        print("a VM from a \(snapshot.spec.machine.memoryMiB) MiB snapshot, request to the guest's echo, \(runs) runs (ms)   p50      p95     mean")
        let rows: [(String, Samples)] = [
            ("raw firecracker: exec + load (resume) + write", raw),
            ("raw firecracker restored paused: PATCH /vm Resumed + write", rawResume),
            ("library unjailed: restore + write", onDemand[.disabled]!),
            ("library jailed: restore + write", onDemand[.required]!),
            ("pool unjailed: acquire + write", pooled[.disabled]!),
            ("pool jailed: acquire + write", pooled[.required]!),
            ("  pool unjailed: acquire alone", acquire[.disabled]!),
            ("  pool jailed: acquire alone", acquire[.required]!),
        ]
        for (name, samples) in rows {
            print(
                "\(name.padding(toLength: 72, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8)) \(Samples.milliseconds(samples.mean).leftPad(8))"
            )
        }
        for policy in [SandboxPolicy.disabled, .required] {
            let name = policy == .disabled ? "unjailed" : "jailed"
            print(
                "pool \(name) / raw restore (p50): \(String(format: "%.2fx", pooled[policy]!.percentile(50) / raw.percentile(50)))"
                    + "; / raw resume of a paused restore: \(String(format: "%.2fx", pooled[policy]!.percentile(50) / rawResume.percentile(50)))")
        }
    }

    /// Writes `text` to the guest's serial input and waits for its echo.
    static func react(_ vm: MicroVM, _ text: String) async throws {
        vm.write(text + "\n")
        _ = try await vm.console.waitForLine(containing: "microvm-guest: echo \(text)", timeout: .seconds(10))
    }
}
