import ArgumentParser
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage

/// Many VMs at once: launch throughput beside raw jailer launches, and what the driver spends
/// per supervised VM (memory, file descriptors).
struct FleetBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet", abstract: "Concurrent jailed launches vs raw jailer; driver memory and fds per VM.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "VMs launched at once.") var concurrent = 20
    @Option(help: "VMs held at once for the footprint.") var footprint = 50
    @Option(help: "Rounds of the concurrent launch (each series).") var rounds = 7

    func run() async throws {
        let kernel = try assets.kernelPath
        let workspace = try BenchWorkspace("fleet")
        defer { workspace.remove() }
        let (directory, base) = (workspace.directory, workspace.jails)
        let jailed = try assets.driverConfiguration(policy: .required, chrootBase: base)
        let logger = quietLogger()
        let args = ["console=ttyS0", "microvm.heartbeat_ms=0"]
        let jailedConfig = directory + "/vm.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"/guest.elf","boot_args":"\(args.joined(separator: " "))"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":32},"drives":[]}
            """.utf8
        ).write(to: URL(fileURLWithPath: jailedConfig))

        print("\(concurrent) concurrent launches to the guest banner, \(rounds) rounds (VMs/s, best and median)")
        var rawRates: [Double] = []
        var driverCPU: [Double] = []
        var libraryRates: [Double] = []
        for round in 0..<rounds {
            // Raw: stage each jail (untimed), then start every jailer at once.
            var jails: [Jail] = []
            var commands: [JailerCommand] = []
            for index in 0..<concurrent {
                let jail = try Jail(configuration: jailed.jailer, id: try VMIdentifier("rawf-\(round)-\(index)"))
                try await jail.prepare(logger: logger)
                _ = try jail.stage(
                    [.readOnly(FilePath(kernel), at: "/guest.elf"), .readOnly(FilePath(jailedConfig), at: "/vm.json"),
                     .emptyFile(at: "/fc.log")], logger: logger)
                commands.append(
                    try jail.command(
                        limits: ResourceLimits(memory: .automatic, pids: 64), guest: GuestResources(memoryMiB: 32, vcpuCount: 1),
                        firecrackerArguments: JailerCommand.firecrackerArguments(apiSocket: nil, configFile: "/vm.json", logPath: "/fc.log")))
                jails.append(jail)
            }
            let rawStart = ContinuousClock.now
            let launches = try await withThrowingTaskGroup(of: RawLaunch.Result.self) { group in
                for command in commands {
                    group.addTask {
                        try await RawLaunch.untilBanner(
                            executable: command.executable.string, arguments: command.arguments, banner: "microvm-guest: banner")
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            rawRates.append(Double(concurrent) / seconds(ContinuousClock.now - rawStart))
            for jail in jails { _ = await jail.teardown(logger: logger) }
            for launch in launches { await launch.termination.value }

            // Library: MicroVM.run for every VM at once (validation, staging, jailer, API up).
            let cpuBefore = Self.cpuMilliseconds()
            let start = ContinuousClock.now
            let vms = try await withThrowingTaskGroup(of: MicroVM.self) { group in
                for index in 0..<concurrent {
                    group.addTask {
                        let vm = try await MicroVM.run(
                            VMSpec(id: "libf-\(round)-\(index)", machine: .init(vcpus: 1, memoryMiB: 32), boot: .init(kernel: kernel, args: args),
                                   limits: .init(pids: 64)),
                            configuration: jailed, logger: logger)
                        _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(30))
                        return vm
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            libraryRates.append(Double(concurrent) / seconds(ContinuousClock.now - start))
            driverCPU.append((Self.cpuMilliseconds() - cpuBefore) / Double(concurrent))
            await withTaskGroup(of: Void.self) { group in
                for vm in vms { group.addTask { await vm.kill() } }
            }
        }
        func summary(_ rates: [Double]) -> String {
            let sorted = rates.sorted()
            return String(format: "best %6.1f  median %6.1f", sorted.last ?? 0, sorted[sorted.count / 2])
        }
        print("raw jailer -- --config-file   \(summary(rawRates))")
        print("library jailed (MicroVM.run)  \(summary(libraryRates))")
        print(String(format: "  driver CPU time per launched VM: %.2f ms (median of rounds)", driverCPU.sorted()[driverCPU.count / 2]))

        // Footprint: driver RSS and descriptors per supervised VM, unjailed and jailed.
        for policy in [SandboxPolicy.disabled, .required] {
            let configuration = try assets.driverConfiguration(policy: policy, chrootBase: base)
            // One VM first, so one-time costs (threads, the exit watcher, NIO) are not counted.
            let warm = try await MicroVM.run(
                VMSpec(id: "warm-\(policy.rawValue)", machine: .init(vcpus: 1, memoryMiB: 32), boot: .init(kernel: kernel, args: args)),
                configuration: configuration, logger: logger)
            _ = try await warm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
            let rssBefore = Self.residentKiB()
            let fdsBefore = Self.descriptors()
            var vms: [MicroVM] = []
            for index in 0..<footprint {
                let vm = try await MicroVM.run(
                    VMSpec(id: "fp-\(policy.rawValue.prefix(3))-\(index)", machine: .init(vcpus: 1, memoryMiB: 32), boot: .init(kernel: kernel, args: args)),
                    configuration: configuration, logger: logger)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                vms.append(vm)
            }
            let rss = Double(Self.residentKiB() - rssBefore) / Double(footprint)
            let fds = Double(Self.descriptors() - fdsBefore) / Double(footprint)
            print(String(format: "%@: %d VMs held: driver RSS %.1f KiB and %.1f fds per VM", policy == .required ? "jailed" : "unjailed", footprint, rss, fds))
            for vm in vms { await vm.kill() }
            // The baseline holds the warm VM: its descriptors go with it, after the count.
            print(String(format: "  after stopping them: %d fds above the baseline", Self.descriptors() - fdsBefore))
            await warm.kill()
        }
    }

    /// User + system CPU time of this process so far.
    static func cpuMilliseconds() -> Double {
        var usage = rusage()
        getrusage(__rusage_who_t(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1000
    }

    static func residentKiB() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
    }

    static func descriptors() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }
}
