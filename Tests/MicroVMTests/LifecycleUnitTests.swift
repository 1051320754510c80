import FirecrackerAPI
import Foundation
import Logging
@testable import MicroVM
import MicroVMHost
import NIOCore
import Synchronization
import SystemPackage
import Testing

@Suite("The in-memory twin")
struct InMemoryTwinTests {
    static let spec = VMSpec(id: "twin", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: "/images/vmlinux"))

    @Test("It follows the same state machine as the real driver")
    func conformance() async throws {
        let directory = NSTemporaryDirectory() + "microvm-twin-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let violations = await StateMachineConformance.violations(
            of: InMemoryProvider(), spec: Self.spec, scratchDirectory: FilePath(directory))
        #expect(violations.isEmpty, "\(violations)")
    }

    @Test("Tests script the guest: console output, input, how it ends; snapshots restore")
    func scripting() async throws {
        let provider = InMemoryProvider()
        let vm = try await provider.run(Self.spec)
        await vm.guestWrites("booted\n")
        _ = try await vm.console.waitForLine(containing: "booted", timeout: .seconds(1))
        vm.write("ls\n")
        #expect(await vm.input == "ls\n")
        let directory = NSTemporaryDirectory() + "microvm-twin-snap-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let snapshot = try await vm.snapshot(to: FilePath(directory), type: .full)
        let crash = await vm.guestExits(.kvmError, exit: .exited(code: 1))
        #expect(await vm.state == .failed(crash))
        #expect(provider.liveIDs.isEmpty)
        let restored = try await provider.restore(snapshot, id: "twin-2", resume: false, networkOverrides: [:])
        #expect(await restored.state == .paused)
        await #expect {
            _ = try await provider.restore(snapshot, id: "twin-3", resume: true, networkOverrides: ["eth9": "tap9"])
        } throws: { error in
            guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
            return problems.first?.field == "network_overrides.eth9"
        }
        await restored.kill()
    }
}

@Suite("Exit reasons and Firecracker's log")
struct ExitReasonTests {
    static func log(_ lines: String...) -> [FirecrackerLog.Line] {
        lines.map { FirecrackerLog.parse($0) }
    }

    @Test("Exit status and log together decide the reason")
    func classification() {
        let reset = Self.log("2026-01-01T00:00:00.000 [vm:main:INFO] Vmm is stopping.")
        let tripleFault = Self.log(
            "2026-01-01T00:00:00.000 [vm:fc_vcpu 0:INFO] Received KVM_EXIT_SHUTDOWN signal",
            "2026-01-01T00:00:00.000 [vm:main:INFO] Vmm is stopping.")
        let crash = Self.log("2026-01-01T00:00:00.000 [vm:fc_vcpu 0:ERROR] Received KVM_EXIT_INTERNAL_ERROR signal")
        let cases: [(VMMExit, [FirecrackerLog.Line], Bool, ExitReason.Kind)] = [
            (.exited(code: 0), reset, false, .guestShutdown),
            (.exited(code: 0), tripleFault, false, .tripleFault),
            (.exited(code: 1), crash, false, .kvmError),
            (.exited(code: 0), crash, false, .kvmError),  // Firecracker's exit-code race
            (.exited(code: 148), [], false, .seccompViolation),
            (.exited(code: 153), [], false, .badConfiguration),
            (.exited(code: 2), [], false, .vmmError),
            (.signaled(signal: 9), [], true, .killedByDriver),
            (.signaled(signal: 9), [], false, .killed),
            (.signaled(signal: 31), [], false, .seccompViolation),
            (.signaled(signal: 9), crash, false, .kvmError),  // a VMM hung after its VM failed, ended by the driver
            (.unknown, Self.log("2026-01-01T00:00:00.000 [vm:main:INFO] Firecracker exiting successfully. exit_code=0"), false, .guestShutdown),
            (.unknown, crash, false, .kvmError),
            (.unknown, [], false, .unknown),
            // /dev/kvm that does not open: a failure of Firecracker's, not of its configuration.
            (.exited(code: 1), Self.log(
                "2026-01-01T00:00:00.000 [anonymous-instance:main:ERROR] RunWithApiError error: Failed to build MicroVM from Json: Could not Start MicroVM from one single json: Internal error while starting microVM: Kvm error: Error creating KVM object: Permission denied (os error 13)"
            ), false, .vmmError),
        ]
        for (exit, log, byDriver, kind) in cases {
            let reason = ExitReason.classify(exit: exit, log: log, killedByDriver: byDriver)
            #expect(reason.kind == kind, "\(exit) \(log.map(\.message))")
        }
        #expect(ExitReason.classify(exit: .exited(code: 0), log: tripleFault, killedByDriver: false).isClean == false)
    }

    @Test("Log lines are parsed with their level; other text is kept whole")
    func parsing() {
        let line = FirecrackerLog.parse("2026-12-01T13:57:51.792 [vm-1:fc_vcpu 0:WARN] Something odd")
        #expect(line.level == .warning && line.thread == "fc_vcpu 0" && line.message == "Something odd")
        #expect(FirecrackerLog.parse("no brackets").message == "no brackets")
    }

    @Test("A VM that ends under an operation: the error says how, a post-mortem keeps an unclean end for doctor")
    func endedUnderAnOperation() {
        let lazy = ExitReason(kind: .lazyMemoryFailed, exit: .signaled(signal: 9), evidence: ["lazy memory: serving page faults (/x/uffd.sock) failed: populating the page at 0x1000 (Bad address)"])
        let error = MicroVMError.vmEnded(id: "vm-1", operation: "PATCH /vm Resumed", reason: lazy)
        #expect("\(error)" == "VM vm-1: PATCH /vm Resumed: the VM ended while it was under way: \(lazy)")
        #expect("\(lazy)".hasPrefix("its memory could not be served (lazy restore) (killed (SIGKILL)); lazy memory:"))
        #expect(error.hint.contains("microvm doctor"))
        let postMortem = PostMortem(error: error)
        #expect(postMortem?.outcome == .ended && postMortem?.exitReason == lazy && postMortem?.step == "PATCH /vm Resumed")
        let clean = MicroVMError.vmEnded(id: "vm-1", operation: "PATCH /vm Paused", reason: ExitReason(kind: .guestShutdown, exit: .exited(code: 0)))
        #expect(PostMortem(error: clean) == nil, "a clean end is nothing to diagnose")
    }
}

@Suite("Console ring")
struct ConsoleTests {
    @Test("Bounded in lines and in bytes, oldest dropped, indexes kept")
    func bounds() async {
        let console = Console(limits: .init(lines: 3, bytes: 1 << 20))
        await console.append(Array("a\nb\nc\nd\n".utf8))
        #expect(await console.recentLines.map(\.text) == ["b", "c", "d"])
        #expect(await console.recentLines.first?.index == 1)
        let small = Console(limits: .init(lines: 100, bytes: 10))
        await small.append(Array("12345\n67890\nabcde\n".utf8))
        #expect(await small.recentLines.map(\.text) == ["67890", "abcde"])
        await small.append(Array(String(repeating: "x", count: 25).utf8))
        #expect(await small.recentLines.last?.text.count == 10, "an endless line is cut at the byte bound")
    }

    @Test("The file gets every byte unchanged and rotates at its size")
    func rotatingFile() async throws {
        let directory = NSTemporaryDirectory() + "microvm-console-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/console.log"
        let console = Console(file: .init(path: FilePath(path), maximumBytes: 4096, keep: 1))
        let chunk = String(repeating: "y", count: 3000) + "\r\n"
        for _ in 0..<3 { await console.append(Array(chunk.utf8)) }
        await console.finish()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == chunk)
        #expect(try String(contentsOfFile: path + ".1", encoding: .utf8) == chunk)
        #expect(!FileManager.default.fileExists(atPath: path + ".2"))
    }
}

@Suite("Sparse snapshot files")
struct SparseFileTests {
    @Test("A copy keeps holes and data (zeros included); an overlay writes only the source's data")
    func copyAndOverlay() throws {
        let directory = NSTemporaryDirectory() + "microvm-sparse-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let base = directory + "/base", diff = directory + "/diff", merged = directory + "/merged"
        let page = 4096
        try Data(repeating: 0xAA, count: page * 4).write(to: URL(fileURLWithPath: base))
        // The diff: page 1 dirtied to zeros, page 3 dirtied to 0x55, pages 0 and 2 holes.
        let fd = open(diff, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = [UInt8](repeating: 0, count: page).withUnsafeBytes { pwrite(fd, $0.baseAddress, page, off_t(page)) }
        _ = [UInt8](repeating: 0x55, count: page).withUnsafeBytes { pwrite(fd, $0.baseAddress, page, off_t(page * 3)) }
        close(fd)
        try SparseFile.copy(base, to: merged)
        try SparseFile.overlay(diff, onto: merged)
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: merged)))
        #expect(bytes.count == page * 4)
        #expect(bytes[0..<page].allSatisfy { $0 == 0xAA })
        #expect(bytes[page..<(2 * page)].allSatisfy { $0 == 0 }, "a dirtied page of zeros is written")
        #expect(bytes[(2 * page)..<(3 * page)].allSatisfy { $0 == 0xAA })
        #expect(bytes[(3 * page)...].allSatisfy { $0 == 0x55 })
        #expect(throws: SystemCallError.self) { try SparseFile.copy(base, to: merged) }
    }
}

@Suite("State store: a creation's claim")
struct CreationClaimTests {
    @Test("A directory without a record is being created while its claim is held, interrupted once it is dropped, and neither once the record exists")
    func claim() throws {
        let root = FilePath(NSTemporaryDirectory() + "/claim-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(atPath: root.string) }
        let store = StateStore(root: root)
        let claim = try store.create(id: "vm-1")
        #expect(store.creationProgress(id: "vm-1") == .inProgress)
        #expect(throws: MicroVMError.self) { try store.read(id: "vm-1") }
        // The claim is not the flock record writes take: the creator's own write never waits for it.
        try "{}".write(toFile: store.recordPath(for: "vm-1").string, atomically: true, encoding: .utf8)
        #expect(store.creationProgress(id: "vm-1") == nil)
        try FileManager.default.removeItem(atPath: store.recordPath(for: "vm-1").string)
        claim.release()
        #expect(store.creationProgress(id: "vm-1") == .interrupted)
        do {
            _ = try store.read(id: "vm-1")
            Issue.record("read a record that does not exist")
        } catch {
            guard case .notAttachable(_, let reason) = error else { throw error }
            #expect(reason.contains("died before writing its record"))
        }
        #expect(store.creationProgress(id: "no-such-vm") == nil)
        // A second claim on the same id is refused: the directory exists.
        #expect(throws: MicroVMError.self) { _ = try store.create(id: "vm-1") }
    }

    @Test("A claim notes where the VM's jail is, for gc to find it where the spec put it")
    func jailNote() throws {
        let root = FilePath(NSTemporaryDirectory() + "/claim-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { try? FileManager.default.removeItem(atPath: root.string) }
        let store = StateStore(root: root)
        let id = try VMIdentifier("vm-2")
        let jail = CreationJail(layout: JailLayout(chrootBase: "/srv/tenant-a", execFileName: "firecracker", id: id), parentCgroup: "tenants/a")
        let claim = try store.create(id: "vm-2", jail: jail)
        defer { claim.release() }
        #expect(CreationJail(notedOn: store.directory(for: "vm-2"), id: id) == jail)
        #expect(jail.note == Array("/srv/tenant-a\0firecracker\0tenants/a".utf8))
        let plain = try store.create(id: "vm-3")
        defer { plain.release() }
        #expect(CreationJail(notedOn: store.directory(for: "vm-3"), id: try VMIdentifier("vm-3")) == nil)
    }

    @Test("A record says its VM's layout: an unjailed VM's directory without root/, and one from before that change with it")
    func recordLayout() throws {
        func record(sandboxed: Bool, directory: String) -> VMRecord {
            VMRecord(
                id: "vm-4", spec: VMSpec(id: "vm-4", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: "/k")), state: .running,
                pid: nil, processStartTime: nil, sandboxed: sandboxed, directory: directory, jailDirectory: "/srv/jailer/firecracker/vm-4",
                chrootBase: "/srv/jailer", execFileName: "firecracker", parentCgroup: "microvm", cgroupDirectories: [],
                apiSocket: directory + "/firecracker.socket", firecrackerBinary: "/usr/bin/firecracker", driverPID: 1, driverStartTime: nil)
        }
        let unjailed = try #require(record(sandboxed: false, directory: "/srv/jailer/firecracker/vm-4").layout)
        #expect(unjailed.kind == .directory && unjailed.rootDirectory == "/srv/jailer/firecracker/vm-4")
        let older = try #require(record(sandboxed: false, directory: "/srv/jailer/firecracker/vm-4/root").layout)
        #expect(older.kind == .jail && older.rootDirectory == "/srv/jailer/firecracker/vm-4/root")
        let jailed = try #require(record(sandboxed: true, directory: "/srv/jailer/firecracker/vm-4/root").layout)
        #expect(jailed.kind == .jail)
    }
}

@Suite("Record dates")
struct RecordDateTests {
    struct Stamped: Codable, Equatable { var at: Date }

    @Test("Dates are written as `.iso8601` writes them, and records written that way read back")
    func sameTextAsFoundations() throws {
        let reference = JSONEncoder()
        reference.dateEncodingStrategy = .iso8601
        for seconds in [0, 1_764_635_755, 1_798_761_599, 4_102_444_800] as [TimeInterval] {
            let value = Stamped(at: Date(timeIntervalSince1970: seconds))
            let ours = try JSONEncoder.stateRecords.encode(value)
            #expect(String(decoding: ours, as: UTF8.self) == String(decoding: try reference.encode(value), as: UTF8.self))
            #expect(try JSONDecoder.records.decode(Stamped.self, from: try reference.encode(value)) == value)
            #expect(try JSONDecoder.records.decode(Stamped.self, from: try JSONEncoder.records.encode(value)) == value)
        }
    }

    @Test("A date that is not ISO 8601 is a decoding error that shows it")
    func rejectsOtherText() {
        do {
            _ = try JSONDecoder.records.decode(Stamped.self, from: Data(#"{"at": "yesterday"}"#.utf8))
            Issue.record("decoded a date from 'yesterday'")
        } catch {
            #expect("\(error)".contains("yesterday"))
        }
    }
}

@Suite("Process launch")
struct ProcessLaunchTests {
    /// What a VMM gets from ``ProcessLauncher``: this process's environment byte for byte (a
    /// value with `=` and an empty one included), an empty signal mask and no ignored signal,
    /// its own session, no descriptor above 2 (one left without close-on-exec here included),
    /// the working directory asked for; and its exit status, reaped.
    @Test func whatTheChildGets() async throws {
        setenv("MICROVM_TEST_ENV_EQUALS", "a=b c", 1)
        setenv("MICROVM_TEST_ENV_EMPTY", "", 1)
        defer {
            unsetenv("MICROVM_TEST_ENV_EQUALS")
            unsetenv("MICROVM_TEST_ENV_EMPTY")
        }
        let leaked = open("/dev/null", O_RDONLY)  // no O_CLOEXEC: the child must not get it
        defer { close(leaked) }
        var output: [Int32] = [-1, -1]
        #expect(pipe(&output) == 0)
        let nullDevice = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(nullDevice) }
        let script = """
            echo "env:$MICROVM_TEST_ENV_EQUALS|${MICROVM_TEST_ENV_EMPTY-unset}"
            echo "pwd:$(pwd)"
            grep -E '^(SigBlk|SigIgn):' /proc/self/status
            echo "session:$(cut -d' ' -f6 /proc/$$/stat) pid:$$"
            cd /proc/$$/fd && echo "fds:" * && cd /tmp
            exit 7
            """
        let spawned = try await ProcessLauncher.spawn(
            executable: "/bin/sh", arguments: ["-c", script], workingDirectory: "/tmp",
            standardInput: nullDevice, standardOutput: output[1], standardError: output[1])
        close(output[1])
        var text: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(output[0], $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += buffer[0..<count]
        }
        close(output[0])
        #expect(await spawned.termination.value == .exited(code: 7))
        close(spawned.pidfd)
        let lines = String(decoding: text, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.contains("env:a=b c|"), "\(lines)")
        #expect(lines.contains("pwd:/tmp"), "\(lines)")
        #expect(lines.contains { $0.hasPrefix("SigBlk:") && $0.hasSuffix("0000000000000000") }, "\(lines)")
        // No standard signal ignored (glibc's spawn ignores its own two internal real-time ones).
        let ignored = lines.first { $0.hasPrefix("SigIgn:") }.flatMap { UInt64($0.dropFirst("SigIgn:".count).trimmingCharacters(in: .whitespaces), radix: 16) }
        #expect(ignored.map { $0 & 0x7FFF_FFFF } == 0, "\(lines)")
        #expect(lines.contains("session:\(spawned.pid) pid:\(spawned.pid)"), "\(lines)")
        // 3 is the shell's own handle on the directory it lists; the parent's descriptors
        // (`leaked` among them) are all gone.
        #expect(lines.contains("fds: 0 1 2 3"), "\(lines)")
        #expect(leaked > 3)
    }

    @Test("Concurrent spawns (one on its caller's thread, the others on the thread pool) each get their own child and exit status")
    func concurrentSpawns() async throws {
        let nullDevice = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(nullDevice) }
        let statuses = try await withThrowingTaskGroup(of: (Int32, VMMExit).self) { group in
            for code in Int32(1)...16 {
                group.addTask {
                    let spawned = try await ProcessLauncher.spawn(
                        executable: "/bin/sh", arguments: ["-c", "sleep 0.05; exit \(code)"], workingDirectory: nil,
                        standardInput: nullDevice, standardOutput: nullDevice, standardError: nullDevice)
                    close(spawned.pidfd)
                    return (code, await spawned.termination.value)
                }
            }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect(statuses.count == 16)
        #expect(statuses.allSatisfy { $0.value == .exited(code: $0.key) }, "\(statuses)")
    }

    @Test("A binary that cannot be started is an error naming it and why, and nothing runs")
    func missingBinary() async {
        let nullDevice = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(nullDevice) }
        await #expect {
            _ = try await ProcessLauncher.spawn(
                executable: "/nonexistent/firecracker", arguments: [], workingDirectory: nil,
                standardInput: nullDevice, standardOutput: nullDevice, standardError: nullDevice)
        } throws: { error in
            let failure = error as? LaunchFailure
            return failure?.executable == "/nonexistent/firecracker" && failure?.message == "No such file or directory"
        }
    }
}

@Suite("Batch event loops")
struct BatchEventLoopTests {
    /// Every loop runs as SCHED_BATCH (3), and a cancelled timeout never fires while one that
    /// is left runs.
    @Test func batchPolicyAndTimers() async throws {
        for loop in BatchEventLoops.group.makeIterator() {
            #expect(try await loop.submit { sched_getscheduler(0) }.get() == 3)
        }
        let fired = Mutex<[String]>([])
        let cancelled = WaitTimer(after: .milliseconds(5)) { fired.withLock { $0.append("cancelled") } }
        cancelled.cancel()
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        _ = WaitTimer(after: .milliseconds(10)) {
            fired.withLock { $0.append("kept") }
            continuation.finish()
        }
        for await _ in stream {}
        try await Task.sleep(for: .milliseconds(20))
        #expect(fired.withLock { $0 } == ["kept"])
    }

    /// Records are written on batch threads, and a console and a log run on the batch loop
    /// that reads them (their actors' executor), so a reader hands them chunks with no hop.
    @Test func recordsAndStreamsRunAtBatchPriority() async throws {
        struct Refused: Error {}
        for _ in 0..<4 {
            #expect(try await BatchThreadPool.run({ () throws(Refused) -> Int32 in sched_getscheduler(0) }, unavailable: { _ in Refused() }) == 3)
        }
        await #expect(throws: Refused.self) {
            try await BatchThreadPool.run({ () throws(Refused) -> Int in throw Refused() }, unavailable: { _ in Refused() })
        }
        let console = Console()
        let log = FirecrackerLog(logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        #expect(try await console.loop.submit { sched_getscheduler(0) }.get() == 3)
        #expect(try await log.loop.submit { sched_getscheduler(0) }.get() == 3)
        // The sinks deliver on the loop itself, in order, as a reader does.
        try await console.loop.submit {
            console.readerSink.deliver(Array("first\nsec".utf8))
            console.readerSink.deliver(Array("ond\n".utf8))
            console.readerSink.finish()
        }.get()
        #expect(await console.recentLines.map(\.text) == ["first", "second"])
        #expect(await console.isFinished)
        try await log.loop.submit {
            log.readerSink.deliver(Array("2026-12-02T10:00:00.000000000 [anonymous-instance:main:INFO] Running Firecracker v1.12.1\n".utf8))
        }.get()
        #expect(await log.recentLines.map(\.message) == ["Running Firecracker v1.12.1"])
    }
}
