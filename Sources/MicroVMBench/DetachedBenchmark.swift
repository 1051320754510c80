import ArgumentParser
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import SystemPackage

/// Detached VMs: what the per-VM monitor costs (its start, its memory), launch to the banner
/// under it beside the in-process launch, and how long a new driver takes to reattach to a
/// fleet of live VMs that another process created.
struct DetachedBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "detached", abstract: "The per-VM monitor: start cost, RSS, launch under it vs in-process, reattach of N live VMs.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Launches per series.") var runs = 20
    @Option(help: "Live VMs a new driver reattaches to.") var fleet = 50

    func run() async throws {
        let kernel = try assets.kernelPath
        guard let monitor = MonitorSettings.locate(environment: ProcessInfo.processInfo.environment) else {
            throw ValidationError("microvm-monitor not found beside microvm-bench; swift build builds it")
        }
        let workspace = try BenchWorkspace("detached")
        defer { workspace.remove() }
        let (directory, base) = (workspace.directory, workspace.jails)
        var inProcess = try assets.driverConfiguration(policy: .required, chrootBase: base)
        inProcess.stateStore = StateStore(root: FilePath(directory + "/state"))
        var monitored = inProcess
        monitored.monitor = monitor
        let logger = quietLogger()

        // 1. The monitor alone: exec to its one line ("vmm PID"), with /bin/true as the VMM.
        var monitorStart = Samples()
        for round in 0..<runs {
            let scratch = directory + "/monitor-\(round)"
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            let launch = try await RawLaunch.untilBanner(
                executable: monitor.binary.string, arguments: ["--dir", scratch, "--", "/bin/true"], banner: "vmm ")
            monitorStart.append(launch.elapsed)
            await launch.termination.value
        }

        // 2. Launch to the banner, jailed: the raw jailer, in-process, under the monitor, interleaved.
        let (_, rawConfig) = try LaunchBenchmark.writeRawConfigurations(in: directory, kernel: kernel)
        var launchRaw = Samples()
        var launchInProcess = Samples()
        var launchMonitored = Samples()
        for round in 0..<runs {
            // A rotating order, as in the launch benchmark.
            for series in (0..<3).map({ ($0 + round) % 3 }) {
                if series == 0 {
                    launchRaw.append(
                        try await LaunchBenchmark.rawJailedLaunch(
                            id: "raw-\(round)", configuration: inProcess, kernel: kernel, configFile: rawConfig, logger: logger))
                    continue
                }
                let spec = VMSpec(
                    id: "det-\(series)-\(round)", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: kernel, args: LaunchBenchmark.bootArgs),
                    limits: .init(pids: 64))
                let start = ContinuousClock.now
                let vm = try await MicroVM.run(spec, configuration: series == 1 ? inProcess : monitored, logger: logger)
                _ = try await vm.console.waitForLine(containing: LaunchBenchmark.banner, timeout: .seconds(10))
                if series == 1 { launchInProcess.append(ContinuousClock.now - start) } else { launchMonitored.append(ContinuousClock.now - start) }
                await vm.kill()
            }
        }

        // 3. A fleet created by another process (`microvm run -d`), then reattached here.
        let cli = FilePath(monitor.binary.string).removingLastComponent().appending("microvm").string
        var ids: [String] = []
        for index in 0..<fleet {
            let id = "fleet-\(index)"
            let result = try await Subprocess.run(
                .path(FilePath(cli)),
                arguments: [
                    "run", "-d", "--id", id, "--kernel", kernel, "--boot-arg", "console=ttyS0", "--boot-arg", "microvm.heartbeat_ms=1000",
                    "--memory", "64", "--pids", "64", "--state-dir", monitored.stateStore.root.string, "--chroot-base", base,
                    "--parent-cgroup", monitored.jailer.parentCgroup ?? "microvm", "--jailer", try assets.jailerPath,
                    "--firecracker", try assets.firecrackerPath,
                ], output: .discarded, error: .string(limit: 4096))
            guard result.terminationStatus.isSuccess else {
                print("microvm run -d \(id) failed: \(result.standardError)")
                break
            }
            ids.append(id)
        }
        var memory: [(rss: Int, anonymous: Int, pss: Int)] = []
        for listing in MicroVM.list(configuration: monitored) {
            guard let pid = listing.record?.monitorPID else { continue }
            memory.append(Self.memory(of: pid))
        }
        let listStart = ContinuousClock.now
        let listed = MicroVM.list(configuration: monitored)
        let listTime = ContinuousClock.now - listStart
        var attach = Samples()
        var attached: [MicroVM] = []
        let fleetStart = ContinuousClock.now
        for listing in listed where listing.process.isAlive {
            let start = ContinuousClock.now
            let vm = try await MicroVM.attach(id: listing.id, configuration: monitored, logger: logger)
            attach.append(ContinuousClock.now - start)
            attached.append(vm)
        }
        let fleetTime = ContinuousClock.now - fleetStart
        var echoed = 0
        for vm in attached {
            vm.write("ping\n")
            if (try? await vm.console.waitForLine(containing: "microvm-guest: echo ping", timeout: .seconds(5))) != nil { echoed += 1 }
        }
        await withTaskGroup(of: Void.self) { group in
            for vm in attached { group.addTask { _ = await vm.kill() } }
        }
        let left = MicroVM.list(configuration: monitored).count

        print("per-VM monitor, \(runs) runs (ms)                         p50      p95")
        for (name, samples) in [
            ("monitor exec to its first line", monitorStart), ("raw jailer -- --config-file to banner", launchRaw),
            ("jailed launch to banner, in-process", launchInProcess),
            ("jailed launch to banner, under the monitor", launchMonitored),
        ] {
            print("\(name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8))")
        }
        func median(_ values: [Int]) -> Int { values.sorted()[values.count / 2] }
        if !memory.isEmpty {
            print(
                "monitor memory, \(memory.count) monitors (KiB, median): RSS \(median(memory.map(\.rss))), anonymous \(median(memory.map(\.anonymous))), PSS \(median(memory.map(\.pss)))"
            )
        }
        print("reattach: \(attached.count) of \(ids.count) live VMs; list \(Samples.milliseconds(listTime)) ms; all attached in \(Samples.milliseconds(fleetTime)) ms; per VM p50 \(Samples.milliseconds(attach.percentile(50))) ms, p95 \(Samples.milliseconds(attach.percentile(95))) ms")
        print("console through the monitor after reattach: \(echoed) of \(attached.count) echoed; VMs left after kill: \(left)")
    }

    /// VmRSS and RssAnon (status) and Pss (smaps_rollup) of a process, in KiB.
    static func memory(of pid: Int32) -> (rss: Int, anonymous: Int, pss: Int) {
        func field(_ file: String, _ name: String) -> Int {
            guard let text = try? String(contentsOfFile: "/proc/\(pid)/\(file)", encoding: .utf8) else { return 0 }
            for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
                return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
            }
            return 0
        }
        return (field("status", "VmRSS"), field("status", "RssAnon"), field("smaps_rollup", "Pss"))
    }
}
