import Foundation
import MicroVM
import MicroVMHost
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm logs` reading the monitor's files, snapshot and restore without a terminal, and
/// what the CLI does when a VM's monitor is killed: the built binary, the real Firecracker and jailer, the test guest.
@Suite("microvm logs, snapshot progress and a killed monitor, end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct CLILogsTests {
    static func consoleFile(_ configuration: DriverConfiguration, _ id: String) -> String {
        configuration.stateStore.directory(for: id).string + "/console.log"
    }

    static func waitUntil(timeout: Duration = .seconds(10), _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }

    @Test("logs of a running VM: its whole console since boot, byte for byte, with nothing attached; --tail; --firecracker; logs -f ends by itself when another command stops the VM")
    func runningVM() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-logs") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-logs-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                #expect(started.status == 0, "\(started)")
                let file = Self.consoleFile(configuration, id)
                #expect(
                    await Self.waitUntil { ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").contains("microvm-guest: heartbeat 5") },
                    "the monitor records the console while nothing is attached")

                let logs = try await CLI.run(["logs", id] + flags)
                let recorded = try String(contentsOfFile: file, encoding: .utf8)
                #expect(logs.status == 0, "\(logs)")
                #expect(logs.stdout.contains("microvm-guest: banner"), "the history since boot, although nobody was attached: \(logs.stdout.prefix(300))")
                #expect(recorded.hasPrefix(logs.stdout), "exactly the bytes of console.log")
                #expect(logs.stderr.isEmpty, "\(logs.stderr)")
                let again = try await CLI.run(["logs", id] + flags)
                #expect(again.stdout.hasPrefix(logs.stdout), "reading consumes nothing")

                let tail = try await CLI.run(["logs", id, "--tail", "3"] + flags)
                let tailLines = tail.stdout.split(separator: "\n", omittingEmptySubsequences: false)
                #expect(tail.status == 0 && (tailLines.count == 3 || (tailLines.count == 4 && tailLines.last == "")), "\(tail)")
                #expect(tailLines.prefix(2).allSatisfy { $0.hasPrefix("microvm-guest: heartbeat") }, "\(tail)")
                let none = try await CLI.run(["logs", id, "--tail", "0"] + flags)
                #expect(none.status == 0 && none.stdout.isEmpty, "\(none)")

                let firecracker = try await CLI.run(["logs", id, "--firecracker"] + flags)
                #expect(firecracker.status == 0, "\(firecracker)")
                let firecrackerLines = firecracker.lines
                #expect(!firecrackerLines.isEmpty && firecrackerLines.contains { EndToEnd.looksLikeFirecrackerLog($0) }, "\(firecracker)")
                #expect(!firecracker.stdout.contains("microvm-guest:"), "Firecracker's log, not the console")

                let follow = try await InteractiveCLI.start(["logs", id, "-f", "--tail", "1"] + flags)
                #expect(await follow.waitForLine(containing: "microvm-guest: heartbeat") != nil, "\(follow.lines)")
                let seen = follow.lines.count
                #expect(await Self.waitUntil { follow.lines.count > seen }, "logs -f prints what is written after it started")
                let listed = try await CLI.run(["ls", "--json"] + flags)
                let entry = try #require((try listed.json() as? [[String: Any]])?.first { $0["id"] as? String == id }, "\(listed)")
                #expect(entry["attached"] as? Bool == false, "logs -f does not attach")
                let console = try await InteractiveCLI.start(["console", id] + flags)
                console.write("seen by logs\n")
                #expect(await follow.waitForLine(containing: "microvm-guest: echo seen by logs") != nil, "\(follow.lines.suffix(3))")
                console.write("\u{10}\u{11}")
                #expect(await console.exitStatus() == 0)

                let stopped = try await CLI.run(["stop", id, "--timeout", "5"] + flags)
                #expect(stopped.status == 0, "\(stopped)")
                #expect(await follow.exitStatus(timeout: .seconds(10)) == 0, "logs -f ends by itself once the VM has ended")
                #expect(follow.lines.contains { $0.contains("microvm-guest: goodbye") }, "and prints the guest's last words first: \(follow.lines.suffix(3))")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("logs of a VM that ended while detached: everything up to its end, -f returns at once, until rm removes it")
    func endedVM() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-logs-end") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-logs-end-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                #expect(started.status == 0, "\(started)")
                let file = Self.consoleFile(configuration, id)
                #expect(await Self.waitUntil { ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").contains("microvm-guest: heartbeat 3") })
                let pid = try #require(MicroVM.list(configuration: configuration).first?.record?.pid)
                kill(pid, SIGKILL)
                let exitFile = configuration.stateStore.directory(for: id).string + "/exit"
                #expect(await Self.waitUntil { access(exitFile, F_OK) == 0 }, "the monitor records the end")

                let logs = try await CLI.run(["logs", id] + flags)
                #expect(logs.status == 0 && logs.stdout.contains("microvm-guest: banner") && logs.stdout.contains("microvm-guest: heartbeat 3"), "\(logs)")
                #expect(logs.stdout == (try String(contentsOfFile: file, encoding: .utf8)))
                let tail = try await CLI.run(["logs", id, "--tail", "2"] + flags)
                #expect(tail.status == 0 && logs.stdout.hasSuffix(tail.stdout) && tail.stdout.split(separator: "\n").count == 2, "\(tail)")
                let clock = ContinuousClock()
                let begun = clock.now
                let follow = try await CLI.run(["logs", id, "-f"] + flags)
                #expect(follow.status == 0 && follow.stdout == logs.stdout, "\(follow)")
                #expect(clock.now - begun < .seconds(5), "nothing more will come: -f returns")

                let removed = try await CLI.run(["rm", id] + flags)
                #expect(removed.status == 0, "\(removed)")
                let gone = try await CLI.run(["logs", id] + flags)
                #expect(gone.status == 5, "\(gone)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("snapshot and restore without a terminal print their result alone: no progress line on stderr")
    func quietProgress() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-quiet") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-quiet-\(getpid())", copy = "cli-quiet-copy-\(getpid())"
                // Big enough that the progress line, were it shown, would be: writing 512 MiB
                // takes longer than the line's delay.
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets) + ["--memory", "512"])
                #expect(started.status == 0, "\(started)")
                let snapshotDirectory = directory + "/snap"
                let snapshot = try await CLI.run(["snapshot", id, snapshotDirectory] + flags)
                #expect(snapshot.status == 0 && snapshot.lines == [snapshotDirectory], "\(snapshot)")
                #expect(snapshot.stderr.isEmpty, "stderr is not a terminal: \(snapshot.stderr.debugDescription)")
                let restored = try await CLI.run(
                    ["restore", snapshotDirectory, "--id", copy, "--paused", "--firecracker", assets.firecracker, "--jailer", assets.jailer] + flags,
                    environment: ["MICROVM_JAILER_CHROOT_BASE": configuration.jailer.chrootBase.string, "MICROVM_JAILER_CGROUP_PARENT": configuration.jailer.parentCgroup ?? ""])
                #expect(restored.status == 0 && restored.lines == [copy], "\(restored)")
                #expect(restored.stderr.isEmpty, "\(restored.stderr.debugDescription)")
                for vm in [id, copy] {
                    let removed = try await CLI.run(["rm", "-f", vm] + flags)
                    #expect(removed.status == 0, "\(removed)")
                }
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("The monitor of a run -d VM is SIGKILLed: logs -f ends, stop, rm -f and gc still work and leave nothing")
    func killedMonitor() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-killmon") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                var monitors: [String: Int32] = [:]
                for name in ["stop", "rm", "gc"] {
                    let id = "cli-km-\(name)-\(getpid())"
                    let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                    #expect(started.status == 0, "\(started)")
                    let record = try #require(MicroVM.list(configuration: configuration).first { $0.id == id }?.record)
                    let monitor: Int32 = try #require(record.monitorPID, "run -d launches under a monitor")
                    monitors[id] = monitor
                }
                let stopID = "cli-km-stop-\(getpid())", rmID = "cli-km-rm-\(getpid())", gcID = "cli-km-gc-\(getpid())"
                #expect(await Self.waitUntil { ((try? String(contentsOfFile: Self.consoleFile(configuration, stopID), encoding: .utf8)) ?? "").contains("heartbeat 2") })
                let follow = try await InteractiveCLI.start(["logs", stopID, "-f"] + flags)
                #expect(await follow.waitForLine(containing: "microvm-guest: heartbeat") != nil)
                for pid in monitors.values { kill(pid, SIGKILL) }
                #expect(await follow.exitStatus(timeout: .seconds(10)) == 0, "nothing records the console any more: logs -f ends")
                // ls says so: the VMs run, their monitors are gone.
                let listed = try await CLI.run(["ls", "--json"] + flags)
                let rows = try #require(try listed.json() as? [[String: Any]], "\(listed)")
                for id in monitors.keys {
                    let row = rows.first { $0["id"] as? String == id }
                    #expect(row?["process"] as? String == "alive" && row?["monitor"] as? String == "gone", "\(id): \(row ?? [:])")
                }

                let stopped = try await CLI.run(["stop", stopID, "--timeout", "5"] + flags)
                #expect(stopped.status == 0 && stopped.stdout.contains("the guest shut down"), "a graceful stop still works: \(stopped.stdout)")
                let removed = try await CLI.run(["rm", "-f", rmID] + flags)
                #expect(removed.status == 0, "\(removed)")
                // The third VM is killed behind the CLI's back, then collected.
                if let pid = MicroVM.list(configuration: configuration).first(where: { $0.id == gcID })?.record?.pid { kill(pid, SIGKILL) }
                #expect(await Self.waitUntil { MicroVM.list(configuration: configuration).first { $0.id == gcID }?.process.isAlive == false })
                let collected = try await CLI.run(["gc", "--json"] + flags)
                #expect(collected.status == 0, "\(collected)")
                let results = try #require(try collected.json() as? [[String: Any]], "\(collected)")
                #expect(results.contains { $0["id"] as? String == gcID && $0["removed"] as? Bool == true }, "\(collected)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
                for id in [stopID, rmID, gcID] {
                    #expect(access(configuration.stateStore.directory(for: id).string, F_OK) != 0, "\(id)'s state directory is removed")
                }
                for pid in monitors.values {
                    #expect(kill(pid, 0) != 0 || ProcFS.state(of: pid) == "Z", "monitor \(pid) is gone")
                }
            }
        }
    }
}
