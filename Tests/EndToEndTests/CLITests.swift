import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The `microvm` command line end to end: the built binary, the real Firecracker and jailer,
/// the test guest, as a user would run them from a shell. Every VM's jail, cgroups and record
/// go where `EndToEnd.withDriver` checks that nothing is left.
@Suite("microvm command line end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct CLITests {
    @Test("run in the foreground: the guest's console on stdout as the guest wrote it, stdin echoed, Ctrl-C stops it cleanly (exit 0)")
    func foregroundRun() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-fg") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let id = "cli-fg-\(getpid())"
                let process = try await InteractiveCLI.start(["run", "--id", id] + CLI.vmFlags(configuration, assets))
                let banner = await process.waitForLine(containing: "microvm-guest: banner")
                #expect(banner != nil, "no banner: \(process.lines)")
                #expect(await process.waitForLine(containing: "microvm-guest: heartbeat 3") != nil)
                let listed = try await CLI.run(["ls", "--json"] + CLI.driverFlags(configuration))
                let entry = try #require((try listed.json() as? [[String: Any]])?.first { $0["id"] as? String == id }, "\(listed)")
                #expect(entry["state"] as? String == "running")
                #expect(entry["attached"] as? Bool == true, "the foreground run is attached")
                #expect(entry["sandboxed"] as? Bool == true, "jailed by default")
                process.write("hello from the shell\n")
                #expect(await process.waitForLine(containing: "microvm-guest: echo hello from the shell") != nil, "\(process.lines)")
                process.signal(SIGINT)
                let status = await process.exitStatus()
                #expect(status == 0, "\(process.lines.suffix(5))")
                #expect(process.lines.contains { $0.contains("microvm-guest: goodbye") }, "Ctrl-C is Ctrl-Alt-Del first")
                #expect(!process.lines.contains { EndToEnd.looksLikeFirecrackerLog($0) }, "Firecracker's log never reaches stdout")
                #expect(process.lines.allSatisfy { $0.hasPrefix("microvm-guest:") || $0.isEmpty }, "stdout is the guest's console alone: \(process.lines.filter { !$0.hasPrefix("microvm-guest:") })")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test(
        "Ctrl-C or SIGTERM at any moment of `microvm run` leaves nothing: a creation in progress is cancelled and undone (exit 130), a VM whose console is shown is stopped (exit 0)"
    )
    func interruptedRun() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-int") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                var outcomes: [String] = []
                for (round, delay) in [0, 10, 20, 30, 45, 60, 80, 100, 130, 170, 220, 300, 400].enumerated() {
                    let id = "cli-int-\(getpid())-\(round)"
                    let process = try await InteractiveCLI.start(["run", "--id", id] + CLI.vmFlags(configuration, assets))
                    try await Task.sleep(for: .milliseconds(delay))
                    let signal = round % 2 == 0 ? SIGINT : SIGTERM
                    process.signal(signal)
                    let status = await process.exitStatus()
                    let errors = process.errorLines
                    // 130: interrupted (or killed by SIGINT before it started); 143: killed by
                    // SIGTERM before it started; 0: the VM was stopped cleanly.
                    #expect([0, 130, 128 + SIGTERM].contains(status), "round \(round) (\(delay) ms): exit \(status), \(errors.suffix(3))")
                    #expect(MicroVM.list(configuration: configuration).isEmpty, "round \(round) (\(delay) ms) left a VM: exit \(status), \(errors.suffix(3))")
                    #expect(!errors.contains { $0.contains("error") && !$0.contains("create cancelled") }, "round \(round): \(errors)")
                    outcomes.append(errors.contains { $0.contains("create cancelled") } ? "cancelled" : status == 0 ? "stopped" : "exit \(status)")
                }
                #expect(outcomes.contains("cancelled"), "some signal came while the VM was being created: \(outcomes)")
                #expect(outcomes.contains("stopped"), "some signal came once its console was shown: \(outcomes)")
            }
        }
    }

    @Test("`microvm run ... | head -n 1`: the reader goes away, the VM is stopped as for Ctrl-C, nothing is left, no crash")
    func readerGone() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-pipe") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let id = "cli-pipe-\(getpid())"
                let command = ([CLI.binary, "run", "--id", id, "--no-stdin"] + CLI.vmFlags(configuration, assets)).map { "'\($0)'" }
                    .joined(separator: " ")
                let script = "{ \(command) 2>'\(directory)/err'; echo $? >'\(directory)/rc'; } | head -n 1"
                let result = try await Subprocess.run(.path("/bin/sh"), arguments: ["-c", script], output: .string(limit: 1 << 20), error: .discarded)
                #expect(result.standardOutput.hasPrefix("microvm-guest: banner"), "\(result.standardOutput)")
                let status = try String(contentsOfFile: directory + "/rc", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
                let errors = (try? String(contentsOfFile: directory + "/err", encoding: .utf8)) ?? ""
                #expect(status == "0", "microvm run: exit \(status), \(errors.suffix(600))")
                #expect(!errors.contains("Fatal error"), "\(errors.suffix(600))")
                #expect(MicroVM.list(configuration: configuration).isEmpty, "the VM was left: \(errors.suffix(600))")
            }
        }
    }

    @Test("run -f with Firecracker's own config file: the guest's console byte for byte as raw `firecracker --config-file` prints it")
    func firecrackerConfigFile() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-fcfile") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let file = directory + "/vm_config.json"
                let log = directory + "/firecracker.log"
                try """
                    {"boot-source": {"kernel_image_path": "\(assets.kernel)", "boot_args": "console=ttyS0 microvm.mode=exit", "initrd_path": null},
                     "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "smt": false},
                     "drives": [{"drive_id": "data", "path_on_host": "\(assets.dataImage)", "is_root_device": false, "is_read_only": true}],
                     "logger": {"log_path": "\(log)", "level": "Info"}, "metrics": null, "vsock": null}
                    """.write(toFile: file, atomically: true, encoding: .utf8)
                #expect(FileManager.default.createFile(atPath: log, contents: nil))
                let raw = try await Subprocess.run(
                    .path(FilePath(assets.firecracker)), arguments: ["--no-api", "--config-file", file], output: .bytes(limit: 1 << 20),
                    error: .discarded)
                #expect(raw.terminationStatus.isSuccess, "raw Firecracker ran the file: \(raw.terminationStatus)")
                let run = try await CLI.run(
                    ["run", "--no-stdin", "-f", file, "--id", "cli-fcfile-\(getpid())", "--chroot-base", configuration.jailer.chrootBase.string,
                     "--parent-cgroup", configuration.jailer.parentCgroup ?? "microvm", "--uid", "\(EndToEnd.uid)", "--gid", "\(EndToEnd.gid)",
                     "--firecracker", assets.firecracker, "--jailer", assets.jailer] + CLI.driverFlags(configuration))
                #expect(run.status == 0, "\(run)")
                // Raw Firecracker prints its first log line on stdout, before the file's logger
                // is set up; the rest is the guest's.
                let rawConsole = String(decoding: raw.standardOutput, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
                    .filter { !EndToEnd.looksLikeFirecrackerLog(String($0)) }.joined(separator: "\n")
                #expect(run.stdout == rawConsole, "\(run.stdout) against \(rawConsole)")
                #expect(run.stdout.contains("microvm-guest: goodbye"))
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test(
        "run -d, ls/inspect --json, console with piped input and the detach keys, logs --tail and -f, stats, pause/resume, snapshot/restore, stop; later commands know the VM's own uid, repeat none of Firecracker's earlier errors, and a failed snapshot leaves nothing"
    )
    func detachedLifecycle() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-life") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-life-\(getpid())"
                // A uid of its own, which the later commands (given no --uid) must find.
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets, uid: 4321, gid: 4321))
                #expect(started.status == 0 && started.lines == [id], "\(started)")

                let listed = try await CLI.run(["ls", "--json"] + flags)
                let entries = try #require(try listed.json() as? [[String: Any]], "\(listed)")
                #expect(entries.count == 1)
                #expect(entries.first?["id"] as? String == id)
                #expect(entries.first?["state"] as? String == "running")
                #expect(entries.first?["process"] as? String == "alive")
                #expect(entries.first?["attached"] as? Bool == false, "run -d leaves no process attached")
                #expect(entries.first?["monitor"] as? String == "alive", "run -d leaves the VM to its monitor")

                let inspected = try await CLI.run(["inspect", id, "--json"] + flags)
                let body = try #require(try inspected.json() as? [String: Any], "\(inspected)")
                let vm = try #require(body["vm"] as? [String: Any])
                let record = try #require(body["record"] as? [String: Any])
                #expect(vm["state"] as? String == "running")
                #expect(record["sandboxed"] as? Bool == true)
                #expect((record["spec"] as? [String: Any]).flatMap { $0["boot"] as? [String: Any] }?["kernel"] as? String == assets.kernel)
                #expect((record["cgroup_directories"] as? [String])?.isEmpty == false)

                // console: nothing the guest wrote since `run -d` is lost (its first line included),
                // then input echoed, then ctrl-p ctrl-q.
                let console = try await InteractiveCLI.start(["console", id] + flags)
                #expect(await console.waitForLine(containing: "microvm-guest: banner") != nil, "\(console.lines)")
                #expect(await console.waitForLine(containing: "microvm-guest: heartbeat") != nil, "\(console.lines)")
                console.write("typed into console\n")
                #expect(await console.waitForLine(containing: "microvm-guest: echo typed into console") != nil, "\(console.lines.suffix(5))")
                console.write("\u{10}\u{11}")
                #expect(await console.exitStatus() == 0)
                let afterDetach = try await CLI.run(["inspect", id, "--json"] + flags)
                let detachedVM = try #require((try afterDetach.json() as? [String: Any])?["vm"] as? [String: Any])
                #expect(detachedVM["state"] as? String == "running", "detaching leaves the VM running")
                #expect(detachedVM["attached"] as? Bool == false)

                try await Task.sleep(for: .milliseconds(500))
                let logs = try await CLI.run(["logs", id, "--tail", "2"] + flags)
                #expect(logs.status == 0 && logs.lines.count == 2, "\(logs)")
                #expect(logs.lines.allSatisfy { $0.hasPrefix("microvm-guest: heartbeat") }, "\(logs)")

                let follow = try await InteractiveCLI.start(["logs", id, "-f", "--tail", "0"] + flags)
                #expect(await follow.waitForLine(containing: "microvm-guest: heartbeat") != nil, "logs -f follows: \(follow.lines)")
                follow.signal(SIGINT)
                #expect(await follow.exitStatus() == 0, "Ctrl-C ends logs -f and leaves the VM running")
                #expect(MicroVM.list(configuration: configuration).first?.state == .running)

                let stats = try await CLI.run(["stats", id, "--json"] + flags)
                let figures = try #require(try stats.json() as? [String: Any], "\(stats)")
                #expect((figures["memory_bytes"] as? Int ?? 0) > 0, "\(stats)")
                #expect((figures["memory_limit_bytes"] as? Int ?? 0) >= 64 << 20, "\(stats)")
                // From the cgroup, or (cgroup v1 without a cpuacct cgroup, as here) the VMM's /proc entry.
                #expect(figures["cpu_usage_ns"] is Int, "\(stats)")
                // No pids limit, so no pids cgroup: the VMM's threads.
                #expect((figures["pids"] as? Int ?? 0) >= 2 && figures["pids_limit"] == nil, "\(stats)")

                let paused = try await CLI.run(["pause", id] + flags)
                #expect(paused.status == 0, "\(paused)")
                #expect(MicroVM.list(configuration: configuration).first?.state == .paused)
                let pausedAgain = try await CLI.run(["pause", id, "--json"] + flags)
                #expect(pausedAgain.status == 6, "pausing a paused VM is a state conflict: \(pausedAgain)")
                let error = try JSONSerialization.jsonObject(with: Data(pausedAgain.stderr.utf8)) as? [String: Any]
                #expect((error?["error"] as? [String: Any])?["kind"] as? String == "conflict", "\(pausedAgain.stderr)")
                let resumed = try await CLI.run(["resume", id] + flags)
                #expect(resumed.status == 0, "\(resumed)")
                #expect(MicroVM.list(configuration: configuration).first?.state == .running)

                // A snapshot that Firecracker refuses (its directory in the jail is root's, as
                // if a host tool had made it) leaves no destination, and no later command
                // repeats Firecracker's error.
                let jailRoot = try #require(record["directory"] as? String)
                #expect(mkdir(jailRoot + "/snapshots", 0o700) == 0)
                let refusedDirectory = directory + "/refused"
                let refused = try await CLI.run(["snapshot", id, refusedDirectory] + flags)
                #expect(refused.status != 0 && refused.stderr.contains("Permission denied"), "\(refused)")
                #expect(!FileManager.default.fileExists(atPath: refusedDirectory), "a failed snapshot removes the directory it made")
                #expect(rmdir(jailRoot + "/snapshots") == 0, "nothing of the failed snapshot stays in the jail")
                let afterwards = try await CLI.run(["pause", id] + flags)
                #expect(afterwards.status == 0 && !afterwards.stderr.contains("Received Error"), "the earlier error is not re-emitted: \(afterwards)")
                #expect(try await CLI.run(["resume", id] + flags).status == 0)

                // A destination that is not empty: the caller's to correct (exit 2), nothing paused.
                let occupied = directory + "/occupied"
                #expect(mkdir(occupied, 0o700) == 0 && FileManager.default.createFile(atPath: occupied + "/x", contents: nil))
                let notEmpty = try await CLI.run(["snapshot", id, occupied] + flags)
                #expect(notEmpty.status == 2 && notEmpty.stderr.contains("not empty") && notEmpty.stderr.contains("hint: give a new directory"), "\(notEmpty)")

                let snapshotDirectory = directory + "/snap"
                let snapshot = try await CLI.run(["snapshot", id, snapshotDirectory] + flags)
                #expect(snapshot.status == 0, "\(snapshot)")
                #expect(FileManager.default.fileExists(atPath: snapshotDirectory + "/snapshot.json"))
                let copy = "cli-copy-\(getpid())"
                let restored = try await CLI.run(
                    ["restore", snapshotDirectory, "--id", copy, "--paused", "--firecracker", assets.firecracker, "--jailer", assets.jailer] + flags,
                    environment: ["MICROVM_JAILER_CHROOT_BASE": configuration.jailer.chrootBase.string, "MICROVM_JAILER_CGROUP_PARENT": configuration.jailer.parentCgroup ?? ""])
                #expect(restored.status == 0 && restored.lines == [copy], "\(restored)")
                #expect(MicroVM.list(configuration: configuration).first { $0.id == copy }?.state == .paused)
                #expect(try await CLI.run(["resume", copy] + flags).status == 0)
                let restoredConsole = try await InteractiveCLI.start(["console", copy] + flags)
                restoredConsole.write("hello copy\n")
                #expect(await restoredConsole.waitForLine(containing: "microvm-guest: echo hello copy") != nil, "the restored guest carries on: \(restoredConsole.lines.suffix(5))")
                restoredConsole.write("\u{10}\u{11}")
                #expect(await restoredConsole.exitStatus() == 0)

                // Two processes stopping one VM at once: one shuts the guest down, the other is
                // refused while the first supervises it (6), finds it ended (0) or gone (5);
                // neither kills it.
                async let firstStop = CLI.run(["stop", copy, "--timeout", "5"] + flags)
                async let secondStop = CLI.run(["stop", copy, "--timeout", "5"] + flags)
                let racing = try await [firstStop, secondStop]
                #expect(racing.allSatisfy { [0, 5, 6].contains($0.status) }, "\(racing)")
                #expect(racing.contains { $0.stdout.contains("the guest shut down") } && !racing.contains { $0.stdout.contains("killed") }, "\(racing)")

                // Several at once, as `docker stop a b`: a line each; a gone id fails the command
                // (5) after the others were stopped.
                let stopped = try await CLI.run(["stop", id, copy, "no-such-vm", "--timeout", "5"] + flags)
                #expect(stopped.status == 5, "\(stopped)")
                #expect(stopped.lines.count == 1 && stopped.lines.allSatisfy { $0.contains("the guest shut down") }, "\(stopped)")
                #expect(Set(stopped.lines.compactMap { $0.split(separator: ":").first.map(String.init) }) == [id], "\(stopped)")
                #expect(stopped.stderr.contains("no-such-vm") && stopped.stderr.contains(copy), "\(stopped)")
                let empty = try await CLI.run(["ls", "-q"] + flags)
                #expect(empty.status == 0 && empty.lines.isEmpty, "\(empty)")
            }
        }
    }

    @Test("create from a spec file with flags overriding it, then start; rm refuses a running VM (exit 6) and rm -f stops it; a missing jailer under policy required exits 3")
    func createStartRemove() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-create") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-create-\(getpid())"
                // A spec file, with flags overriding it (here: the id, the kernel and args, the memory).
                let specFile = directory + "/vm.yaml"
                try "id: from-file\nmachine: {vcpus: 1, memory_mib: 96}\nboot: {kernel: /nonexistent, args: [console=ttyS0]}\n"
                    .write(toFile: specFile, atomically: true, encoding: .utf8)
                let created = try await CLI.run(["create", "-f", specFile, "--id", id] + CLI.vmFlags(configuration, assets))
                #expect(created.status == 0 && created.lines == [id], "\(created)")
                #expect(MicroVM.list(configuration: configuration).first?.state == .created)
                let record = try #require(MicroVM.list(configuration: configuration).first?.record)
                #expect(record.spec.machine.memoryMiB == 64 && record.spec.machine.vcpus == 1 && record.spec.boot.kernel == assets.kernel, "\(record.spec)")
                let started = try await CLI.run(["start", id] + flags)
                #expect(started.status == 0, "\(started)")
                #expect(MicroVM.list(configuration: configuration).first?.state == .running)
                let refused = try await CLI.run(["rm", id] + flags)
                #expect(refused.status == 6 && refused.stderr.contains("rm -f"), "\(refused)")
                let forced = try await CLI.run(["rm", "-f", id] + flags)
                #expect(forced.status == 0, "\(forced)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
                let noJailer = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets) + ["--jailer", directory + "/no-jailer"])
                #expect(noJailer.status == 3 && noJailer.stderr.contains("no-jailer") && noJailer.stderr.contains("hint:"), "\(noJailer)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("ls --live and inspect show the state Firecracker reports: a pause and a resume sent to the API socket by hand, behind the record's back")
    func stateAsFirecrackerReportsIt() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-asked") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-asked-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                #expect(started.status == 0, "\(started)")
                let record = try #require(MicroVM.list(configuration: configuration).first { $0.id == id }?.record)
                let client = FirecrackerClient(socketPath: record.connectableAPISocket)
                func shown() async throws -> (ls: String?, inspect: String?) {
                    let listed = try await CLI.run(["ls", "--live", "--json"] + flags)
                    let vms = try #require(try listed.json() as? [[String: Any]], "\(listed)")
                    let inspected = try await CLI.run(["inspect", id, "--json"] + flags)
                    let body = try #require(try inspected.json() as? [String: Any], "\(inspected)")
                    return (vms.first { $0["id"] as? String == id }?["state"] as? String, (body["vm"] as? [String: Any])?["state"] as? String)
                }
                try await client.pause()
                #expect(MicroVM.list(configuration: configuration).first { $0.id == id }?.record?.state == .running, "the record is behind")
                let plain = try await CLI.run(["ls", "--json"] + flags)
                let plainState = (try plain.json() as? [[String: Any]])?.first { $0["id"] as? String == id }?["state"] as? String
                #expect(plainState == "running", "plain ls reads the record: \(plain)")
                var states = try await shown()
                #expect(states.ls == "paused" && states.inspect == "paused", "\(states)")
                try await client.resume()
                states = try await shown()
                #expect(states.ls == "running" && states.inspect == "running", "\(states)")
                await client.close()
                let removed = try await CLI.run(["rm", "-f", id] + flags)
                #expect(removed.status == 0, "\(removed)")
            }
        }
    }

    @Test("stats of an unjailed VM: its Firecracker process's CPU time, resident memory and threads, no limits, no cgroups")
    func unjailedStats() async throws {
        try await EndToEnd.withDriver(.disabled, name: "cli-ustats") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "cli-ustats-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets, policy: .disabled))
                #expect(started.status == 0, "\(started)")
                let stats = try await CLI.run(["stats", id, "--json"] + flags)
                #expect(stats.status == 0, "\(stats)")
                let figures = try #require(try stats.json() as? [String: Any], "\(stats)")
                #expect((figures["memory_bytes"] as? Int ?? 0) > 1 << 20, "\(stats)")
                #expect((figures["pids"] as? Int ?? 0) >= 2, "Firecracker's threads: \(stats)")
                #expect(figures["cpu_usage_ns"] is Int, "\(stats)")
                #expect(figures["memory_limit_bytes"] == nil && figures["pids_limit"] == nil, "\(stats)")
                #expect((figures["cgroups"] as? [String])?.isEmpty == true, "\(stats)")
                #expect(figures["lazy_memory"] == nil, "\(stats)")
                let table = try await CLI.run(["stats", id] + flags)
                #expect(table.status == 0 && table.stdout.contains(id), "\(table)")
                let removed = try await CLI.run(["rm", "-f", id] + flags)
                #expect(removed.status == 0, "\(removed)")
            }
        }
    }

    @Test("A VM that died while nobody was attached: ls shows it failed, stop says so, doctor warns, rm and gc remove every leftover")
    func diedUnattended() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-gc") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                var pids: [String: Int32] = [:]
                for name in ["gc", "rm"] {
                    let id = "cli-\(name)-\(getpid())"
                    let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                    #expect(started.status == 0, "\(started)")
                    pids[id] = try #require(MicroVM.list(configuration: configuration).first { $0.id == id }?.record?.pid)
                }
                for pid in pids.values { kill(pid, SIGKILL) }
                try await Task.sleep(for: .milliseconds(300))
                let listed = try await CLI.run(["ls", "--json"] + flags)
                let entries = try #require(try listed.json() as? [[String: Any]])
                #expect(entries.count == 2)
                #expect(entries.allSatisfy { $0["state"] as? String == "failed" && $0["process"] as? String == "gone" }, "\(listed)")

                let rmID = "cli-rm-\(getpid())", gcID = "cli-gc-\(getpid())"
                let stopped = try await CLI.run(["stop", gcID] + flags)
                #expect(stopped.status == 0 && stopped.stdout.contains("already ended"), "\(stopped)")
                let console = try await CLI.run(["console", gcID] + flags)
                #expect(console.status == 6 && console.stderr.contains("microvm rm"), "\(console)")

                let doctor = try await CLI.run(
                    ["doctor", "--json", "--chroot-base", configuration.jailer.chrootBase.string, "--firecracker", assets.firecracker, "--jailer", assets.jailer] + flags)
                let checks = try #require((try doctor.json() as? [String: Any])?["checks"] as? [[String: Any]], "\(doctor)")
                let leftovers = try #require(checks.first { $0["check"] as? String == "leftovers" })
                #expect(leftovers["status"] as? String == "warn")
                #expect((leftovers["fix"] as? String) == "microvm gc --state-dir \(configuration.stateStore.root.string)")

                // A file of someone else's in the VM's state directory: kept, and the removal
                // says so instead of reporting the VM removed.
                let foreign = configuration.stateStore.directory(for: rmID).appending("notes.txt").string
                #expect(FileManager.default.createFile(atPath: foreign, contents: Data("mine".utf8)))
                let refused = try await CLI.run(["rm", rmID] + flags)
                #expect(refused.status != 0 && refused.stderr.contains("notes.txt"), "\(refused)")
                #expect(FileManager.default.fileExists(atPath: foreign))
                try FileManager.default.removeItem(atPath: foreign)
                let removed = try await CLI.run(["rm", rmID] + flags)
                #expect(removed.status == 0 && removed.lines == [rmID], "\(removed)")
                let collected = try await CLI.run(["gc", "--json"] + flags)
                let results = try #require(try collected.json() as? [[String: Any]], "\(collected)")
                #expect(results.count == 1)
                #expect(results.first?["id"] as? String == gcID && results.first?["removed"] as? Bool == true, "\(collected)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("Usage errors print a helpful message and exit 2; unknown VMs exit 5; --json errors are JSON objects")
    func usageErrors() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let state = ["--state-dir", directory + "/state"]
            let badValue = try await CLI.run(["run", "--vcpus", "two"] + state)
            #expect(badValue.status == 2, "\(badValue)")
            #expect(badValue.stderr.contains("--vcpus") && badValue.stderr.contains("microvm run --help"), "\(badValue)")
            let missing = try await CLI.run(["stop"] + state)
            #expect(missing.status == 2 && missing.stderr.contains("Usage: microvm stop"), "\(missing)")
            let unknown = try await CLI.run(["frobnicate"])
            #expect(unknown.status == 2, "\(unknown)")
            let badDrive = try await CLI.run(["create", "--kernel", "/bin/true", "--drive", "path=/x"] + state)
            #expect(badDrive.status == 2 && badDrive.stderr.contains("id=NAME"), "\(badDrive)")
            // Empty parts are usage errors, not a crash or the host's own interface taken as a TAP.
            for tap in ["=", "", "eth0="] {
                let emptyTAP = try await CLI.run(["create", "--kernel", "/bin/true", "--tap", tap] + state)
                #expect(emptyTAP.status == 2 && emptyTAP.stderr.contains("[IFACE=]TAP"), "\(emptyTAP)")
            }
            let badFlag = try await CLI.run(["create", "--kernel", "/bin/true", "--drive", "id=d,path=/x,ro=maybe"] + state)
            #expect(badFlag.status == 2 && badFlag.stderr.contains("not true or false"), "\(badFlag)")
            let twice = try await CLI.run(["create", "--kernel", "/bin/true", "--drive", "id=d,path=/x", "--drive", "id=d,path=/y"] + state)
            #expect(twice.status == 2 && twice.stderr.contains("a second --drive with id=d"), "\(twice)")
            let emptyID = try await CLI.run(["create", "--kernel", "/bin/true", "--id", ""] + state)
            #expect(emptyID.status == 2 && emptyID.stderr.contains("--id is empty"), "\(emptyID)")
            let notSnapshot = try await CLI.run(["restore", directory, "--id", "x"] + state)
            #expect(notSnapshot.status == 2 && notSnapshot.stderr.contains("holds no snapshot.json"), "\(notSnapshot)")
            let badSpec = try await CLI.run(["create", "--kernel", directory + "/no-such-kernel", "--sandbox", "disabled"] + state)
            #expect(badSpec.status == 2 && badSpec.stderr.contains("boot.kernel"), "an invalid spec names its field: \(badSpec)")
            // One problem: its own hint, said once, on the hint line.
            #expect(badSpec.stderr.split(separator: "\n").last == "hint: check the path" && !badSpec.stderr.contains("Hint:"), "\(badSpec)")
            let notAnID = try await CLI.run(["stop", "bad_id"] + state)
            #expect(notAnID.status == 2 && notAnID.stderr.contains("invalid VM id"), "an id no VM can have is a usage error: \(notAnID)")
            let notFound = try await CLI.run(["inspect", "nope"] + state)
            #expect(notFound.status == 5 && notFound.stderr.contains("no such VM"), "\(notFound)")
            let notFoundJSON = try await CLI.run(["inspect", "nope", "--json"] + state)
            let body = try JSONSerialization.jsonObject(with: Data(notFoundJSON.stderr.utf8)) as? [String: Any]
            let error = try #require(body?["error"] as? [String: Any], "\(notFoundJSON)")
            #expect(error["code"] as? Int == 5 && error["kind"] as? String == "not-found" && error["hint"] != nil)
            let help = try await CLI.run(["--help"])
            #expect(help.status == 0 && help.stdout.contains("Exit codes"))
        }
    }
}
