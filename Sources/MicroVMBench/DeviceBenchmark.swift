import ArgumentParser
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The devices of a running VM, measured with the test guest, each beside a raw baseline of the
/// same run: vsock echo (round trip and throughput) vs a Unix socketpair and vs blocking calls on
/// Firecracker's own vsock socket; block reads measured by the guest with and without a
/// bandwidth limiter vs the host reading the same file; InstanceStart to each device's ready
/// line vs a raw `firecracker --config-file` boot with the same devices.
struct DeviceBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices", abstract: "vsock, block and device readiness through the library vs raw baselines.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Small messages echoed per round-trip series.") var messages = 1_000
    @Option(help: "Bytes of one small message.") var messageBytes = 64
    @Option(help: "Bytes of the large echo (throughput).") var echoBytes = 1 << 20
    @Option(help: "Size of the block image the guest reads (MiB).") var imageMiB = 8
    @Option(help: "Bandwidth limit of the limited block series (MiB/s).") var limitMiBps = 4
    @Option(help: "Rounds of the block series and of the readiness boots.") var runs = 10

    static let readyLines = ["banner", "blk0 ready", "balloon ready", "vsock ready", "net0 ready"]
    static let vsockPort: UInt32 = 5000

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let kernel = try assets.kernelPath
        let workspace = try BenchWorkspace("devices")
        let (directory, base) = (workspace.directory, workspace.jails)
        var driver = try assets.driverConfiguration(policy: .disabled, chrootBase: base)
        driver.stateStore = StateStore(root: FilePath(directory + "/state"))
        let configuration = driver
        let logger = quietLogger()
        let taps = [Self.tapName("r"), Self.tapName("l")]
        var createdTaps: [TapDevice] = []
        defer {
            for tap in createdTaps { try? tap.remove() }
            workspace.remove()
        }

        /// Runs `body` on a VM and always kills it.
        func with<T>(_ spec: VMSpec, start: Bool = true, _ body: (MicroVM) async throws -> T) async throws -> T {
            let vm = start ? try await MicroVM.run(spec, configuration: configuration, logger: logger)
                : try await MicroVM.create(spec, configuration: configuration, logger: logger)
            do {
                let result = try await body(vm)
                await vm.kill()
                return result
            } catch {
                await vm.kill()
                throw error
            }
        }
        func spec(_ id: String, _ args: [String]) -> VMSpec {
            VMSpec(id: "\(id)-\(getpid())", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: kernel, args: ["console=ttyS0", "microvm.heartbeat_ms=0"] + args))
        }

        // 1. vsock: echo by the guest vs a socketpair echo thread, same message sizes.
        print("vsock echo: \(messages) round trips of \(messageBytes) B (ms), then \(echoBytes >> 10) KiB echoed once")
        print("series                                                 p50      p95     MB/s")
        var vsockSpec = spec("dev-vsock", ["microvm.vsock.listen=\(Self.vsockPort)"])
        vsockSpec.vsock = VsockSpec(guestCid: 3)
        let messageCount = messages
        let message = (0..<messageBytes).map { UInt8(truncatingIfNeeded: $0) }
        let payload = (0..<echoBytes).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        try await with(vsockSpec) { vm in
            _ = try await vm.console.waitForLine(containing: "vsock ready", timeout: .seconds(10))
            // The library: connectVsock, write then read(exactly:) per message.
            let connection = try await vm.connectVsock(port: Self.vsockPort)
            for _ in 0..<min(100, messages) {
                try await connection.write(message)
                _ = try await connection.read(exactly: message.count)
            }
            var library = Samples()
            for _ in 0..<messages {
                let start = ContinuousClock.now
                try await connection.write(message)
                let echoed = try await connection.read(exactly: message.count)
                library.append(ContinuousClock.now - start)
                guard echoed == message else { throw ValidationError("vsock echo differs") }
            }
            let start = ContinuousClock.now
            async let written: Void = {
                var offset = 0
                while offset < payload.count {
                    let end = min(offset + 64 * 1024, payload.count)
                    try await connection.write(payload[offset..<end])
                    offset = end
                }
            }()
            let echoed = try await connection.read(exactly: payload.count)
            try await written
            let libraryTime = ContinuousClock.now - start
            guard echoed == payload else { throw ValidationError("vsock large echo differs") }
            await connection.close()
            let closed = try await vm.console.waitForLine(containing: "vsock close port=\(Self.vsockPort)", timeout: .seconds(5))
            report("library connectVsock (NIO) -> guest echo", library, bytes: payload.count, time: libraryTime)

            // Raw vsock: blocking syscalls on Firecracker's socket, same handshake and loop.
            guard let path = vm.vsockPath?.string else { throw ValidationError("no vsock path") }
            let raw = try await onThread { () throws -> (Samples, Duration) in
                let fd = try Self.connectUnix(path)
                defer { close(fd) }
                try Self.writeAll(fd, Array("CONNECT \(Self.vsockPort)\n".utf8))
                var answer: [UInt8] = []
                while answer.last != UInt8(ascii: "\n") { answer += try Self.readExactly(fd, 1) }
                guard String(decoding: answer, as: UTF8.self).hasPrefix("OK ") else { throw ValidationError("vsock CONNECT refused") }
                return try Self.measureEcho(fd, message: message, count: messageCount, payload: payload)
            }
            report("raw vsock (blocking calls on Firecracker's socket)", raw.0, bytes: payload.count, time: raw.1)
            _ = try await vm.console.waitForLine(containing: "vsock close port=\(Self.vsockPort)", after: closed.index + 1, timeout: .seconds(5))
        }
        let pair = try await onThread { () throws -> (Samples, Duration) in
            var fds: [Int32] = [-1, -1]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else { throw ValidationError("socketpair: errno \(errno)") }
            let echo = fds[1]
            let thread = Thread {
                var buffer = [UInt8](repeating: 0, count: 64 * 1024)
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(echo, $0.baseAddress, $0.count) }
                    if count <= 0 { break }
                    if (try? Self.writeAll(echo, buffer[0..<count])) == nil { break }
                }
                close(echo)
            }
            thread.start()
            defer { close(fds[0]) }
            return try Self.measureEcho(fds[0], message: message, count: messageCount, payload: payload)
        }
        report("raw socketpair -> echo thread (host only)", pair.0, bytes: payload.count, time: pair.1)

        // 2. Block: bench-read of the whole image by the guest, unlimited and limited.
        let image = directory + "/bench.img"
        let imageBytes = imageMiB << 20
        try Data((0..<imageBytes).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 9) }).write(to: URL(fileURLWithPath: image))
        let sectors = imageBytes / 512
        let bucket = limitMiBps << 20 / 4
        let limiter = RateLimiter(bandwidth: TokenBucket(size: UInt64(bucket), refillTime: 250))
        var blockRates: [String: [Double]] = ["host": [], "free": [], "limited": []]
        for round in 0..<runs {
            blockRates["host"]!.append(try Self.hostReadMBps(image))
            for (name, rateLimiter) in [("free", nil), ("limited", limiter)] as [(String, RateLimiter?)] {
                var blockSpec = spec("dev-blk-\(name)-\(round)", ["microvm.blk=0,bench-read:0:\(sectors)"])
                blockSpec.drives = [DriveSpec(id: "bench", path: image, readOnly: true, rateLimiter: rateLimiter)]
                let mbps = try await with(blockSpec) { vm in
                    let line = try await vm.console.waitForLine(containing: "bench-read", timeout: .seconds(120))
                    let fields = Self.fields(line.text)
                    guard fields["status"] == "0", fields["bytes"] == "\(imageBytes)", let mbps = Double(fields["mbps"] ?? "") else {
                        throw ValidationError("unexpected bench-read line: \(line.text)")
                    }
                    return mbps
                }
                blockRates[name]!.append(mbps)
            }
        }
        print("\nblock: the guest reads \(imageMiB) MiB (bench-read, 64 KiB requests), \(runs) runs (MB/s)   median      min      max")
        for (key, name) in [
            ("host", "raw: host read(2) of the image, 64 KiB (page cache)"), ("free", "guest bench-read, no limiter"),
            ("limited", "guest bench-read, \(limitMiBps) MiB/s bandwidth limiter"),
        ] {
            let sorted = blockRates[key]!.sorted()
            print("\(name.padding(toLength: 60, withPad: " ", startingAt: 0)) \(String(format: "%9.2f %8.2f %8.2f", sorted[sorted.count / 2], sorted.first!, sorted.last!))")
        }
        let expected = Double(imageBytes) / (Double(imageBytes - bucket) / Double(limitMiBps << 20)) / 1e6
        print(String(format: "  limiter: %d KiB bucket refilled every 250 ms (starts full): %.2f MB/s expected", bucket >> 10, expected))

        // 3. Readiness: InstanceStart to each device's ready line; raw: exec to the same lines.
        let deviceArgs = ["microvm.blk=0,id", "microvm.balloon=on", "microvm.vsock.listen=\(Self.vsockPort)", "microvm.net.ip=172.31.250.2"]
        for name in taps { createdTaps.append(try TapDevice.create(name: name)) }
        let bootArgs = (["console=ttyS0", "microvm.heartbeat_ms=0"] + deviceArgs).joined(separator: " ")
        let rawConfig = directory + "/vm.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"\(kernel)","boot_args":"\(bootArgs)"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":64},
             "drives":[{"drive_id":"bench","path_on_host":"\(image)","is_root_device":false,"is_read_only":true}],
             "network-interfaces":[{"iface_id":"eth0","host_dev_name":"\(taps[0])","guest_mac":"06:00:ac:10:00:02"}],
             "vsock":{"guest_cid":3,"uds_path":"\(directory)/raw-vsock.sock"},
             "balloon":{"amount_mib":0,"deflate_on_oom":false}}
            """.utf8
        ).write(to: URL(fileURLWithPath: rawConfig))
        var rawReady = [String: Samples]()
        var libraryReady = [String: Samples]()
        var libraryAfterBanner = [String: Samples]()
        var rawAfterBanner = [String: Samples]()
        for round in 0..<runs {
            // Raw: exec firecracker --no-api --config-file (the VM starts at once), stdout read
            // on a plain thread; times from just before the exec.
            try? FileManager.default.removeItem(atPath: directory + "/raw-vsock.sock")
            let log = directory + "/raw.log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let raw = try await Self.rawLines(firecracker, ["--no-api", "--config-file", rawConfig, "--log-path", log], until: "net0 ready")
            for key in Self.readyLines {
                guard let at = raw.lines.first(where: { $0.0.contains("microvm-guest: \(key)") })?.1 else {
                    throw ValidationError("raw: no '\(key)' line; got \(raw.lines.map(\.0))")
                }
                rawReady[key, default: Samples()].append(at - raw.start)
            }
            // Library: created (configured), console subscribed, then timed from vm.start().
            var readySpec = spec("dev-ready-\(round)", deviceArgs)
            readySpec.drives = [DriveSpec(id: "bench", path: image, readOnly: true)]
            readySpec.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: taps[1], mac: "06:00:ac:10:00:02")]
            readySpec.vsock = VsockSpec(guestCid: 3)
            readySpec.balloon = Balloon(amountMiB: 0, deflateOnOom: false)
            try await with(readySpec, start: false) { vm in
                let lines = await vm.console.subscribe()
                let collector = Task { () -> [(String, ContinuousClock.Instant)] in
                    var seen: [(String, ContinuousClock.Instant)] = []
                    for await line in lines {
                        seen.append((line.text, ContinuousClock.now))
                        if line.text.contains("net0 ready") { break }
                    }
                    return seen
                }
                let start = ContinuousClock.now
                try await vm.start()
                let timeout = Task {
                    try await Task.sleep(for: .seconds(10))
                    collector.cancel()
                }
                let seen = await collector.value
                timeout.cancel()
                for key in Self.readyLines {
                    guard let at = seen.first(where: { $0.0.contains("microvm-guest: \(key)") })?.1 else {
                        throw ValidationError("library: no '\(key)' line; got \(seen.map(\.0))")
                    }
                    libraryReady[key, default: Samples()].append(at - start)
                }
            }
            for key in Self.readyLines.dropFirst() {
                libraryAfterBanner[key, default: Samples()].append(libraryReady[key]!.values.last! - libraryReady["banner"]!.values.last!)
                rawAfterBanner[key, default: Samples()].append(rawReady[key]!.values.last! - rawReady["banner"]!.values.last!)
            }
        }
        print("\nreadiness, \(runs) boots each (ms): library from vm.start() (InstanceStart), raw from exec of firecracker --no-api --config-file")
        print("console line              library p50   p95  (after banner p50)   raw p50   p95  (after banner p50)")
        for key in Self.readyLines {
            let lib = libraryReady[key]!
            let raw = rawReady[key]!
            let libAfter = libraryAfterBanner[key].map { Samples.milliseconds($0.percentile(50)) } ?? "-"
            let rawAfter = rawAfterBanner[key].map { Samples.milliseconds($0.percentile(50)) } ?? "-"
            print(
                "\(key.padding(toLength: 24, withPad: " ", startingAt: 0)) \(Samples.milliseconds(lib.percentile(50)).leftPad(9)) \(Samples.milliseconds(lib.percentile(95)).leftPad(8)) \(libAfter.leftPad(10))          \(Samples.milliseconds(raw.percentile(50)).leftPad(9)) \(Samples.milliseconds(raw.percentile(95)).leftPad(8)) \(rawAfter.leftPad(10))"
            )
        }
    }

    // MARK: Helpers

    private func report(_ name: String, _ samples: Samples, bytes: Int, time: Duration) {
        let seconds = Double(time.components.seconds) + Double(time.components.attoseconds) / 1e18
        print("\(name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8)) \(String(format: "%8.1f", Double(bytes) / max(seconds, 1e-9) / 1e6))")
    }

    static func tapName(_ suffix: String) -> String { "mvbd\(getpid() % 100_000)\(suffix)" }

    static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for token in line.split(separator: " ") {
            let parts = token.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
        }
        return result
    }

    /// Runs blocking work on its own thread, off the concurrency pool.
    func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
        }
    }

    static func connectUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); throw ValidationError("path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard result == 0 else { close(fd); throw ValidationError("connect \(path): errno \(errno)") }
        return fd
    }

    static func writeAll(_ fd: Int32, _ bytes: some Collection<UInt8>) throws {
        let array = Array(bytes)
        var offset = 0
        while offset < array.count {
            let count = array.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw ValidationError("write: errno \(errno)") }
            offset += count
        }
    }

    static func readExactly(_ fd: Int32, _ wanted: Int) throws -> [UInt8] {
        var result = [UInt8](repeating: 0, count: wanted)
        var offset = 0
        while offset < wanted {
            let count = result.withUnsafeMutableBytes { read(fd, $0.baseAddress! + offset, wanted - offset) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { throw ValidationError("read: \(count == 0 ? "end of stream" : "errno \(errno)") after \(offset) of \(wanted) bytes") }
            offset += count
        }
        return result
    }

    /// The echo loop with blocking calls: round trips of `message`, then `payload` written on
    /// a second thread while it is read back.
    static func measureEcho(_ fd: Int32, message: [UInt8], count: Int, payload: [UInt8]) throws -> (Samples, Duration) {
        for _ in 0..<min(100, count) {
            try writeAll(fd, message)
            _ = try readExactly(fd, message.count)
        }
        var samples = Samples()
        for _ in 0..<count {
            let start = ContinuousClock.now
            try writeAll(fd, message)
            let echoed = try readExactly(fd, message.count)
            samples.append(ContinuousClock.now - start)
            guard echoed == message else { throw ValidationError("echo differs") }
        }
        let start = ContinuousClock.now
        let writer = Thread {
            var offset = 0
            while offset < payload.count {
                let end = min(offset + 64 * 1024, payload.count)
                guard (try? writeAll(fd, payload[offset..<end])) != nil else { return }
                offset = end
            }
        }
        writer.start()
        let echoed = try readExactly(fd, payload.count)
        let elapsed = ContinuousClock.now - start
        guard echoed == payload else { throw ValidationError("large echo differs") }
        return (samples, elapsed)
    }

    /// The host reading the image with read(2), 64 KiB at a time (page cache, after one warm read).
    static func hostReadMBps(_ path: String) throws -> Double {
        func readAll() throws -> Int {
            let fd = open(path, O_RDONLY)
            guard fd >= 0 else { throw ValidationError("open \(path): errno \(errno)") }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            var total = 0
            while true {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                guard count > 0 else { break }
                total += count
            }
            return total
        }
        _ = try readAll()
        let start = ContinuousClock.now
        let bytes = try readAll()
        let elapsed = ContinuousClock.now - start
        return Double(bytes) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18) / 1e6
    }

    /// Execs `executable`, reads its stdout on a plain thread and timestamps every line until
    /// one contains `until` (or 10 s pass); then kills it.
    static func rawLines(_ executable: String, _ arguments: [String], until: String) async throws -> (start: ContinuousClock.Instant, lines: [(String, ContinuousClock.Instant)]) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw ValidationError("pipe: errno \(errno)") }
        let readEnd = fds[0]
        let writeEnd = FileDescriptor(rawValue: fds[1])
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        // The reader runs before the exec, so every line is stamped when it is written.
        let reader = Task { () -> [(String, ContinuousClock.Instant)] in
            await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    defer { close(readEnd) }
                    var lines: [(String, ContinuousClock.Instant)] = []
                    var partial: [UInt8] = []
                    var buffer = [UInt8](repeating: 0, count: 4096)
                    while true {
                        let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                        if count <= 0 { break }
                        let now = ContinuousClock.now
                        for byte in buffer[0..<count] {
                            if byte == UInt8(ascii: "\n") {
                                let text = String(decoding: partial, as: UTF8.self)
                                lines.append((text, now))
                                partial.removeAll(keepingCapacity: true)
                                if text.contains(until) {
                                    continuation.resume(returning: lines)
                                    return
                                }
                            } else {
                                partial.append(byte)
                            }
                        }
                    }
                    continuation.resume(returning: lines)
                }
            }
        }
        let start = ContinuousClock.now
        let termination = Task {
            _ = try? await Subprocess.run(
                .path(FilePath(executable)), arguments: Arguments(arguments),
                input: .none, output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true), error: .discarded
            ) { execution in
                pidContinuation.yield(execution.processIdentifier.value)
                pidContinuation.finish()
            }
        }
        var iterator = pids.makeAsyncIterator()
        let pid = await iterator.next() ?? -1
        // A guest that never prints the line: the kill ends the output, and the reader with it.
        let deadline = Task {
            try await Task.sleep(for: .seconds(10))
            if pid > 0 { kill(pid, SIGKILL) }
        }
        let lines = await reader.value
        deadline.cancel()
        if pid > 0 { kill(pid, SIGKILL) }
        await termination.value
        return (start, lines)
    }
}
