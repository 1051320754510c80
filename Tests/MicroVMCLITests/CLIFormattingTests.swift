import Foundation
import Synchronization
import Testing

@testable import MicroVMCLI

@Suite("microvm's progress lines")
struct ProgressFormatTests {
    @Test(
        "byte counts in binary units, one decimal above a KiB",
        arguments: [
            (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
            (64 << 20, "64.0 MiB"), ((64 << 20) - 1, "64.0 MiB"), (3 << 30, "3.0 GiB"), (5 << 40, "5.0 TiB"), (-5, "0 B"),
        ] as [(Int64, String)])
    func bytes(count: Int64, expected: String) {
        #expect(ProgressFormat.bytes(count) == expected)
    }

    @Test("the bar fills by whole cells and stays inside its brackets")
    func bar() {
        #expect(ProgressFormat.bar(fraction: 0) == "[--------------------]")
        #expect(ProgressFormat.bar(fraction: 0.5) == "[##########----------]")
        #expect(ProgressFormat.bar(fraction: 0.99) == "[###################-]")
        #expect(ProgressFormat.bar(fraction: 1) == "[####################]")
        #expect(ProgressFormat.bar(fraction: 2) == "[####################]")
        #expect(ProgressFormat.bar(fraction: -1) == "[--------------------]")
        #expect(ProgressFormat.bar(fraction: 0.5, width: 4) == "[##--]")
    }

    @Test("a line: a bar and percentage where the total is known, bytes alone where not")
    func line() {
        let items = [
            ProgressItem(label: "memory", bytes: 16 << 20, total: 64 << 20),
            ProgressItem(label: "state", bytes: 13 * 1024 + 512),
        ]
        #expect(ProgressFormat.line("snapshot vm1", items) == "snapshot vm1: memory [#####---------------]  25% 16.0 MiB / 64.0 MiB, state 13.5 KiB")
        #expect(ProgressFormat.line("restore vm2", []) == "restore vm2: starting")
        #expect(ProgressFormat.line("restore vm2", [ProgressItem(label: "memory", bytes: 2048)], elapsed: .milliseconds(3900)) == "restore vm2: memory 2.0 KiB (3s)")
        let over = ProgressFormat.line("x", [ProgressItem(label: "memory", bytes: 80, total: 64)])
        #expect(over.contains("100%") && over.contains("[####################]"), "never past 100%: \(over)")
        #expect(ProgressFormat.line("x", [ProgressItem(label: "memory", bytes: 5, total: 0)]) == "x: memory 5 B")
    }

    @Test("without a terminal, nothing is shown and the body's result or error comes through")
    func quiet() async throws {
        let probed = ProbeCount()
        let value = await Progress.showing("t", enabled: false, delay: .zero, probe: { probed.add(); return [] }) { () async -> Int in
            try? await Task.sleep(for: .milliseconds(50))
            return 7
        }
        #expect(value == 7)
        #expect(probed.count == 0, "a disabled progress line never even looks at the files")
        struct Failed: Error {}
        await #expect(throws: Failed.self) {
            try await Progress.showing("t", enabled: false, probe: { [] }) { () async throws(Failed) -> Int in throw Failed() }
        }
    }

    @Test("on a terminal: nothing before the delay, then the line redrawn in place as the files grow, erased at the end")
    func shown() async throws {
        let written = Collected()
        let probed = ProbeCount()
        let value = await Progress.showing(
            "snapshot vm", enabled: true, delay: .milliseconds(20), interval: .milliseconds(10),
            probe: {
                probed.add()
                return [ProgressItem(label: "memory", bytes: Int64(probed.count) << 20, total: 64 << 20)]
            },
            write: { written.append(Array($0.utf8)) }
        ) { () async -> Int in
            try? await Task.sleep(for: .milliseconds(200))
            return 1
        }
        #expect(value == 1)
        let text = String(decoding: written.bytes, as: UTF8.self)
        let frames = text.components(separatedBy: "\r\u{1B}[K").dropFirst()
        #expect(frames.count >= 3, "\(text.debugDescription)")
        #expect(frames.first?.hasPrefix("snapshot vm: memory [") == true, "\(text.debugDescription)")
        #expect(frames.last == "", "the line is erased once the work is done")
        #expect(!text.contains("\n"), "redrawn in place, never a new line")
        let quick = Collected()
        _ = await Progress.showing("x", enabled: true, delay: .seconds(5), probe: { [] }, write: { quick.append(Array($0.utf8)) }) { 0 }
        #expect(quick.bytes.isEmpty, "work done within the delay shows nothing")
    }

    @Test("a file's bytes are the ones written, not the length it was given")
    func fileBytes() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("progress-\(getpid())").path
        defer { unlink(path) }
        #expect(ProgressItem.file("memory", [path]) == nil, "no file yet")
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        #expect(fd >= 0)
        #expect(ftruncate(fd, 64 << 20) == 0)
        let sized = try #require(ProgressItem.file("memory", [path], total: 64 << 20))
        #expect(sized.bytes < 1 << 20, "a sized, unwritten file has written almost nothing: \(sized.bytes)")
        let page = [UInt8](repeating: 1, count: 1 << 20)
        _ = page.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        close(fd)
        let written = try #require(ProgressItem.file("memory", [path, path + ".absent"]))
        #expect(written.bytes >= 1 << 20 && written.bytes < 2 << 20, "\(written.bytes)")
        #expect(ProgressItem.file("memory", [path], measure: .length)?.bytes == 64 << 20, "a copy's progress is the offset it reached")
    }
}

final class ProbeCount: Sendable {
    private let value = Mutex(0)
    func add() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}

@Suite("microvm logs: the monitor's files")
struct MonitorLogFilesTests {
    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    @Test("--tail N starts where tail -n would: the final newline closes a line, a partial last line counts")
    func tailStart() {
        let text = Self.bytes("one\ntwo\nthree\n")
        #expect(MonitorLogFiles.tailStart(of: text, lines: 0) == text.count)
        #expect(Array(text[MonitorLogFiles.tailStart(of: text, lines: 1)...]) == Self.bytes("three\n"))
        #expect(Array(text[MonitorLogFiles.tailStart(of: text, lines: 2)...]) == Self.bytes("two\nthree\n"))
        #expect(MonitorLogFiles.tailStart(of: text, lines: 3) == 0)
        #expect(MonitorLogFiles.tailStart(of: text, lines: 10) == 0)
        let partial = Self.bytes("one\ntwo\nthr")
        #expect(Array(partial[MonitorLogFiles.tailStart(of: partial, lines: 1)...]) == Self.bytes("thr"))
        #expect(Array(partial[MonitorLogFiles.tailStart(of: partial, lines: 2)...]) == Self.bytes("two\nthr"))
        #expect(MonitorLogFiles.tailStart(of: [], lines: 2) == 0)
        let blank = Self.bytes("a\n\n\n")
        #expect(Array(blank[MonitorLogFiles.tailStart(of: blank, lines: 2)...]) == Self.bytes("\n\n"))
    }

    @Test("read: the rotated file, then the current one, bytes untouched; follow crosses a rotation and ends at the exit file")
    func readAndFollow() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("logs-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let files = MonitorLogFiles(directory: directory, name: "console.log")
        #expect(!files.exist)
        let invalidUTF8: [UInt8] = [0xff, 0xfe, 0x0d, 0x0a]
        try Data(Self.bytes("old 1\n")).write(to: URL(fileURLWithPath: files.rotatedPath))
        try Data(Self.bytes("new 1\n") + invalidUTF8 + Self.bytes("partial")).write(to: URL(fileURLWithPath: files.path))
        #expect(files.exist)
        let (bytes, current) = files.read()
        #expect(bytes == Self.bytes("old 1\n") + Self.bytes("new 1\n") + invalidUTF8 + Self.bytes("partial"))

        let collected = Collected()
        let writer = Task {
            try await Task.sleep(for: .milliseconds(100))
            let handle = try #require(FileHandle(forWritingAtPath: files.path))
            handle.seekToEndOfFile()
            handle.write(Data(Self.bytes(" line\n")))
            try handle.close()
            try await Task.sleep(for: .milliseconds(100))
            // The monitor's rotation: rename over NAME.1, a new NAME.
            #expect(rename(files.path, files.rotatedPath) == 0)
            try Data(Self.bytes("after rotation\n")).write(to: URL(fileURLWithPath: files.path))
            try await Task.sleep(for: .milliseconds(100))
            try Data("role vmm\npid 1\nexited 0\n".utf8).write(to: URL(fileURLWithPath: files.exitPath))
        }
        let clock = ContinuousClock()
        let started = clock.now
        let end = await files.follow(from: current, interval: .milliseconds(20), stillWriting: { true }, print: { collected.append($0) })
        #expect(end == .exited)
        try await writer.value
        #expect(collected.bytes == Self.bytes(" line\nafter rotation\n"), "\(String(decoding: collected.bytes, as: UTF8.self))")
        #expect(clock.now - started < .seconds(5))
    }

    @Test("follow ends when nothing writes any more (the monitor is gone, the state directory removed) or when cancelled")
    func followEnds() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("logs-end-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let files = MonitorLogFiles(directory: directory, name: "console.log")
        try Data("x\n".utf8).write(to: URL(fileURLWithPath: files.path))
        let (_, current) = files.read()
        #expect(await files.follow(from: current, interval: .milliseconds(10), stillWriting: { false }, print: { _ in }) == .writerGone)
        try FileManager.default.removeItem(atPath: directory)
        #expect(await files.follow(from: nil, interval: .milliseconds(10), stillWriting: { true }, print: { _ in }) == .removed)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let endless = Task { await files.follow(from: nil, interval: .milliseconds(10), stillWriting: { true }, print: { _ in }) }
        try await Task.sleep(for: .milliseconds(50))
        endless.cancel()
        #expect(await endless.value == .interrupted, "Ctrl-C (cancellation) is the only other way out")
    }
}

final class Collected: Sendable {
    private let value = Mutex<[UInt8]>([])
    func append(_ bytes: [UInt8]) { value.withLock { $0 += bytes } }
    var bytes: [UInt8] { value.withLock { $0 } }
}

@Suite("microvm's VM options")
struct VMOptionsTests {
    @Test("A spec file's relative paths are taken from the current directory, as Firecracker takes its config file's, and recorded absolute")
    func relativePathsFromHere() throws {
        let directory = NSTemporaryDirectory() + "vmoptions-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/vm_config.json"
        try #"{"boot-source": {"kernel_image_path": "vmlinux"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "drives": [{"drive_id": "rootfs", "path_on_host": "images/rootfs.ext4", "is_root_device": true, "is_read_only": false}, {"drive_id": "data", "path_on_host": "/abs/data.ext4", "is_root_device": false, "is_read_only": true}]}"#
            .write(toFile: file, atomically: true, encoding: .utf8)
        let options = try VMOptions.parse(["-f", file, "--id", "rel"])
        let spec = try options.spec(environment: [:])
        let here = FileManager.default.currentDirectoryPath
        #expect(spec.boot.kernel == here + "/vmlinux")
        #expect(spec.drives.map(\.path) == [here + "/images/rootfs.ext4", "/abs/data.ext4"])
        #expect(spec.id == "rel")
    }
}
