import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// Lazy restores (`RestoreMemory.lazy`): no memory file is staged, a userfaultfd handler serves
/// the guest's pages from the snapshot's memory file as it touches them.
@Suite("Lazy (userfaultfd) restore end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct LazyRestoreTests {
    /// Boots the test guest (its spec changed by `adjust`), waits for `ready` then the third
    /// heartbeat, and snapshots it into `directory/snap`; the snapshot and the last heartbeat.
    static func takeSnapshot(
        _ configuration: DriverConfiguration, _ assets: TestAssets, id: String, into directory: String,
        adjust: (inout VMSpec) -> Void = { _ in }, ready: String? = nil
    ) async throws -> (Snapshot, Int) {
        var spec = EndToEnd.spec(assets, id: id)
        adjust(&spec)
        let source = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
        return try await EndToEnd.using(source) { vm in
            if let ready { _ = try await vm.console.waitForLine(containing: ready, timeout: .seconds(10)) }
            _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 3", timeout: .seconds(10))
            let snapshot = try await vm.snapshot(to: FilePath(directory + "/snap"), type: .full)
            let at = await SnapshotTests.lastHeartbeat(vm.console)
            await vm.kill()
            return (snapshot, at)
        }
    }

    @Test("Restored lazily, jailed and unjailed: the guest carries on, pages are served, nothing is staged or left", arguments: [SandboxPolicy.required, .disabled])
    func restoresLazily(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "uffd-\(policy.rawValue)") { configuration, assets, directory in
            let tag = "\(policy.rawValue.prefix(3))-\(getpid())"
            let (snapshot, at) = try await Self.takeSnapshot(configuration, assets, id: "uffd-src-\(tag)", into: directory)
            let vm = try await MicroVM.restore(
                snapshot, id: "uffd-lazy-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            let lazy = try #require(vm.lazyMemory)
            let socket = lazy.socketPath.string
            #expect(FileManager.default.fileExists(atPath: socket))
            #expect(!FileManager.default.fileExists(atPath: vm.directory.string + "/restore.memory"), "a lazy restore stages no memory")
            // The record names the memory file, for a later driver (its server dies with this one).
            #expect(try configuration.stateStore.read(id: vm.id.rawValue).lazyMemoryFile == snapshot.memoryPath.string)
            if policy == .required {
                var status = stat()
                #expect(stat(socket, &status) == 0 && status.st_uid == EndToEnd.uid, "the jailed VMM's user owns the socket")
            }
            // A snapshot of the lazily restored VM reads all of its memory (through the server).
            let (again, atAgain) = try await EndToEnd.using(vm) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(at + 2)", timeout: .seconds(5))
                let again = try await vm.snapshot(to: FilePath(directory + "/again"), type: .full)
                return (again, await SnapshotTests.lastHeartbeat(vm.console))
            }
            #expect(lazy.statistics.pagesServed == UInt64(snapshot.spec.machine.memoryMiB) << 8, "the snapshot touched every page: \(lazy.statistics)")
            try await SnapshotTests.expectCarriesOn(vm, after: atAgain, "lazy \(policy.rawValue)")
            let statistics = lazy.statistics
            #expect(statistics.pagesCopied > 0, "\(statistics)")
            #expect(statistics.regions >= 1)
            #expect(statistics.phase == .ended, "\(statistics)")
            #expect(lazy.failure == nil)
            #expect(!FileManager.default.fileExists(atPath: socket))
            #expect(EndToEnd.liveThreads(named: "uffd") == 0)
            // The snapshot taken from the lazily restored guest restores too (lazily again).
            let second = try await MicroVM.restore(again, id: "uffd-again-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            let secondLazy = try #require(second.lazyMemory)
            try await EndToEnd.using(second) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(atAgain + 1)", timeout: .seconds(5))
            }
            let touched = secondLazy.pagesServed
            #expect(touched > 0 && touched < UInt64(snapshot.spec.machine.memoryMiB) << 8, "only the pages the guest touched are served: \(touched)")
            await second.kill()
            #expect(EndToEnd.liveThreads(named: "uffd") == 0)
        }
    }

    @Test("A truncated memory file: the handler refuses the handshake, the create fails with its words, nothing is left")
    func truncatedMemory() async throws {
        try await EndToEnd.withDriver(.required, name: "uffd-trunc") { configuration, assets, directory in
            let tag = "\(getpid())"
            let (snapshot, _) = try await Self.takeSnapshot(configuration, assets, id: "uffd-tsrc-\(tag)", into: directory)
            #expect(truncate(snapshot.memoryPath.string, 16 << 20) == 0)
            let descriptors = EndToEnd.descriptorCount()
            await #expect {
                _ = try await MicroVM.restore(snapshot, id: "uffd-trunc-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .createFailed(_, let step, let cause, _) = error as? MicroVMError, let lazy = cause as? LazyMemoryError else {
                    Issue.record("unexpected error: \(error)")
                    return false
                }
                #expect(step == "loading the snapshot")
                #expect(lazy.step == .handshake)
                #expect(lazy.errno == ERANGE)
                #expect("\(error)".contains("truncated"), "\(error)")
                #expect((error as? MicroVMError)?.hint.contains("incomplete or corrupt") == true)
                return true
            }
            #expect(EndToEnd.descriptorCount() <= descriptors, "descriptors left open")
        }
    }

    @Test("The memory file is cut short while the guest runs: the server fails, stops the VMM (no frozen guest), and the exit reason says why, in this process or under a monitor (then also for a later driver)", arguments: [false, true])
    func memoryLostWhileRunning(monitored: Bool) async throws {
        try await EndToEnd.withDriver(.disabled, name: "uffd-cut-\(monitored)") { configuration, assets, directory in
            let tag = "\(monitored ? "m" : "d")-\(getpid())"
            let (snapshot, _) = try await Self.takeSnapshot(configuration, assets, id: "uffd-csrc-\(tag)", into: directory)
            let driver = monitored ? try MonitorTests.monitored(configuration) : configuration
            // Restored paused: the guest has touched nothing yet when its memory goes.
            let vm = try await MicroVM.restore(
                snapshot, id: "uffd-cut-\(tag)", resume: false, memory: .lazy, configuration: driver, logger: EndToEnd.logger)
            let lazy = vm.lazyMemory
            #expect((lazy == nil) == monitored)
            #expect(truncate(snapshot.memoryPath.string, 0) == 0)
            try await EndToEnd.using(vm) { vm in
                // The first fault may come, and the server kill the VMM, before Firecracker has
                // answered the resume: then the request fails, saying how the VM ended.
                do {
                    try await vm.resume()
                } catch {
                    guard case .vmEnded(_, "PATCH /vm Resumed", let reason)? = error as? MicroVMError else { throw error }
                    #expect(reason.kind == .lazyMemoryFailed, "\(reason)")
                    #expect("\(error)".contains("the VM ended while it was under way: its memory could not be served"), "\(error)")
                }
                let reason = try #require(await vm.waitForExit(timeout: .seconds(10)), "the VM ends instead of freezing")
                #expect(reason.kind == .lazyMemoryFailed, "\(reason)")
                #expect(!reason.isClean)
                #expect(reason.evidence.contains { $0.contains("lazy memory: serving page faults") }, "\(reason)")
                #expect("\(reason)".hasPrefix("its memory could not be served (lazy restore)"), "\(reason)")
            }
            if let lazy {
                let failure = try #require(lazy.failure)
                #expect(failure.step == .serving, "\(failure)")
                #expect(failure.errno == EFAULT, "\(failure)")
            }
        }
    }

    @Test("Pages the balloon took back are answered with zeros, not the snapshot's bytes; the guest carries on")
    func balloonRemovedPages() async throws {
        try await EndToEnd.withDriver(.disabled, name: "uffd-balloon") { configuration, assets, directory in
            let tag = "\(getpid())"
            let (snapshot, at) = try await Self.takeSnapshot(
                configuration, assets, id: "uffd-bsrc-\(tag)", into: directory,
                adjust: { spec in
                    spec.boot.args += ["microvm.balloon=on"]
                    spec.balloon = Balloon(amountMiB: 0, deflateOnOom: false)
                }, ready: "balloon ready")
            let memoryMiB = snapshot.spec.machine.memoryMiB
            let vm = try await MicroVM.restore(snapshot, id: "uffd-balloon-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            let lazy = try #require(vm.lazyMemory)
            let (again, atAgain) = try await EndToEnd.using(vm) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(at + 1)", timeout: .seconds(5))
                #expect(lazy.statistics.zeroPages == 0, "nothing removed yet: \(lazy.statistics)")
                // 8 MiB inflated: Firecracker drops those pages (MADV_DONTNEED), the kernel tells
                // the server (UFFD_EVENT_REMOVE), and a later touch must read zeros.
                try await vm.setBalloon(targetMiB: 8)
                _ = try await vm.console.waitForLine(containing: "balloon target=2048 actual=2048", timeout: .seconds(10))
                #expect(lazy.statistics.removeEvents > 0, "\(lazy.statistics)")
                // A full snapshot reads every page of guest memory, the removed ones included.
                let again = try await vm.snapshot(to: FilePath(directory + "/again"), type: .full)
                return (again, await SnapshotTests.lastHeartbeat(vm.console))
            }
            await vm.kill()
            let statistics = lazy.statistics
            #expect(statistics.zeroPages >= 2048, "the balloon's 2048 pages come back as zero pages: \(statistics)")
            #expect(statistics.pagesServed == UInt64(memoryMiB) << 8, "\(statistics)")
            #expect(lazy.failure == nil)
            // The snapshot holds zeros where the balloon was (the top 8 MiB of guest memory).
            let memory = try FileHandle(forReadingFrom: URL(fileURLWithPath: again.memoryPath.string))
            defer { try? memory.close() }
            try memory.seek(toOffset: UInt64(memoryMiB - 8) << 20)
            let top = try #require(try memory.read(upToCount: 8 << 20))
            #expect(top.count == 8 << 20 && top.allSatisfy { $0 == 0 })
            // It restores (lazily again) and the guest carries on, its balloon still inflated.
            let second = try await MicroVM.restore(again, id: "uffd-balloon2-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(second) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(atAgain + 1)", timeout: .seconds(5))
                try await vm.setBalloon(targetMiB: 0)
                _ = try await vm.console.waitForLine(containing: "balloon target=0 actual=0", timeout: .seconds(10))
                vm.write("after restore\n")
                _ = try await vm.console.waitForLine(containing: "microvm-guest: echo after restore", timeout: .seconds(5))
                let reason = await vm.stop(grace: .seconds(5))
                #expect(reason.kind == .guestShutdown, "\(reason)")
            }
            #expect(EndToEnd.liveThreads(named: "uffd") == 0)
        }
    }

    @Test("The driver that served the pages dies: a new driver attaches with a warning that the guest will hang, and kill still cleans up")
    func servingDriverDies() async throws {
        try await EndToEnd.withDriver(.disabled, name: "uffd-orphan") { configuration, assets, directory in
            let tag = "\(getpid())"
            let (snapshot, _) = try await Self.takeSnapshot(configuration, assets, id: "uffd-osrc-\(tag)", into: directory)
            let id = "uffd-orphan-\(tag)"
            let driver = try await KillableDriver.start(
                DurableStateTests.driverArguments(configuration, assets, id: id, then: "running", extra: ["--restore-lazy", snapshot.directory]))
            let ready = await driver.ready()
            #expect(ready.hasPrefix("READY"), "\(ready)")
            await driver.crash()

            let capture = EndToEnd.CapturedLog()
            let vm = try await MicroVM.attach(id: id, configuration: configuration, logger: capture.logger)
            #expect(
                capture.messages.contains { $0.level == .warning && $0.message.contains("restored lazily and the process that served its memory is gone") },
                "\(capture.messages)")
            #expect(await vm.lazyMemoryStatistics() == nil, "nobody counts for the dead driver")
            #expect(await MicroVM.lazyMemoryStatistics(id: id, configuration: configuration) == nil)
            // The guest may already hang on a page nobody serves: kill works anyway.
            let reason = await vm.kill()
            #expect(reason.kind == .killedByDriver, "\(reason)")
            #expect(!FileManager.default.fileExists(atPath: configuration.stateStore.directory(for: id).string))
            #expect(!FileManager.default.fileExists(atPath: vm.directory.string))
        }
    }

    @Test("A guest on 2 MiB huge pages restores lazily: its pages are served 2 MiB at a time, and it carries on")
    func hugePages() async throws {
        // 64 MiB of guest memory is 32 huge pages, for the source and then its restore.
        let setting = "/proc/sys/vm/nr_hugepages"
        let before = try String(contentsOfFile: setting, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        try "\((Int(before) ?? 0) + 40)\n".write(toFile: setting, atomically: false, encoding: .utf8)
        defer { try? "\(before)\n".write(toFile: setting, atomically: false, encoding: .utf8) }
        let free = try String(contentsOfFile: "/proc/meminfo", encoding: .utf8).split(separator: "\n")
            .first { $0.hasPrefix("HugePages_Free:") }.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(free >= 32, "the host could not reserve 32 huge pages (HugePages_Free: \(free))")
        guard free >= 32 else { return }
        try await EndToEnd.withDriver(.required, name: "uffd-huge") { configuration, assets, directory in
            let tag = "\(getpid())"
            let (snapshot, at) = try await Self.takeSnapshot(
                configuration, assets, id: "uffd-hsrc-\(tag)", into: directory, adjust: { $0.machine.hugePages = .hugetlbfs2M })
            let vm = try await MicroVM.restore(snapshot, id: "uffd-huge-\(tag)", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            let lazy = try #require(vm.lazyMemory)
            try await EndToEnd.using(vm) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(at + 1)", timeout: .seconds(5))
                let served = lazy.statistics
                #expect(served.phase == .serving && served.pagesServed > 0, "\(served)")
                #expect(served.pagesServed <= 32, "2 MiB pages, at most 32 for 64 MiB: \(served)")
            }
            try await SnapshotTests.expectCarriesOn(vm, after: at, "lazy restore on huge pages")
            #expect(lazy.failure == nil)
        }
    }

    @Test("A missing memory file is named before anything runs")
    func missingMemory() async throws {
        try await EndToEnd.withDriver(.disabled, name: "uffd-miss") { configuration, assets, directory in
            let (snapshot, _) = try await Self.takeSnapshot(configuration, assets, id: "uffd-msrc-\(getpid())", into: directory)
            #expect(unlink(snapshot.memoryPath.string) == 0)
            await #expect {
                _ = try await MicroVM.restore(snapshot, id: "uffd-miss-\(getpid())", memory: .lazy, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                return problems.contains { $0.field == "snapshot.memory" }
            }
        }
    }

    @Test("Under a monitor (detached VMs): the monitor serves the memory; the guest carries on; nothing is left", arguments: [SandboxPolicy.required, .disabled])
    func monitored(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "uffd-mon-\(policy.rawValue)") { configuration, assets, directory in
            let tag = "m\(policy.rawValue.prefix(3))-\(getpid())"
            let (snapshot, at) = try await Self.takeSnapshot(configuration, assets, id: "uffd-src-\(tag)", into: directory)
            let monitored = try MonitorTests.monitored(configuration)
            let vm = try await MicroVM.restore(snapshot, id: "uffd-lazy-\(tag)", memory: .lazy, configuration: monitored, logger: EndToEnd.logger)
            #expect(vm.lazyMemory == nil, "the monitor runs the server")
            #expect(try monitored.stateStore.read(id: vm.id.rawValue).lazyMemoryFile == snapshot.memoryPath.string)
            #expect(FileManager.default.fileExists(atPath: vm.directory.string + "/uffd.sock"))
            #expect(!FileManager.default.fileExists(atPath: vm.directory.string + "/restore.memory"))
            // The monitor's server counts live, for this driver and for any other process.
            _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(at + 1)", timeout: .seconds(5))
            let live = try #require(await vm.lazyMemoryStatistics())
            #expect(live.phase == .serving && live.pagesCopied > 0 && live.faults >= live.pagesServed, "\(live)")
            #expect(live.regions >= 1 && live.firecrackerPID != nil, "\(live)")
            let elsewhere = try #require(await MicroVM.lazyMemoryStatistics(id: vm.id.rawValue, configuration: monitored))
            #expect(elsewhere.phase == .serving && elsewhere.pagesServed >= live.pagesServed, "\(elsewhere)")
            #expect(await MicroVM.lazyMemoryStatistics(id: "uffd-src-\(tag)", configuration: monitored) == nil, "not restored lazily")
            try await SnapshotTests.expectCarriesOn(vm, after: at, "lazy, monitored, \(policy.rawValue)")
        }
    }

    @Test("A truncated memory file under a monitor: the monitor's handler refuses it, the create fails with its words")
    func monitoredTruncated() async throws {
        try await EndToEnd.withDriver(.disabled, name: "uffd-mtrunc") { configuration, assets, directory in
            let tag = "\(getpid())"
            let (snapshot, _) = try await Self.takeSnapshot(configuration, assets, id: "uffd-mtsrc-\(tag)", into: directory)
            #expect(truncate(snapshot.memoryPath.string, 16 << 20) == 0)
            let monitored = try MonitorTests.monitored(configuration)
            await #expect {
                _ = try await MicroVM.restore(snapshot, id: "uffd-mtrunc-\(tag)", memory: .lazy, configuration: monitored, logger: EndToEnd.logger)
            } throws: { error in
                guard case .createFailed(_, _, let cause, _) = error as? MicroVMError, let lazy = cause as? LazyMemoryError else {
                    Issue.record("unexpected error: \(error)")
                    return false
                }
                #expect(lazy.step == .handshake)
                #expect(lazy.detail.contains("truncated"), "\(lazy)")
                return true
            }
        }
    }
}

extension LazyRestoreTests {
    @Test("microvm restore --lazy: the detached VM's monitor serves the memory; the guest carries on; stop leaves nothing")
    func cli() async throws {
        try await EndToEnd.withDriver(.required, name: "uffd-cli") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "uffd-cli-\(getpid())", copy = "uffd-cli-copy-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets))
                #expect(started.status == 0, "\(started)")
                #expect(await CLILogsTests.waitUntil { ((try? String(contentsOfFile: CLILogsTests.consoleFile(configuration, id), encoding: .utf8)) ?? "").contains("heartbeat 3") })
                let snapshotDirectory = directory + "/snap"
                let snapshot = try await CLI.run(["snapshot", id, snapshotDirectory] + flags)
                #expect(snapshot.status == 0, "\(snapshot)")
                let removed = try await CLI.run(["rm", "-f", id] + flags)
                #expect(removed.status == 0, "\(removed)")
                let restored = try await CLI.run(
                    ["restore", snapshotDirectory, "--id", copy, "--lazy", "--firecracker", assets.firecracker, "--jailer", assets.jailer] + flags,
                    environment: ["MICROVM_JAILER_CHROOT_BASE": configuration.jailer.chrootBase.string, "MICROVM_JAILER_CGROUP_PARENT": configuration.jailer.parentCgroup ?? ""])
                #expect(restored.status == 0 && restored.lines == [copy], "\(restored)")
                let record = try #require(MicroVM.list(configuration: configuration).first { $0.id == copy }?.record)
                #expect(!FileManager.default.fileExists(atPath: record.directory + "/restore.memory"), "nothing staged")
                // The restored guest goes on beating: its monitor served the pages it touched.
                #expect(await CLILogsTests.waitUntil {
                    ((try? String(contentsOfFile: CLILogsTests.consoleFile(configuration, copy), encoding: .utf8)) ?? "").contains("heartbeat")
                })
                // stats asks the monitor for its server's counters.
                let stats = try await CLI.run(["stats", copy, "--json"] + flags)
                let figures = try #require(try JSONSerialization.jsonObject(with: Data(stats.stdout.utf8)) as? [String: Any], "\(stats)")
                let lazy = try #require(figures["lazy_memory"] as? [String: Any], "\(stats)")
                #expect(lazy["state"] as? String == "serving" && (lazy["pages_served"] as? Int ?? 0) > 0, "\(lazy)")
                let table = try await CLI.run(["stats", copy] + flags)
                #expect(table.stdout.contains("lazy memory: serving, "), "\(table)")
                let stopped = try await CLI.run(["stop", copy, "--timeout", "5"] + flags)
                #expect(stopped.status == 0 && stopped.stdout.contains("the guest shut down"), "\(stopped)")
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }
}

extension EndToEnd {
    /// Threads of this process whose name contains `name`.
    static func liveThreads(named name: String) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.filter { task in
            ((try? String(contentsOfFile: "/proc/self/task/\(task)/comm", encoding: .utf8)) ?? "").contains(name)
        }.count
    }
}
