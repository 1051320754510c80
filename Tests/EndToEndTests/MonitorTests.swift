import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Detached VMs: the per-VM monitor (`microvm-monitor`) keeps the console, the log and the exit
/// status of a VM whose driver is gone.
@Suite("Per-VM monitor end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct MonitorTests {
    static var monitorBinary: String {
        URL(fileURLWithPath: KillableDriver.binary).deletingLastPathComponent().appendingPathComponent("microvm-monitor").path
    }

    static func monitored(_ configuration: DriverConfiguration) throws -> DriverConfiguration {
        guard FileManager.default.isExecutableFile(atPath: monitorBinary) else {
            throw PrerequisiteMissing("microvm-monitor is not built at \(monitorBinary) (swift build builds it)")
        }
        var configuration = configuration
        configuration.monitor = MonitorSettings(binary: FilePath(monitorBinary))
        return configuration
    }

    /// Starts a killable driver that launches `id` under a monitor, and kills the driver.
    static func orphan(_ id: String, _ configuration: DriverConfiguration, _ assets: TestAssets, heartbeat: Int = 100) async throws -> VMRecord {
        let driver = try await KillableDriver.start(
            DurableStateTests.driverArguments(
                configuration, assets, id: id, then: "running", extra: ["--monitor", monitorBinary, "--heartbeat-ms", "\(heartbeat)"]))
        let ready = await driver.ready()
        #expect(ready.hasPrefix("READY"), "\(ready)")
        await driver.crash()
        return try configuration.stateStore.read(id: id)
    }

    /// Runs `body`; if it throws, kills what `record` names (the VMM and its monitor, when still
    /// theirs) and collects the VM, so a failed test leaves nothing running.
    static func cleaningUp(_ record: VMRecord, _ configuration: DriverConfiguration, _ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch {
            for (pid, startTime) in [(record.pid, record.processStartTime), (record.monitorPID, record.monitorStartTime)] {
                if let pid, ProcFS.startTime(of: pid) == startTime { kill(pid, SIGKILL) }
            }
            try? await Task.sleep(for: .milliseconds(200))
            _ = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
            throw error
        }
    }

    @Test(
        "The driver dies: the guest keeps writing (far past a 64 KiB FIFO), a new driver attaches to the monitor, replays the console, sends input, stops it cleanly; the monitor leaves with the VM",
        arguments: [SandboxPolicy.required, .disabled])
    func consoleOutlivesTheDriver(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "mon-\(policy.rawValue)") { configuration, assets, _ in
            let configuration = try Self.monitored(configuration)
            let id = "mon-\(policy.rawValue.prefix(3))-\(getpid())"
            // A heartbeat every millisecond: about 30 KiB of console a second.
            let record = try await Self.orphan(id, configuration, assets, heartbeat: 1)
            try await Self.cleaningUp(record, configuration) {
                let monitorPID = try #require(record.monitorPID, "the record names no monitor")
                #expect(record.monitorIsAlive)
                // Without a reader the guest would stop at 64 KiB (the FIFO's size): wait for more.
                let consoleLog = configuration.stateStore.directory(for: id).appending("console.log").string
                var logged = 0
                for _ in 0..<300 where logged <= 96 * 1024 {
                    try await Task.sleep(for: .milliseconds(100))
                    logged = (try? FileManager.default.attributesOfItem(atPath: consoleLog)[.size] as? Int) ?? 0
                }
                #expect(logged > 96 * 1024, "the guest wrote only \(logged) bytes in 30 s while no driver read its console")

                let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
                #expect(listing.process.isAlive && !listing.supervised)
                let vm = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(vm) { vm in
                    #expect(await vm.state == .running)
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat", timeout: .seconds(5))
                    vm.write("still there\n")
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: echo still there", timeout: .seconds(10))
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "\(reason)")
                    #expect(reason.exit == .exited(code: 0), "the monitor reported \(reason.exit)")
                }
                #expect(ProcFS.startTime(of: monitorPID) == nil || ProcFS.state(of: monitorPID) == "Z", "the monitor outlived its VM")
                #expect(!FileManager.default.fileExists(atPath: configuration.stateStore.directory(for: id).string))
            }
        }
    }

    @Test(
        "A guest writing a line a millisecond: every line arrives, in order, in this process and through a monitor; input is still echoed",
        arguments: [false, true])
    func chattyConsole(monitored: Bool) async throws {
        try await EndToEnd.withDriver(.disabled, name: "chatty-\(monitored)") { configuration, assets, _ in
            let driver = monitored ? try Self.monitored(configuration) : configuration
            let spec = EndToEnd.spec(assets, id: "chatty-\(monitored ? "m" : "d")-\(getpid())", args: ["console=ttyS0", "microvm.heartbeat_ms=1"])
            let vm = try await MicroVM.run(spec, configuration: driver, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let lines = await vm.console.subscribe(replay: true)
                var beats: [Int] = []
                var echoed = false
                for await line in lines {
                    if let range = line.text.range(of: "microvm-guest: heartbeat ") { beats.append(Int(line.text[range.upperBound...]) ?? -1) }
                    if beats.count == 300 { vm.write("typed during a burst\n") }
                    if line.text.contains("microvm-guest: echo typed during a burst") { echoed = true }
                    if beats.count >= 1500 && echoed { break }
                }
                #expect(beats == Array(1...beats.count), "every heartbeat once, in order (first gap at \(zip(beats, 1...).first { $0 != $1 }.map { "\($0)" } ?? "-"))")
                #expect(echoed)
                let reason = await vm.stop(grace: .seconds(5))
                #expect(reason.kind == .guestShutdown, "\(reason)")
            }
        }
    }

    @Test("A detached VM that stops while no driver runs: listed with the exit its monitor recorded, and gc removes everything")
    func exitWithoutADriver() async throws {
        try await EndToEnd.withDriver(.required, name: "mon-exit") { configuration, assets, _ in
            let configuration = try Self.monitored(configuration)
            let id = "mon-exit-\(getpid())"
            let record = try await Self.orphan(id, configuration, assets)
            try await Self.cleaningUp(record, configuration) {
                let monitorPID = try #require(record.monitorPID)
                // Ctrl-Alt-Del straight through the API: no driver is involved in the stop.
                let client = FirecrackerClient(socketPath: record.apiSocket)
                try await client.sendCtrlAltDel()
                await client.close()
                for _ in 0..<500 where ProcFS.startTime(of: monitorPID) != nil && ProcFS.state(of: monitorPID) != "Z" {
                    try await Task.sleep(for: .milliseconds(10))
                }
                let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
                #expect(!listing.process.isAlive)
                guard case .stopped(let reason)? = listing.state else {
                    Issue.record("expected stopped, got \(String(describing: listing.state))")
                    return
                }
                #expect(reason.kind == .guestShutdown && reason.exit == .exited(code: 0), "\(reason)")
                let console = try String(contentsOfFile: configuration.stateStore.directory(for: id).appending("console.log").string, encoding: .utf8)
                #expect(console.contains("microvm-guest: goodbye"))
                let collected = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
                #expect(collected.first { $0.id == id }?.teardown?.isComplete == true, "\(collected)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("SIGKILL the monitor: the VM is found running; a new driver attaches without it, gets the console back through /proc, stops it; nothing leaks")
    func monitorKilled() async throws {
        try await EndToEnd.withDriver(.disabled, name: "mon-kill") { configuration, assets, _ in
            let configuration = try Self.monitored(configuration)
            let id = "mon-kill-\(getpid())"
            let record = try await Self.orphan(id, configuration, assets)
            try await Self.cleaningUp(record, configuration) {
                let monitorPID = try #require(record.monitorPID)
                kill(monitorPID, SIGKILL)
                for _ in 0..<200 where ProcFS.startTime(of: monitorPID) != nil && ProcFS.state(of: monitorPID) != "Z" {
                    try await Task.sleep(for: .milliseconds(10))
                }
                var status: Int32 = 0
                _ = waitpid(monitorPID, &status, WNOHANG)  // when this process adopted it
                let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
                #expect(listing.process.isAlive)
                #expect(listing.record?.monitorIsAlive == false)
                let vm = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(vm) { vm in
                    vm.write("after the monitor\n")
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: echo after the monitor", timeout: .seconds(10))
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "\(reason)")
                }
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("A monitor that cannot be started: the create fails naming it, with its hint, and leaves nothing", arguments: [SandboxPolicy.required, .disabled])
    func monitorMissing(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "mon-missing-\(policy.rawValue)") { configuration, assets, _ in
            var configuration = configuration
            configuration.monitor = MonitorSettings(binary: "/etc/hostname")
            await #expect {
                _ = try await MicroVM.run(EndToEnd.spec(assets, id: "mon-missing-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard let error = error as? MicroVMError, case .createFailed(_, let step, _, _) = error else { return false }
                return step == "starting the VM's monitor" && error.description.contains("/etc/hostname")
                    && error.hint == "check that the file exists and is executable"
            }
            #expect(MicroVM.list(configuration: configuration).isEmpty)
        }
    }
}
