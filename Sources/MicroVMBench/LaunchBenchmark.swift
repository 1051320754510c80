import ArgumentParser
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage

/// Launch to the guest's banner line: the library's jailed and unjailed paths beside the raw
/// `firecracker --config-file` and `jailer ... -- --config-file` baselines, in one run.
struct LaunchBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch", abstract: "Jailed vs unjailed launch to the guest banner, vs raw baselines.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Launches per series.") var runs = 20
    @Option(help: "uid the jailed VMM runs as.") var uid: UInt32 = 123
    @Option(help: "gid the jailed VMM runs as.") var gid: UInt32 = 100

    static let banner = "microvm-guest: banner"
    static let bootArgs = "console=ttyS0 microvm.heartbeat_ms=0"
    static let guest = GuestResources(memoryMiB: 64, vcpuCount: 1)
    static let limits = ResourceLimits(memory: .automatic, pids: 64)

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let jailer = try assets.jailerPath
        let kernel = try assets.kernelPath
        let directory = NSTemporaryDirectory() + "microvm-bench-launch-\(getpid())"
        let base = directory + "/jails"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        let parent = "microvm-bench-\(getpid())"
        let configuration = JailerConfiguration(
            jailerBinary: FilePath(jailer), firecrackerBinary: FilePath(firecracker), uid: uid, gid: gid,
            chrootBase: FilePath(base), parentCgroup: parent)
        let logger = quietLogger()
        var cgroupParents: Set<String> = []
        defer {
            for parent in cgroupParents { rmdir(parent) }
            try? FileManager.default.removeItem(atPath: directory)
        }
        let configPath = directory + "/vm.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"\(kernel)","boot_args":"\(Self.bootArgs)"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[]}
            """.utf8
        ).write(to: URL(fileURLWithPath: configPath))
        let jailedConfig = directory + "/vm-jailed.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"/guest.elf","boot_args":"\(Self.bootArgs)"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[]}
            """.utf8
        ).write(to: URL(fileURLWithPath: jailedConfig))

        var rawUnjailed = Samples()
        var rawJailed = Samples()
        var libraryUnjailed = Samples()
        var libraryJailed = Samples()
        var jailedTeardown = Samples()

        for round in 0..<runs {
            // 1. Raw: exec firecracker with a config file, read stdout until the banner.
            do {
                let log = directory + "/raw.log"
                _ = FileManager.default.createFile(atPath: log, contents: nil)
                let start = ContinuousClock.now
                let process = try await VMMProcess.launch(
                    executable: FilePath(firecracker),
                    arguments: ["--no-api", "--config-file", configPath, "--log-path", log], logger: logger)
                _ = try await process.console.waitForLine(containing: Self.banner, timeout: .seconds(10))
                rawUnjailed.append(ContinuousClock.now - start)
                await process.terminate(grace: .seconds(1))
            }
            // 2. Raw jailer: files staged beforehand (as a script would), then exec the jailer.
            do {
                let jail = try Jail(configuration: configuration, id: try VMIdentifier("raw-\(round)"))
                try await jail.prepare(logger: logger)
                _ = try jail.stage(
                    [.readOnly(FilePath(kernel), at: "/guest.elf"), .readOnly(FilePath(jailedConfig), at: "/vm.json"),
                     .emptyFile(at: "/fc.log")], logger: logger)
                let command = try jail.command(
                    limits: Self.limits, guest: Self.guest,
                    firecrackerArguments: JailerCommand.firecrackerArguments(
                        apiSocket: nil, configFile: "/vm.json", logPath: "/fc.log"))
                cgroupParents.formUnion(command.cgroupDirectories(on: jail.cgroupHost).map { ($0 as NSString).deletingLastPathComponent })
                let start = ContinuousClock.now
                let process = try await VMMProcess.launch(
                    executable: command.executable, arguments: command.arguments, logger: logger)
                _ = try await process.console.waitForLine(containing: Self.banner, timeout: .seconds(10))
                rawJailed.append(ContinuousClock.now - start)
                let report = await jail.teardown(logger: logger)
                if !report.isComplete { print("raw jail teardown incomplete: \(report.failures)") }
            }
            // 3. Library, unjailed: start, configure through the API, InstanceStart.
            do {
                let log = directory + "/lib.log"
                _ = FileManager.default.createFile(atPath: log, contents: nil)
                let start = ContinuousClock.now
                let vm = try await FirecrackerInstance.start(
                    firecracker: FilePath(firecracker), socketPath: directory + "/api.sock",
                    arguments: ["--log-path", log], logger: logger)
                try await configure(vm.client, kernel: kernel)
                _ = try await vm.process.console.waitForLine(containing: Self.banner, timeout: .seconds(10))
                libraryUnjailed.append(ContinuousClock.now - start)
                await vm.kill()
            }
            // 4. Library, jailed: prepare, stage, jailer, pid file, API readiness, configure, start.
            do {
                let jail = try Jail(configuration: configuration, id: try VMIdentifier("lib-\(round)"))
                let start = ContinuousClock.now
                let vm = try await JailedFirecracker.start(
                    jail: jail, limits: Self.limits, guest: Self.guest,
                    staging: [.readOnly(FilePath(kernel), at: "/guest.elf"), .emptyFile(at: "/fc.log")],
                    firecrackerArguments: JailerCommand.firecrackerArguments(logPath: "/fc.log"), logger: logger)
                try await configure(vm.client, kernel: "/guest.elf")
                _ = try await vm.console.waitForLine(containing: Self.banner, timeout: .seconds(10))
                libraryJailed.append(ContinuousClock.now - start)
                cgroupParents.formUnion(vm.command.cgroupDirectories(on: jail.cgroupHost).map { ($0 as NSString).deletingLastPathComponent })
                let teardownStart = ContinuousClock.now
                let (_, report) = await vm.kill()
                jailedTeardown.append(ContinuousClock.now - teardownStart)
                if !report.isComplete { print("jail teardown incomplete: \(report.failures)") }
            }
        }

        print("launch to guest banner, \(runs) runs each (ms)        p50      p95")
        for (name, samples) in [
            ("raw firecracker --config-file", rawUnjailed), ("raw jailer -- --config-file", rawJailed),
            ("library unjailed (API config)", libraryUnjailed), ("library jailed (API config)", libraryJailed),
            ("library jailed teardown (kill+clean)", jailedTeardown),
        ] {
            print("\(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8))")
        }
        let ratio = seconds(libraryJailed.percentile(50)) / max(seconds(rawJailed.percentile(50)), 1e-9)
        print(String(format: "library jailed / raw jailer (p50): %.2fx (target <= 1.5x)", ratio))
    }

    private func configure(_ client: FirecrackerClient, kernel: String) async throws {
        try await client.putBootSource(BootSource(kernelImagePath: kernel, bootArgs: Self.bootArgs))
        try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 64))
        try await client.startInstance()
    }

    private func seconds(_ value: Duration) -> Double {
        Double(value.components.seconds) + Double(value.components.attoseconds) / 1e18
    }
}
