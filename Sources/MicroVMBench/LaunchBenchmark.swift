import ArgumentParser
import FirecrackerAPI
import Foundation
import Logging
import MicroVM
import MicroVMHost
import SystemPackage

/// Launch to the guest's banner line: the library's jailed and unjailed paths beside the raw
/// `firecracker --config-file` and `jailer ... -- --config-file` baselines, in one run.
struct LaunchBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch", abstract: "Jailed vs unjailed launch to the guest banner, vs raw baselines.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Launches per series (fewer than a few hundred are noisy on a small host).") var runs = 200
    @Option(
        name: .customLong("directory"),
        help: """
            Where the jails, the raw runs' files and (when given) the driver's state root go; the \
            guest kernel is copied there first. Default: $TMPDIR, with the driver's default state \
            root. On a tmpfs the figures leave out the filesystem's inode allocation.
            """)
    var scratch: String?
    @Option(
        help: """
            The series to run, comma-separated (raw, raw-api, raw-jailer, unjailed, jailed, cli, \
            cli-jailed), for profiling one of them. Default: the first five, as the comparison \
            needs. cli and cli-jailed time the command line as a user runs it: `microvm run` \
            (the `microvm` beside this binary) from its exec to the banner on its stdout.
            """)
    var series = "raw,raw-api,raw-jailer,unjailed,jailed"

    static let banner = "microvm-guest: banner"
    static let bootArgs = ["console=ttyS0", "microvm.heartbeat_ms=0"]
    static let guest = GuestResources(memoryMiB: 64, vcpuCount: 1)
    static let limits = ResourceLimits(memory: .automatic, pids: 64)

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let workspace = try BenchWorkspace("launch", under: scratch ?? NSTemporaryDirectory())
        let (directory, base) = (workspace.directory, workspace.jails)
        var kernel = try assets.kernelPath
        var jailed = try assets.driverConfiguration(policy: .required, chrootBase: base)
        var unjailed = try assets.driverConfiguration(policy: .disabled, chrootBase: base)
        if scratch != nil {
            // Every series on the one filesystem, the kernel too (staging links it).
            try FileManager.default.copyItem(atPath: kernel, toPath: directory + "/guest.elf")
            kernel = directory + "/guest.elf"
            jailed.stateStore = StateStore(root: FilePath(directory + "/state"))
            unjailed.stateStore = jailed.stateStore
        }
        let logger = quietLogger()
        defer { workspace.remove() }
        let (configPath, jailedConfig) = try Self.writeRawConfigurations(in: directory, kernel: kernel)

        var rawUnjailed = Samples()
        var rawWithAPI = Samples()
        var rawJailed = Samples()
        var libraryUnjailed = Samples()
        var libraryJailed = Samples()
        var jailedTeardown = Samples()
        var commandLine = [Samples(), Samples()]
        /// The driver's CPU time (user + system, all its threads) from the call to the banner.
        var driverCPU = [Samples(), Samples()]
        /// From the call until `MicroVM.run` returns (the VM recorded and running), unjailed and jailed.
        var returned = [Samples(), Samples()]
        var waits = [
            RunQueueWaits(name: "raw firecracker --no-api"), RunQueueWaits(name: "raw firecracker --api-sock"),
            RunQueueWaits(name: "library unjailed"), RunQueueWaits(name: "library jailed"),
        ]
        var phases = [
            LaunchPhases(name: "library unjailed"), LaunchPhases(name: "raw firecracker --api-sock"),
            LaunchPhases(name: "raw jailer"), LaunchPhases(name: "library jailed"), LaunchPhases(name: "raw firecracker --no-api"),
        ]

        // The series run in a new random order each round. A fixed or rotating order gives each
        // series the same predecessor every time, and what a launch leaves to the kernel (a
        // jail's cgroups being offlined, a VM's memory freed) slows whatever comes next: with a
        // rotation, raw `--api-sock` (always after the library's jailed launch) measured 1.1x
        // raw `--no-api`; shuffled, the two are equal.
        let names = ["raw", "raw-jailer", "unjailed", "jailed", "raw-api", "cli", "cli-jailed"]
        let chosen = Set(self.series.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        if let unknown = chosen.first(where: { !names.contains($0) }) {
            throw ValidationError("unknown series '\(unknown)': choose among \(names.joined(separator: ", "))")
        }
        let order = names.indices.filter { chosen.contains(names[$0]) }
        for round in 0..<runs {
            for series in order.shuffled() {
                switch series {
                case 5, 6:
                    // The command line: `microvm run` in the foreground, exec to the banner on its
                    // stdout; SIGTERM then stops the VM (not timed).
                    let isJailed = series == 6
                    var arguments = [
                        "run", "--id", "cli-\(series)-\(round)", "--no-stdin", "--kernel", kernel, "--memory", "64", "--vcpus", "1",
                        "--pids", "64", "--chroot-base", base, "--parent-cgroup", jailed.jailer.parentCgroup ?? "microvm-bench",
                        "--firecracker", firecracker, "--jailer", try assets.jailerPath, "--uid", "123", "--gid", "100",
                        "--sandbox", isJailed ? "required" : "disabled", "--state-dir", jailed.stateStore.root.string,
                    ]
                    for argument in Self.bootArgs { arguments += ["--boot-arg", argument] }
                    let launch = try await RawLaunch.untilBanner(executable: Self.commandLine, arguments: arguments, banner: Self.banner)
                    commandLine[isJailed ? 1 : 0].append(launch.elapsed)
                    kill(launch.pid, SIGTERM)
                    await launch.termination.value
                case 4:
                    // Raw with its API server up, as the library's VMs have it: the part of the
                    // gap that is Firecracker's own (the API socket and its thread).
                    let log = directory + "/raw-api.log"
                    let socket = directory + "/raw-api.socket"
                    unlink(socket)
                    _ = FileManager.default.createFile(atPath: log, contents: nil)
                    let wallStart = Date()
                    let launch = try await RawLaunch.untilBanner(
                        executable: firecracker, arguments: ["--api-sock", socket, "--config-file", configPath, "--log-path", log],
                        banner: Self.banner)
                    rawWithAPI.append(launch.elapsed)
                    waits[1].record(pid: launch.pid)
                    phases[1].append(start: wallStart, banner: launch.elapsed, log: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
                    kill(launch.pid, SIGKILL)
                    await launch.termination.value
                    unlink(socket)
                case 0:
                    // Raw: exec firecracker with a config file, read stdout until the banner.
                    let log = directory + "/raw.log"
                    _ = FileManager.default.createFile(atPath: log, contents: nil)
                    let wallStart = Date()
                    let launch = try await RawLaunch.untilBanner(
                        executable: firecracker, arguments: ["--no-api", "--config-file", configPath, "--log-path", log],
                        banner: Self.banner)
                    rawUnjailed.append(launch.elapsed)
                    waits[0].record(pid: launch.pid)
                    phases[4].append(start: wallStart, banner: launch.elapsed, log: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "")
                    kill(launch.pid, SIGKILL)
                    await launch.termination.value
                case 1:
                    // Raw jailer: files staged beforehand (as a script would), then exec the jailer.
                    rawJailed.append(
                        try await Self.rawJailedLaunch(
                            id: "raw-\(round)", configuration: jailed, kernel: kernel, configFile: jailedConfig, logger: logger,
                            firecrackerLog: { phases[2].append(start: $0, banner: $1, log: $2) }))
                default:
                    // The library: validate, stage, launch (config file), banner on the console.
                    let isJailed = series == 3
                    let spec = VMSpec(
                        id: "lib-\(series)-\(round)", machine: .init(vcpus: 1, memoryMiB: 64),
                        boot: .init(kernel: kernel, args: Self.bootArgs), limits: .init(pids: 64))
                    let wallStart = Date()
                    let cpuBefore = FleetBenchmark.cpuMilliseconds()
                    let start = ContinuousClock.now
                    let vm = try await MicroVM.run(spec, configuration: isJailed ? jailed : unjailed, logger: logger)
                    returned[isJailed ? 1 : 0].append(ContinuousClock.now - start)
                    _ = try await vm.console.waitForLine(containing: Self.banner, timeout: .seconds(10))
                    let elapsed = ContinuousClock.now - start
                    driverCPU[isJailed ? 1 : 0].append(.nanoseconds(Int64((FleetBenchmark.cpuMilliseconds() - cpuBefore) * 1e6)))
                    if isJailed { libraryJailed.append(elapsed) } else { libraryUnjailed.append(elapsed) }
                    waits[isJailed ? 3 : 2].record(pid: vm.pid)
                    phases[isJailed ? 3 : 0].append(
                        start: wallStart, banner: elapsed, log: await vm.firecrackerLog.recentLines.map(\.raw).joined(separator: "\n"))
                    let teardownStart = ContinuousClock.now
                    await vm.kill()
                    if isJailed { jailedTeardown.append(ContinuousClock.now - teardownStart) }
                    if let report = await vm.teardown, !report.isComplete { print("teardown incomplete: \(report.failures)") }
                }
            }
        }

        print("launch to guest banner, \(runs) runs each (ms)        p50      p95     mean")
        for (name, samples) in [
            ("raw firecracker --no-api --config-file", rawUnjailed),
            ("raw firecracker --api-sock --config-file", rawWithAPI), ("raw jailer -- --config-file", rawJailed),
            ("library unjailed (MicroVM.run)", libraryUnjailed), ("library jailed (MicroVM.run)", libraryJailed),
            ("library jailed teardown (kill+clean)", jailedTeardown),
            ("cli unjailed (microvm run)", commandLine[0]), ("cli jailed (microvm run)", commandLine[1]),
        ] where !samples.values.isEmpty {
            print("\(name.padding(toLength: 44, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8)) \(Samples.milliseconds(samples.mean).leftPad(8))")
        }
        /// "a / b" by p50 and by mean, when both series ran (`--series` may leave one out).
        func ratio(_ a: Samples, _ b: Samples) -> (p50: Double, mean: Double)? {
            guard !a.values.isEmpty, !b.values.isEmpty else { return nil }
            return (seconds(a.percentile(50)) / max(seconds(b.percentile(50)), 1e-9), seconds(a.mean) / max(seconds(b.mean), 1e-9))
        }
        /// The ratio's 95% interval over the rounds (``Samples/ratioInterval(_:_:iterations:)``).
        func interval(_ a: Samples, _ b: Samples) -> String {
            guard let range = Samples.ratioInterval(a, b) else { return "" }
            return String(format: " [%.2f-%.2f, 95%% bootstrap over the rounds]", range.low, range.high)
        }
        if let unjailed = ratio(libraryUnjailed, rawUnjailed) {
            print(
                String(format: "library unjailed / raw firecracker (p50): %.2fx", unjailed.p50) + interval(libraryUnjailed, rawUnjailed)
                    + String(format: " (target <= 1.1x); means: %.2fx", unjailed.mean))
        }
        if let api = ratio(rawWithAPI, rawUnjailed) {
            print(String(format: "  raw --api-sock / raw --no-api %.2fx (Firecracker's API server)", api.p50))
        }
        if let overAPI = ratio(libraryUnjailed, rawWithAPI) {
            print(String(format: "  library unjailed / raw --api-sock %.2fx; means: %.2fx", overAPI.p50, overAPI.mean))
        }
        if let jailed = ratio(libraryJailed, rawJailed) {
            print(
                String(format: "library jailed / raw jailer (p50): %.2fx", jailed.p50) + interval(libraryJailed, rawJailed)
                    + String(format: " (target <= 1.1x); means: %.2fx", jailed.mean))
        }
        if let cli = ratio(commandLine[0], rawUnjailed) {
            print(String(format: "cli unjailed / raw firecracker (p50): %.2fx; means: %.2fx", cli.p50, cli.mean))
        }
        if let cli = ratio(commandLine[1], rawJailed) {
            print(String(format: "cli jailed / raw jailer (p50): %.2fx; means: %.2fx", cli.p50, cli.mean))
        }
        print(
            "driver CPU time per launch, call to banner (p50 ms): unjailed \(Samples.milliseconds(driverCPU[0].percentile(50))), jailed \(Samples.milliseconds(driverCPU[1].percentile(50)))")
        print(
            "MicroVM.run returned, from the call (p50 ms): unjailed \(Samples.milliseconds(returned[0].percentile(50))), jailed \(Samples.milliseconds(returned[1].percentile(50)))")
        LaunchPhases.printTable(phases)
        RunQueueWaits.printTable(waits)
    }

    /// The `microvm` built beside this benchmark (its `microvm-monitor` is found beside it).
    static var commandLine: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("microvm").path
    }

    /// The raw baselines' config files: one naming the kernel by its host path (unjailed), one
    /// by the path the raw jailer launch stages it at.
    static func writeRawConfigurations(in directory: String, kernel: String) throws -> (unjailed: String, jailed: String) {
        let bootArgs = Self.bootArgs.joined(separator: " ")
        var paths: [String] = []
        for (name, kernelPath) in [("vm.json", kernel), ("vm-jailed.json", "/guest.elf")] {
            let path = directory + "/" + name
            try Data(
                """
                {"boot-source":{"kernel_image_path":"\(kernelPath)","boot_args":"\(bootArgs)"},
                 "machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[]}
                """.utf8
            ).write(to: URL(fileURLWithPath: path))
            paths.append(path)
        }
        return (paths[0], paths[1])
    }

    /// The raw jailer baseline: the kernel and config staged beforehand (not timed, as a script
    /// would have done), then `jailer ... -- --no-api --config-file` timed to the banner line.
    static func rawJailedLaunch(
        id: String, configuration: DriverConfiguration, kernel: String, configFile: String, logger: Logger,
        firecrackerLog: (_ start: Date, _ elapsed: Duration, _ log: String) -> Void = { _, _, _ in }
    ) async throws -> Duration {
        let jail = try Jail(configuration: configuration.jailer, id: try VMIdentifier(id))
        try await jail.prepare(logger: logger)
        _ = try jail.stage(
            [.readOnly(FilePath(kernel), at: "/guest.elf"), .readOnly(FilePath(configFile), at: "/vm.json"), .emptyFile(at: "/fc.log")],
            logger: logger)
        let command = try jail.command(
            limits: Self.limits, guest: Self.guest,
            firecrackerArguments: JailerCommand.firecrackerArguments(apiSocket: nil, configFile: "/vm.json", logPath: "/fc.log"))
        let wallStart = Date()
        let launch = try await RawLaunch.untilBanner(executable: command.executable.string, arguments: command.arguments, banner: Self.banner)
        firecrackerLog(
            wallStart, launch.elapsed, (try? String(contentsOfFile: jail.layout.rootDirectory.appending("fc.log").string, encoding: .utf8)) ?? "")
        let report = await jail.teardown(logger: logger)
        await launch.termination.value
        if !report.isComplete { print("raw jail teardown incomplete: \(report.failures)") }
        return launch.elapsed
    }
}

/// Where a launch's time goes, from Firecracker's own log timestamps (wall clock, local time, as
/// Firecracker writes them): from the call to Firecracker's first line ("Running Firecracker"),
/// the VM's build (to "Artificially kick devices", just before the vCPUs run), and the guest's
/// run to the end of its banner line as the caller read it.
struct LaunchPhases {
    let name: String
    var toFirecracker = Samples()
    var build = Samples()
    var guest = Samples()

    mutating func append(start: Date, banner: Duration, log: String) {
        let lines = log.split(separator: "\n")
        func offset(_ needle: String) -> Duration? {
            guard let line = lines.first(where: { $0.contains(needle) }), let stamp = line.split(separator: " ").first,
                let time = Self.parse(stamp)
            else { return nil }
            return .nanoseconds(Int64((time.timeIntervalSince1970 - start.timeIntervalSince1970) * 1e9))
        }
        guard let running = offset("Running Firecracker"), let kick = offset("Artificially kick devices") else { return }
        toFirecracker.append(running)
        build.append(kick - running)
        guest.append(banner - kick)
    }

    /// `2026-12-01T18:13:16.781185846`, in the local time zone.
    static func parse(_ stamp: Substring) -> Date? {
        let halves = stamp.split(separator: ".")
        guard halves.count == 2, let fraction = Double("0." + halves[1]) else { return nil }
        let fields = halves[0].split(whereSeparator: { "-T:".contains($0) }).compactMap { Int($0) }
        guard fields.count == 6 else { return nil }
        let components = DateComponents(
            calendar: Calendar(identifier: .gregorian), timeZone: .current, year: fields[0], month: fields[1], day: fields[2],
            hour: fields[3], minute: fields[4], second: fields[5])
        return components.date.map { $0.addingTimeInterval(fraction) }
    }

    static func printTable(_ all: [LaunchPhases]) {
        print("where the time goes (p50 ms; Firecracker's log timestamps)   to Firecracker    build    guest to banner    build p25 / p75")
        for phases in all.sorted(by: { $0.name < $1.name }) where !phases.toFirecracker.values.isEmpty {
            // The build's quartiles show its two modes on a small host: fast while Firecracker's
            // threads have the CPUs to themselves, about 3 ms slower when they share one.
            let quartiles = "\(Samples.milliseconds(phases.build.percentile(25))) / \(Samples.milliseconds(phases.build.percentile(75)))"
            print(
                "\(phases.name.padding(toLength: 58, withPad: " ", startingAt: 0)) \(Samples.milliseconds(phases.toFirecracker.percentile(50)).leftPad(12)) \(Samples.milliseconds(phases.build.percentile(50)).leftPad(8)) \(Samples.milliseconds(phases.guest.percentile(50)).leftPad(18)) \(quartiles.leftPad(18))"
            )
        }
    }
}

/// How long Firecracker's threads waited for a CPU (runnable, not running) from their start to
/// the banner: the second field of `/proc/<pid>/task/<tid>/schedstat`, read once the banner is
/// in (outside the timed part). On a small host the time a VMM loses to the driver's own
/// threads shows here, which the log's phases only show as a slower build or guest.
struct RunQueueWaits {
    let name: String
    var main = Samples()
    var vcpus = Samples()

    mutating func record(pid: Int32) {
        guard let tasks = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") else { return }
        var (mainWait, vcpuWait): (Int64?, Int64) = (nil, 0)
        for task in tasks {
            let directory = "/proc/\(pid)/task/\(task)"
            guard let stat = try? String(contentsOfFile: directory + "/schedstat", encoding: .utf8),
                let name = try? String(contentsOfFile: directory + "/comm", encoding: .utf8)
            else { continue }
            let fields = stat.split(separator: " ")
            guard fields.count >= 2, let waited = Int64(fields[1]) else { continue }
            if name.hasPrefix("fc_vcpu") { vcpuWait += waited } else if task == "\(pid)" { mainWait = waited }
        }
        guard let mainWait else { return }
        main.append(.nanoseconds(mainWait))
        vcpus.append(.nanoseconds(vcpuWait))
    }

    static func printTable(_ all: [RunQueueWaits]) {
        guard all.contains(where: { !$0.main.values.isEmpty }) else { return }
        print("Firecracker's threads waiting for a CPU, start to banner (ms; schedstat)   main p50 / mean    vCPUs p50 / mean")
        for waits in all where !waits.main.values.isEmpty {
            let main = "\(Samples.milliseconds(waits.main.percentile(50))) / \(Samples.milliseconds(waits.main.mean))"
            let vcpus = "\(Samples.milliseconds(waits.vcpus.percentile(50))) / \(Samples.milliseconds(waits.vcpus.mean))"
            print("\(waits.name.padding(toLength: 72, withPad: " ", startingAt: 0)) \(main.leftPad(18)) \(vcpus.leftPad(18))")
        }
    }
}
