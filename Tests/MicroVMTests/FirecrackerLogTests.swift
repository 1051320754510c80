import Logging
@testable import MicroVM
import Synchronization
import Testing

@Suite("Firecracker's log, re-emitted")
struct FirecrackerLogTests {
    final class Capture: LogHandler, @unchecked Sendable {
        // Guarded by the mutex; the rest is LogHandler boilerplate.
        let records = Mutex<[(level: Logger.Level, message: String, metadata: Logger.Metadata)]>([])
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            records.withLock { $0.append((event.level, "\(event.message)", event.metadata ?? [:])) }
        }
    }

    @Test("Levels are mapped; a message repeated within a second (a console nobody reads) is emitted once, the rest counted; every line is kept")
    func repeatsAreCounted() async {
        let capture = Capture()
        let log = FirecrackerLog(logger: Logger(label: "test") { _ in capture }, forwardLevel: .info)
        var text = "2026-12-01T00:00:00.000000000 [vm:main:INFO] Running Firecracker v1.12.1\n"
        for _ in 0..<200 {
            text += "2026-12-01T00:00:01.000000000 [vm:fc_vcpu 0:ERROR] Received signal 13, code 0.\n"
            text += "2026-12-01T00:00:01.000000000 [vm:fc_vcpu 0:ERROR] Failed the write to serial: Broken pipe\n"
        }
        text += "2026-12-01T00:00:02.000000000 [vm:main:WARN] Vmm is stopping.\n"
        await log.append(Array(text.utf8))
        let records = capture.records.withLock { $0 }
        #expect(records.map(\.message) == ["Running Firecracker v1.12.1", "Received signal 13, code 0.", "Failed the write to serial: Broken pipe", "Vmm is stopping."])
        #expect(records.map(\.level) == [.info, .error, .error, .warning])
        #expect(await log.recentLines.count == 402)
    }

    @Test("Attaching: the lines the monitor kept from before are kept, not re-emitted; the rest is")
    func historyIsQuiet() async {
        let capture = Capture()
        let log = FirecrackerLog(logger: Logger(label: "test") { _ in capture }, forwardLevel: .info)
        let before = "2026-12-01T00:00:00.000000000 [vm:fc_api:ERROR] Received Error. Status code: 400 Bad Request.\n"
        let after = "2026-12-01T00:00:09.000000000 [vm:main:WARN] Vmm is stopping.\n"
        let (stream, continuation) = AsyncStream<[UInt8]>.makeStream()
        // The history ends in the middle of a chunk, as the monitor's answer and live bytes do.
        continuation.yield(Array((before + after).utf8.prefix(40)))
        continuation.yield(Array((before + after).utf8.dropFirst(40)))
        continuation.finish()
        await log.consume(stream, quietBytes: before.utf8.count)
        #expect(capture.records.withLock { $0.map(\.message) } == ["Vmm is stopping."])
        #expect(await log.recentLines.map(\.message) == ["Received Error. Status code: 400 Bad Request.", "Vmm is stopping."])
    }

    @Test("The monitor's answer gives the length of what it held from before")
    func monitorAnswer() {
        #expect(VMMStreams.historyLength(answer: Array("ok 234464 300000".utf8)) == 65536)
        #expect(VMMStreams.historyLength(answer: Array("ok 0 0".utf8)) == 0)
        // A monitor of an earlier build says only where it starts: everything is re-emitted.
        #expect(VMMStreams.historyLength(answer: Array("ok 42".utf8)) == 0)
        #expect(VMMStreams.historyLength(answer: Array("ok 9 3".utf8)) == 0)
        #expect(VMMStreams.historyLength(answer: Array("error expected".utf8)) == 0)
    }

    @Test("A line logged while a waiter starts waiting is never missed (it used to cost one launch in 100 a second)")
    func waiterNeverMissesALine() async {
        let line = Array("2026-12-01T00:00:00.000000000 [vm:fc_api:INFO] API server started.\n".utf8)
        let clock = ContinuousClock()
        var slowest = Duration.zero
        for _ in 0..<300 {
            let log = FirecrackerLog(logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
            let start = clock.now
            async let found = log.waitForMessage(containing: "API server started", timeout: .seconds(2))
            async let appended: Void = log.append(line)
            _ = await appended
            #expect(await found)
            slowest = max(slowest, clock.now - start)
        }
        #expect(slowest < .milliseconds(500), "the slowest wait took \(slowest)")
    }

    @Test("Console and log lines are matched byte for byte: at the start, the end, repeated first bytes, multi-byte text")
    func byteSearch() {
        #expect("API server started.".containsBytes("API server"))
        #expect("API server started.".containsBytes("started."))
        #expect("aaab".containsBytes("aab"))
        #expect("microvm-guest: écho ✓ ok".containsBytes("écho ✓"))
        #expect("anything".containsBytes(""))
        #expect(!"".containsBytes("x"))
        #expect(!"abc".containsBytes("abcd"))
        #expect(!"abcabd".containsBytes("abce"))
        // Bytes, not canonical equivalence: a decomposed é is not the precomposed one.
        #expect(!"e\u{301}".containsBytes("\u{e9}"))
    }
}

@Suite("Firecracker's log lines")
struct FirecrackerLogLineTests {
    @Test("A line's timestamp, thread, level and message; a line of another shape is kept whole at info")
    func parse() {
        let line = FirecrackerLog.parse("2026-12-01T22:47:57.355762971 [vm-1:fc_vcpu 0:WARN] Received a VcpuEvent::Resume message  ")
        #expect(line.timestamp == "2026-12-01T22:47:57.355762971")
        #expect(line.thread == "fc_vcpu 0")
        #expect(line.level == .warning)
        #expect(line.message == "Received a VcpuEvent::Resume message")
        #expect(FirecrackerLog.parse("t [i:main:ERROR] x").level == .error)
        #expect(FirecrackerLog.parse("t [i:main:DEBUG] x").level == .debug)
        #expect(FirecrackerLog.parse("t [i:main:TRACE] x").level == .trace)
        #expect(FirecrackerLog.parse("t [i:main:INFO] a [b] c").message == "a [b] c")
        let other = FirecrackerLog.parse("thread 'main' panicked at src/main.rs")
        #expect(other.level == .info && other.message == "thread 'main' panicked at src/main.rs" && other.thread.isEmpty)
        let short = FirecrackerLog.parse("t [main] é message")
        #expect(short.level == .info && short.thread.isEmpty && short.message == "é message")
    }
}
