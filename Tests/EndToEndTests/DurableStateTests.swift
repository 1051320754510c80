import Dispatch
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import SystemPackage
import Testing

/// A driver process the tests can SIGKILL (Tests/MicroVMTestDriver), as a crash would.
struct KillableDriver {
    let pid: Int32
    let lines: AsyncStream<String>
    let finished: Task<Void, Never>

    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("MicroVMTestDriver").path
    }

    static func start(_ arguments: [String]) async throws -> KillableDriver {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw PrerequisiteMissing("pipe failed") }
        let readEnd = fds[0]
        let writeEnd = FileDescriptor(rawValue: fds[1])
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        let finished = Task {
            _ = try? await Subprocess.run(
                .path(FilePath(binary)), arguments: Arguments(arguments), input: .none,
                output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true), error: .discarded
            ) { execution in
                pidContinuation.yield(execution.processIdentifier.value)
                pidContinuation.finish()
            }
        }
        let (lines, continuation) = AsyncStream<String>.makeStream()
        EndToEnd.readLines(from: readEnd, { continuation.yield($0) }, end: { continuation.finish() })
        var iterator = pids.makeAsyncIterator()
        guard let pid = await iterator.next() else { throw PrerequisiteMissing("the test driver did not start: \(binary)") }
        return KillableDriver(pid: pid, lines: lines, finished: finished)
    }

    /// The first line starting with READY or FAILED.
    func ready() async -> String {
        for await line in lines where line.hasPrefix("READY") || line.hasPrefix("FAILED") { return line }
        return "ENDED"
    }

    func crash() async {
        kill(pid, SIGKILL)
        await finished.value
    }
}

/// VMs outlive the driver that created them: a new driver lists them, attaches, and they work.
@Suite("Durable state end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct DurableStateTests {
    static func driverArguments(_ configuration: DriverConfiguration, _ assets: TestAssets, id: String, then: String, extra: [String] = []) -> [String] {
        [
            "--jailer", assets.jailer, "--firecracker", assets.firecracker, "--kernel", assets.kernel,
            "--chroot-base", configuration.jailer.chrootBase.string, "--parent-cgroup", configuration.jailer.parentCgroup ?? "microvm",
            "--state-dir", configuration.stateStore.root.string, "--policy", configuration.policy.rawValue, "--id", id, "--then", then,
        ] + extra
    }

    @Test(
        "SIGKILL the driver after create, after start, while paused, during a snapshot: a new driver lists the VM, attaches, the console works, it stops cleanly",
        arguments: [SandboxPolicy.required, .disabled])
    func survivesItsDriver(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "crash-\(policy.rawValue)") { configuration, assets, directory in
            for then in ["created", "running", "paused", "snapshotting"] {
                let id = "crash-\(then.prefix(4))-\(policy.rawValue.prefix(3))-\(getpid())"
                let driver = try await KillableDriver.start(
                    Self.driverArguments(configuration, assets, id: id, then: then, extra: ["--snapshot-dir", directory + "/snap-\(id)"]))
                let ready = await driver.ready()
                #expect(ready.hasPrefix("READY"), "\(then): \(ready)")
                await driver.crash()

                let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id }, "\(then): not listed")
                #expect(listing.process.isAlive, "\(then): \(listing.process)")
                #expect(!listing.supervised)
                let vm = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(vm) { vm in
                    let expected = ["created": "created", "running": "running", "paused": "paused", "snapshotting": "paused"][then]!
                    let state = await vm.state
                    // A snapshot may have finished before the kill; then the VM was resumed.
                    #expect(state.name == expected || (then == "snapshotting" && state == .running), "\(then): \(state)")
                    if state == .created { try await vm.start() }
                    if state == .paused { try await vm.resume() }
                    vm.write("hello again \(then)\n")
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: echo hello again \(then)", timeout: .seconds(10))
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "\(then): \(reason)")
                }
                #expect(!FileManager.default.fileExists(atPath: configuration.stateStore.directory(for: id).string))
            }
        }
    }

    @Test(
        "SIGKILL the driver while Firecracker builds the VM, before the first record: listed as creating, then failed; gc stops the orphaned Firecracker and removes everything",
        arguments: [SandboxPolicy.required, .disabled])
    func interruptedCreation(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "icreate-\(policy.rawValue)") { configuration, assets, _ in
            let id = "icreate-\(policy.rawValue.prefix(3))-\(getpid())"
            // The VM's spec puts its jail under a chroot base of its own: gc, with the driver's
            // configuration, finds it from the note the creating driver left.
            let ownBase = NSTemporaryDirectory() + "/icreate-base-\(getpid())"
            try FileManager.default.createDirectory(atPath: ownBase, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: ownBase) }
            var specJailer = configuration.jailer
            specJailer.chrootBase = FilePath(ownBase)
            let layout = try Jail(configuration: specJailer, id: VMIdentifier(id)).layout.with(kind: policy == .disabled ? .directory : .jail)
            // 256 GiB of guest memory, never touched: Firecracker's build takes about a second,
            // and `run` writes the record only once the VM is built.
            let driver = try await KillableDriver.start(
                Self.driverArguments(
                    configuration, assets, id: id, then: "running", extra: ["--memory", "262144", "--launch", "run", "--spec-chroot-base", ownBase]))
            /// Firecracker itself in the VM's directory (not a jailer on its way to exec it).
            func vmms() -> [Int32] {
                JailedVMM.processesInJail(layout: layout).filter {
                    (try? String(contentsOfFile: "/proc/\($0)/comm", encoding: .utf8))?.hasPrefix("firecracker") == true
                }
            }
            var orphans: [Int32] = []
            defer { for pid in orphans + JailedVMM.processesInJail(layout: layout) { kill(pid, SIGKILL) } }
            for _ in 0..<1000 where orphans.isEmpty {
                orphans = vmms()
                if orphans.isEmpty { try await Task.sleep(for: .milliseconds(2)) }
            }
            #expect(!orphans.isEmpty, "Firecracker never started in \(layout.rootDirectory)")
            let creating = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
            #expect(creating.creation == .inProgress && creating.record == nil, "\(creating)")
            #expect(creating.supervised)
            // Another driver must not remove what a live one is still creating.
            await #expect {
                _ = try await MicroVM.remove(id: id, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .heldByAnotherDriver(_, "remove", let reason) = error as? MicroVMError else { return false }
                return reason.contains("creating it") && "\(error)".contains("cannot remove:")
            }
            #expect(vmms() == orphans, "a refused remove stops nothing")
            await driver.crash()

            let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
            #expect(listing.creation == .interrupted, "\(listing)")
            #expect(!listing.supervised)
            #expect(vmms() == orphans, "the VMM runs on, orphaned, until gc")
            await #expect {
                _ = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .notAttachable(_, let reason) = error as? MicroVMError else { return false }
                return reason.contains("died before writing its record")
            }
            let collected = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
            let report = try #require(collected.first { $0.id == id }?.teardown, "\(collected)")
            #expect(report.isComplete && report.removedJailDirectory && !report.stopped.isEmpty, "\(report)")
            #expect(JailedVMM.processesInJail(layout: layout).isEmpty)
            for pid in orphans {
                // Dead (a zombie until its reaper gets to it), not running on.
                #expect(ProcFS.state(of: pid) == nil || ProcFS.state(of: pid) == "Z", "pid \(pid) is still there: \(report)")
            }
            #expect(!FileManager.default.fileExists(atPath: configuration.stateStore.directory(for: id).string))
            #expect(MicroVM.list(configuration: configuration).isEmpty)
        }
    }

    @Test("A VM whose Firecracker died with its driver is listed as ended, and gc removes everything it left")
    func garbageCollection() async throws {
        try await EndToEnd.withDriver(.required, name: "gc") { configuration, assets, _ in
            let id = "gc-\(getpid())"
            let driver = try await KillableDriver.start(Self.driverArguments(configuration, assets, id: id, then: "running"))
            let ready = await driver.ready()
            let pid = try #require(Int32(ready.split(separator: " ").last ?? ""), "\(ready)")
            await driver.crash()
            kill(pid, SIGKILL)
            for _ in 0..<200 where ProcFS.state(of: pid).map({ $0 != "Z" }) ?? false {
                try await Task.sleep(for: .milliseconds(10))
            }
            let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
            #expect(!listing.process.isAlive)
            #expect(listing.state?.name == "failed")
            await #expect {
                _ = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .notAttachable = error as? MicroVMError else { return false }
                return true
            }
            let collected = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
            let report = try #require(collected.first { $0.id == id }?.teardown)
            #expect(report.isComplete && report.removedJailDirectory, "\(report)")
            #expect(MicroVM.list(configuration: configuration).isEmpty)
        }
    }

    @Test("A recorded pid now used by another process is reported as reused and never signalled; gc leaves that process alone")
    func reusedPID() async throws {
        try await EndToEnd.withDriver(.disabled, name: "reuse") { configuration, assets, _ in
            let id = "reuse-\(getpid())"
            let driver = try await KillableDriver.start(Self.driverArguments(configuration, assets, id: id, then: "running"))
            let ready = await driver.ready()
            let vmPID = try #require(Int32(ready.split(separator: " ").last ?? ""), "\(ready)")
            await driver.crash()
            // A foreign process takes the record's place: rewrite the record with its pid.
            let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
            let sleeper = Task {
                _ = try? await Subprocess.run(.path("/bin/sleep"), arguments: ["30"], input: .none, output: .discarded, error: .discarded) { execution in
                    pidContinuation.yield(execution.processIdentifier.value)
                    pidContinuation.finish()
                }
            }
            var pidIterator = pids.makeAsyncIterator()
            let foreign = try #require(await pidIterator.next())
            defer { kill(foreign, SIGKILL) }
            let recordPath = configuration.stateStore.directory(for: id).appending("state.json").string
            var json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: recordPath))) as! [String: Any]
            json["pid"] = Int(foreign)
            try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: recordPath))
            kill(vmPID, SIGKILL)
            // The VM's Firecracker is gone once it is a zombie or reaped (a SIGKILL takes a moment).
            for _ in 0..<200 where ProcFS.state(of: vmPID).map({ $0 != "Z" }) ?? false {
                try await Task.sleep(for: .milliseconds(10))
            }
            var status: Int32 = 0
            _ = waitpid(vmPID, &status, WNOHANG)  // reaped here when this process adopted it

            let listing = try #require(MicroVM.list(configuration: configuration).first { $0.id == id })
            #expect(listing.process == .reused(pid: foreign))
            await #expect(throws: MicroVMError.self) { _ = try await MicroVM.attach(id: id, configuration: configuration) }
            _ = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
            #expect(ProcFS.state(of: foreign).map { $0 != "Z" } == true, "gc signalled a process that is not the VM's")
            #expect(MicroVM.list(configuration: configuration).isEmpty)
            kill(foreign, SIGKILL)
            await sleeper.value
        }
    }

    @Test("Two drivers creating the same id at once: exactly one wins, the other gets a clear error")
    func sameIDTwice() async throws {
        try await EndToEnd.withDriver(.disabled, name: "twice") { configuration, assets, _ in
            let id = "twice-\(getpid())"
            let arguments = Self.driverArguments(configuration, assets, id: id, then: "running")
            async let first = KillableDriver.start(arguments)
            async let second = KillableDriver.start(arguments)
            let drivers = try await [first, second]
            var outcomes: [String] = []
            for driver in drivers { outcomes.append(await driver.ready()) }
            #expect(outcomes.filter { $0.hasPrefix("READY") }.count == 1, "\(outcomes)")
            #expect(outcomes.contains { $0.hasPrefix("FAILED") && ($0.contains("already exists") || $0.contains("jail")) }, "\(outcomes)")
            for driver in drivers { await driver.crash() }
            let vm = try await MicroVM.attach(id: id, configuration: configuration, logger: EndToEnd.logger)
            await vm.kill()
        }
    }

    @Test("A corrupt record is reported with its path; other VMs are unaffected")
    func corruptRecord() async throws {
        try await EndToEnd.withDriver(.disabled, name: "corrupt") { configuration, assets, _ in
            let good = try await MicroVM.run(EndToEnd.spec(assets, id: "good-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            let store = configuration.stateStore
            let bad = store.directory(for: "bad-\(getpid())")
            try FileManager.default.createDirectory(atPath: bad.string, withIntermediateDirectories: true)
            try Data("{\"format\": 1, \"id\": ".utf8).write(to: URL(fileURLWithPath: bad.appending("state.json").string))
            defer { try? FileManager.default.removeItem(atPath: bad.string) }
            let listings = MicroVM.list(configuration: configuration)
            #expect(listings.first { $0.id == good.id.rawValue }?.process.isAlive == true)
            let broken = try #require(listings.first { $0.id == "bad-\(getpid())" })
            guard case .corruptRecord(_, let path, _)? = broken.problem else {
                Issue.record("expected a corrupt record, got \(String(describing: broken.problem))")
                return
            }
            #expect(path == bad.appending("state.json").string)
            let collected = await MicroVM.garbageCollect(configuration: configuration, logger: EndToEnd.logger)
            #expect(collected.first { $0.id == "bad-\(getpid())" }?.skipped != nil, "gc never removes what it cannot read")
            #expect(await good.stop().kind == .guestShutdown)
        }
    }
}
