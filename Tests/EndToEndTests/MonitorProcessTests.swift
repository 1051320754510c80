import Foundation
import Subprocess
import SystemPackage
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm-monitor` on its own, with ordinary processes as the "VMM": its one stdout line, the
/// rings and their offsets, the capped files, input, the exit file, a launcher that leaves its
/// child behind (the jailer's way), and a launcher that cannot start.
@Suite("microvm-monitor with ordinary processes", .serialized)
struct MonitorProcessTests {
    struct Run {
        let directory: String
        let finished: Task<(status: TerminationStatus, line: String), any Error>
    }

    static func start(_ command: [String], options: [String] = []) throws -> Run {
        guard FileManager.default.isExecutableFile(atPath: MonitorTests.monitorBinary) else {
            throw PrerequisiteMissing("microvm-monitor is not built at \(MonitorTests.monitorBinary)")
        }
        let directory = NSTemporaryDirectory() + "microvm-monitor-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let arguments = ["--dir", directory] + options + ["--"] + command
        let finished = Task { () throws -> (status: TerminationStatus, line: String) in
            let result = try await Subprocess.run(
                .path(FilePath(MonitorTests.monitorBinary)), arguments: Arguments(arguments), output: .string(limit: 4096), error: .discarded)
            return (result.terminationStatus, result.standardOutput)
        }
        return Run(directory: directory, finished: finished)
    }

    static func waitFor(_ path: String) async throws {
        for _ in 0..<500 where !FileManager.default.fileExists(atPath: path) {
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// A connection to the monitor's socket that has sent `request`.
    static func connect(_ directory: String, _ request: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array((directory + "/monitor.sock").utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (index, byte) in path.enumerated() { buffer[index] = byte }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            throw PrerequisiteMissing("connect to the monitor failed: errno \(errno)")
        }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let bytes = Array(request.utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        return fd
    }

    /// Reads until `count` bytes or end of file (or the 5 s timeout).
    static func read(_ fd: Int32, atLeast count: Int = .max) -> [UInt8] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while bytes.count < count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += buffer[..<n]
        }
        return bytes
    }

    static func text(_ path: String) -> String {
        (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    }

    @Test("A stream longer than its ring: a client from offset 0 gets the ring's start offset and its bytes; the file is rotated once at --file-max")
    func ringAndFiles() async throws {
        let run = try Self.start(["/bin/sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; sleep 1"], options: ["--console-ring", "65536", "--file-max", "100000"])
        defer { try? FileManager.default.removeItem(atPath: run.directory) }
        try await Self.waitFor(run.directory + "/console.log.1")
        try await Task.sleep(for: .milliseconds(300))
        let fd = try Self.connect(run.directory, "console 0\n")
        defer { close(fd) }
        let received = Self.read(fd, atLeast: 10 + 65536)
        let header = String(decoding: received.prefix { $0 != UInt8(ascii: "\n") }, as: UTF8.self)
        #expect(header == "ok \(300_000 - 65536) 300000", "the retained bytes run from the ring's start to the stream's end: \(header)")
        #expect(received.count == header.utf8.count + 1 + 65536)
        let (status, line) = try await run.finished.value
        #expect(status.isSuccess)
        #expect(line.hasPrefix("vmm "))
        let sizes = ["console.log", "console.log.1"].map { (try? FileManager.default.attributesOfItem(atPath: run.directory + "/" + $0)[.size] as? Int) ?? -1 }
        #expect(sizes.allSatisfy { $0 > 0 && $0 <= 100_000 }, "\(sizes)")
        #expect(Self.text(run.directory + "/exit").contains("exited 0"))
        #expect(!FileManager.default.fileExists(atPath: run.directory + "/monitor.sock"))
    }

    @Test("A client whose request comes as the child ends (a guest that ends at once, read on demand) still gets the whole stream")
    func lateRequestGetsEverything() async throws {
        let run = try Self.start(["/bin/sh", "-c", "read line; echo 'hello from the guest'; exit 0"])
        defer { try? FileManager.default.removeItem(atPath: run.directory) }
        try await Self.waitFor(run.directory + "/monitor.sock")
        let late = try Self.connect(run.directory, "")  // connected, its request not sent yet
        defer { close(late) }
        let input = try Self.connect(run.directory, "input 0\ngo\n")
        defer { close(input) }
        try await Self.waitFor(run.directory + "/exit")  // the child has ended, the monitor is finishing
        _ = Array("console 0\n".utf8).withUnsafeBytes { send(late, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        let output = String(decoding: Self.read(late), as: UTF8.self)
        #expect(output == "ok 0 21\nhello from the guest\n", "\(output)")
        _ = try await run.finished.value
    }

    @Test("Input from an input-only client reaches the child's stdin; its output and stderr are served and kept; the exit file has its code")
    func inputAndExit() async throws {
        let run = try Self.start(["/bin/sh", "-c", "read line; echo \"got $line\"; echo oops >&2; exit 3"])
        defer { try? FileManager.default.removeItem(atPath: run.directory) }
        try await Self.waitFor(run.directory + "/monitor.sock")
        let console = try Self.connect(run.directory, "console 0\n")
        defer { close(console) }
        let input = try Self.connect(run.directory, "input 0\nhello\n")
        defer { close(input) }
        let output = String(decoding: Self.read(console), as: UTF8.self)
        #expect(output == "ok 0 0\ngot hello\n", "nothing held before the request, then the child's output: \(output)")
        let (status, _) = try await run.finished.value
        #expect(status.isSuccess)
        #expect(Self.text(run.directory + "/exit") == "role vmm\npid \(Self.text(run.directory + "/exit").split(separator: "\n")[1].dropFirst(4))\nexited 3\n")
        #expect(Self.text(run.directory + "/stderr.log") == "oops\n")
        #expect(Self.text(run.directory + "/console.log") == "got hello\n")
    }

    @Test("A launcher that leaves its child behind (the jailer with a PID namespace): the pid file names the VMM, which the monitor adopts and reaps")
    func pidFile() async throws {
        let directory = NSTemporaryDirectory() + "microvm-monitor-pidfile-\(getpid())"
        let pidFile = directory + ".pid"
        defer { unlink(pidFile) }
        let run = try Self.start(["/bin/sh", "-c", "sh -c 'sleep 0.3; exit 7' </dev/null & echo $! > \(pidFile)"], options: ["--pid-file", pidFile])
        defer { try? FileManager.default.removeItem(atPath: run.directory) }
        let (status, line) = try await run.finished.value
        #expect(status.isSuccess)
        let vmm = Self.text(pidFile).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(line == "vmm \(vmm)\n", "\(line) vs \(vmm)")
        #expect(Self.text(run.directory + "/exit") == "role vmm\npid \(vmm)\nexited 7\n")
    }

    @Test("A launcher that cannot be started: `failed` with the reason, an exit file that says so, exit status 1; a bad command line exits 2")
    func spawnFailure() async throws {
        let run = try Self.start(["/nonexistent/firecracker"])
        defer { try? FileManager.default.removeItem(atPath: run.directory) }
        let (status, line) = try await run.finished.value
        #expect(status == .exited(1))
        #expect(line.hasPrefix("failed could not start /nonexistent/firecracker: No such file or directory"), "\(line)")
        #expect(Self.text(run.directory + "/exit").contains("role launcher\nspawn-error 2\n"))
        let usage = try await Subprocess.run(
            .path(FilePath(MonitorTests.monitorBinary)), arguments: ["--dir"], output: .discarded, error: .string(limit: 4096))
        #expect(usage.terminationStatus == .exited(2))
        #expect(usage.standardError.contains("--dir needs a value"))
    }
}
