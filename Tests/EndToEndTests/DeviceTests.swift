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

/// The device operations against the real Firecracker with the project's test guest, jailed
/// (`required`) and unjailed (`disabled`) where it matters. Every test checks what the GUEST saw
/// (its console lines) and, through `withDriver`, that nothing is left behind; TAP devices are
/// removed in `defer`.
@Suite("Devices end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct DeviceTests {
    static let policies: [SandboxPolicy] = [.required, .disabled]

    // MARK: Block

    @Test("block: read crc matches the host file, writes land in the per-VM copy only, flush, read-only refuses writes, metrics count it", arguments: policies)
    func block(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "blk-\(policy.rawValue)") { configuration, assets, scratch in
            let readOnlyImage = try Device.randomImage(at: scratch + "/ro.img", bytes: 256 * 1024)
            let writableImage = try Device.randomImage(at: scratch + "/rw.img", bytes: 256 * 1024)
            var spec = EndToEnd.spec(
                assets, id: "blk-\(policy.rawValue)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.blk=0,read:0:8,write:0:1,id",
                       "microvm.blk=1,read:2:4,write:8:2:7,flush,read:8:2"])
            spec.drives = [
                DriveSpec(id: "rodata", path: scratch + "/ro.img", readOnly: true),
                DriveSpec(id: "rwdata", path: scratch + "/rw.img"),
            ]
            spec.logging = .init(metrics: true)
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let console = vm.console
                let read0 = try await console.waitForLine(containing: "blk0 read sector=0", timeout: .seconds(10))
                #expect(read0.text == "microvm-guest: blk0 read sector=0 count=8 status=0 crc32=\(Device.crc32Hex(readOnlyImage[0..<4096])) head=\(Device.hex(readOnlyImage[0..<16]))")
                let write0 = try await console.waitForLine(containing: "blk0 write sector=0", timeout: .seconds(5))
                #expect(write0.text.hasPrefix("microvm-guest: blk0 write sector=0 count=1 status=1 "), "a write to a read-only drive must fail: \(write0.text)")
                let read1 = try await console.waitForLine(containing: "blk1 read sector=2", timeout: .seconds(5))
                #expect(read1.text.contains("status=0 crc32=\(Device.crc32Hex(writableImage[1024..<3072]))"), "\(read1.text)")
                let pattern = Device.pattern(firstSector: 8, count: 2, seed: 7)
                let write1 = try await console.waitForLine(containing: "blk1 write sector=8", timeout: .seconds(5))
                #expect(write1.text == "microvm-guest: blk1 write sector=8 count=2 status=0 crc32=\(Device.crc32Hex(pattern[...]))")
                let flush = try await console.waitForLine(containing: "blk1 flush", timeout: .seconds(5))
                #expect(flush.text == "microvm-guest: blk1 flush status=0")
                let readBack = try await console.waitForLine(containing: "blk1 read sector=8", timeout: .seconds(5))
                #expect(readBack.text.contains("status=0 crc32=\(Device.crc32Hex(pattern[...]))"), "the guest reads back what it wrote: \(readBack.text)")

                // The host side: the write is in the VM's copy, the caller's image is untouched.
                let copyPath = try #require(vm.drivePath(id: "rwdata"))
                let copy = try Data(contentsOf: URL(fileURLWithPath: copyPath.string))
                #expect(Array(copy[4096..<5120]) == pattern, "the guest's write is in the per-VM copy")
                #expect(Array(copy[0..<4096]) == Array(writableImage[0..<4096]), "the rest of the copy is the image")
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: scratch + "/rw.img"))) == writableImage, "the original image was written")
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: scratch + "/ro.img"))) == readOnlyImage)

                // Metrics: the guest's traffic, per drive.
                let metrics = try await vm.flushMetrics()
                let ro = try #require(metrics.drives["rodata"])
                let rw = try #require(metrics.drives["rwdata"])
                #expect(ro.readBytes == 4096 && ro.readCount == 1 && ro.writeBytes == 0, "\(ro.fields)")
                #expect(rw.readBytes == 2048 + 1024 && rw.writeBytes == 1024 && rw.flushCount == 1, "\(rw.fields)")
                #expect(metrics.block.readBytes == 4096 + 3072)
                #expect(metrics.vcpu.exitMMIOWrite > 0)
                let exported = metrics.exportedCounters(vmID: vm.id.rawValue)
                #expect(exported.contains { $0.label == "firecracker_block_device_read_bytes" && $0.dimensions == ["vm_id": vm.id.rawValue, "device": "rodata"] && $0.delta == 4096 })
                // Counters are deltas: nothing moved since.
                let again = try await vm.flushMetrics()
                #expect(again.block.readBytes == 0 && again.timestampMilliseconds >= metrics.timestampMilliseconds)

                let reason = await vm.stop()
                #expect(reason.isClean, "\(reason)")
            }
        }
    }

    @Test("block: a drive swapped while the guest runs is what the guest reads next (read-only link, writable copy)", arguments: policies)
    func driveSwap(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "swap-\(policy.rawValue)") { configuration, assets, scratch in
            let first = try Device.randomImage(at: scratch + "/a.img", bytes: 64 * 1024)
            let second = try Device.randomImage(at: scratch + "/b.img", bytes: 128 * 1024)
            _ = try Device.randomImage(at: scratch + "/w1.img", bytes: 64 * 1024)
            let writableSecond = try Device.randomImage(at: scratch + "/w2.img", bytes: 64 * 1024)
            // One operation per 2.5 s: the guest's second request waits for the bucket, and the
            // swap happens while it waits.
            let oneOpPerInterval = RateLimiter(ops: TokenBucket(size: 1, refillTime: 2500))
            var spec = EndToEnd.spec(
                assets, id: "swap-\(policy.rawValue)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.blk=0,read:0:1,read:0:1,id"])
            spec.drives = [
                DriveSpec(id: "media", path: scratch + "/a.img", readOnly: true, rateLimiter: oneOpPerInterval),
                DriveSpec(id: "scratch", path: scratch + "/w1.img"),
            ]
            spec.logging = .init(metrics: true)
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let before = try await vm.console.waitForLine(containing: "blk0 read sector=0", timeout: .seconds(10))
                #expect(before.text.contains("status=0 crc32=\(Device.crc32Hex(first[0..<512]))"), "\(before.text)")
                let swapStart = ContinuousClock.now
                try await vm.updateDrive(id: "media", path: scratch + "/b.img")
                let swapTime = ContinuousClock.now - swapStart
                let after = try await vm.console.waitForLine(containing: "blk0 read sector=0", after: before.index + 1, timeout: .seconds(8))
                #expect(after.text.contains("status=0 crc32=\(Device.crc32Hex(second[0..<512]))"), "the guest read the new file: \(after.text) (swap took \(swapTime))")
                // GET_ID: Firecracker's serial is st_dev, st_rdev, st_ino of the file it has open.
                let staged = try #require(vm.drivePath(id: "media"))
                var status = stat()
                #expect(stat(staged.string, &status) == 0)
                let serial = String("\(status.st_dev)\(status.st_rdev)\(status.st_ino)".prefix(20))
                let idLine = try await vm.console.waitForLine(containing: "blk0 id", timeout: .seconds(8))
                #expect(idLine.text == "microvm-guest: blk0 id status=0 serial=\(serial)", "the guest's drive is the staged new file")
                let config = try await vm.client.getVMConfiguration()
                #expect(config.drives?.first { $0.driveId == "media" }?.pathOnHost == vm.vmmPath("/drives/media"))
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: staged.string))) == second)
                let names = try FileManager.default.contentsOfDirectory(atPath: staged.removingLastComponent().string).sorted()
                #expect(names == ["media", "scratch"], "no temporary or previous file is left: \(names)")

                // A writable drive gets a per-VM copy of the new file; the caller's file stays.
                try await vm.updateDrive(id: "scratch", path: scratch + "/w2.img")
                let scratchCopy = try #require(vm.drivePath(id: "scratch"))
                var copyStatus = stat()
                var sourceStatus = stat()
                #expect(stat(scratchCopy.string, &copyStatus) == 0 && stat(scratch + "/w2.img", &sourceStatus) == 0)
                #expect(copyStatus.st_ino != sourceStatus.st_ino, "a writable drive is never the caller's file")
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: scratchCopy.string))) == writableSecond)

                // A refused swap (no such drive in Firecracker's eyes is caught locally; an
                // unreadable source fails staging) leaves the drive as it was.
                await #expect(throws: MicroVMError.self) { try await vm.updateDrive(id: "media", path: scratch + "/missing.img") }
                #expect(Array(try Data(contentsOf: URL(fileURLWithPath: staged.string))) == second)
                await #expect(throws: MicroVMError.self) { try await vm.updateDrive(id: "nope", path: scratch + "/b.img") }

                let metrics = try await vm.flushMetrics()
                #expect(metrics.drives["media"]?.updateCount == 1 && metrics.drives["scratch"]?.updateCount == 1, "\(metrics.groups["block_media"] ?? [:])")
                #expect((metrics.drives["media"]?.rateLimiterThrottledEvents ?? 0) >= 1)
                #expect(await vm.stop().isClean)
            }
        }
    }

    @Test("block rate limiter: bench-read throughput with and without a bandwidth limiter, and a limiter changed at run time")
    func rateLimiter() async throws {
        try await EndToEnd.withDriver(.disabled, name: "rate") { configuration, assets, scratch in
            _ = try Device.randomImage(at: scratch + "/bench.img", bytes: 4 << 20)
            func bench(_ name: String, args: String, bytes: Int = 4 << 20, limiter: RateLimiter?, during: ((MicroVM) async throws -> Void)? = nil) async throws -> (us: Double, mbps: Double) {
                var spec = EndToEnd.spec(assets, id: "rate-\(name)-\(getpid())", args: ["console=ttyS0", "microvm.heartbeat_ms=0", args])
                spec.drives = [DriveSpec(id: "bench", path: scratch + "/bench.img", readOnly: true, rateLimiter: limiter)]
                let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                return try await EndToEnd.using(vm) { vm in
                    try await during?(vm)
                    let line = try await vm.console.waitForLine(containing: "bench-read", timeout: .seconds(30))
                    await vm.stop()
                    let fields = Device.fields(line.text)
                    #expect(fields["status"] == "0" && fields["bytes"] == "\(bytes)", "\(line.text)")
                    return (Double(fields["us"] ?? "") ?? -1, Double(fields["mbps"] ?? "") ?? -1)
                }
            }
            let benchArgs = "microvm.blk=0,bench-read:0:8192"
            let unlimited = try await bench("free", args: benchArgs, limiter: nil)
            // 512 KiB bucket refilled every 250 ms: 2 MiB/s after the first (full) bucket.
            let limited = try await bench(
                "bw", args: benchArgs, limiter: RateLimiter(bandwidth: TokenBucket(size: 512 * 1024, refillTime: 250)))
            // At run time: the guest's second request waits for the ops bucket; meanwhile the
            // limiter becomes 1 MiB/s of bandwidth and the ops limit is removed.
            let changed = try await bench(
                "patch", args: "microvm.blk=0,read:0:1,bench-read:0:4096", bytes: 2 << 20, limiter: RateLimiter(ops: TokenBucket(size: 1, refillTime: 2000))
            ) { vm in
                _ = try await vm.console.waitForLine(containing: "blk0 read sector=0", timeout: .seconds(10))
                try await vm.updateDrive(
                    id: "bench",
                    rateLimiter: RateLimiter(bandwidth: TokenBucket(size: 256 * 1024, refillTime: 250), ops: .unlimited))
            }
            Issue.record("measured (informational, not a failure): bench-read 4 MiB unlimited \(unlimited.us) us \(unlimited.mbps) MB/s; 2 MiB/s limiter \(limited.us) us \(limited.mbps) MB/s; run-time 1 MiB/s limiter on 2 MiB: \(changed.us) us \(changed.mbps) MB/s", severity: .warning)
            #expect(unlimited.mbps > 10, "unlimited: \(unlimited)")
            #expect(limited.mbps < 3.0 && limited.mbps > 1.5, "2 MiB/s limiter: \(limited)")
            #expect(limited.us > unlimited.us * 5)
            // The first request still waits out the old ops bucket (up to 2 s) inside the timed run.
            #expect(changed.mbps < 1.4 && changed.mbps > 0.3, "1 MiB/s set at run time: \(changed)")
        }
    }

    // MARK: vsock

    @Test("vsock both ways: guest-initiated to a host listener, host-initiated to a guest port, random bytes echoed intact", arguments: policies)
    func vsock(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "vsock-\(policy.rawValue)") { configuration, assets, _ in
            var spec = EndToEnd.spec(
                assets, id: "vsock-\(policy.rawValue)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.vsock.listen=5000", "microvm.vsock.connect=6000"])
            spec.vsock = VsockSpec(guestCid: 3)
            spec.logging = .init(metrics: true)
            let vm = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                // The listener must exist before the guest connects at start.
                let listener = try await vm.listenVsock(port: 6000)
                #expect(listener.path.string == vm.vsockPath!.string + "_6000")
                var socketStatus = stat()
                #expect(lstat(listener.path.string, &socketStatus) == 0 && socketStatus.st_mode & S_IFMT == S_IFSOCK)
                #expect(socketStatus.st_uid == (policy == .required ? EndToEnd.uid : getuid()), "Firecracker's user owns the socket")
                try await vm.start()

                // Guest-initiated.
                let inbound = try #require(await Device.withTimeout(.seconds(10)) { await listener.accept() } ?? nil)
                #expect(try await Device.within(.seconds(5)) { try await inbound.readLine() } == "hello from microvm-guest port=6000")
                let payload1 = Device.randomBytes(20_000)
                try await Device.within(.seconds(5)) { try await inbound.write(payload1) }
                #expect(try await Device.within(.seconds(10)) { try await inbound.read(exactly: payload1.count) } == payload1, "guest-initiated echo intact")
                _ = try await vm.console.waitForLine(containing: "vsock connect port=6000 peer=2:6000", timeout: .seconds(5))

                // Host-initiated.
                let outbound = try await vm.connectVsock(port: 5000)
                let hostPort = try #require(outbound.hostPort)
                let payload2 = Device.randomBytes(51_200)
                try await Device.within(.seconds(5)) { try await outbound.write(payload2) }
                #expect(try await Device.within(.seconds(10)) { try await outbound.read(exactly: payload2.count) } == payload2, "host-initiated echo intact")
                _ = try await vm.console.waitForLine(containing: "vsock accept port=5000 peer=2:\(hostPort) local=5000", timeout: .seconds(5))
                await outbound.close()
                let closed = try await vm.console.waitForLine(containing: "vsock close port=5000", timeout: .seconds(5))
                #expect(closed.text.hasSuffix("reason=shutdown rx=51200 tx=51200"), "\(closed.text)")

                // A port nobody listens on in the guest: refused, clearly.
                await #expect(throws: MicroVMError.self) { try await vm.connectVsock(port: 5999, timeout: .seconds(3)) }

                let metrics = try await vm.flushMetrics()
                #expect(metrics.vsock.connectionsAdded >= 2 && metrics.vsock.rxBytes >= 71_200 && metrics.vsock.txBytes >= 71_200, "\(metrics.vsock.fields)")
                await inbound.close()
                #expect(await vm.stop().isClean)
                #expect(!FileManager.default.fileExists(atPath: listener.path.string), "the listener's socket is removed at teardown")
                #expect(await listener.accept() == nil, "the listener is closed at teardown")
            }
        }
    }

    @Test(
        "The jailer's longest id under a long chroot base: the API and vsock sockets' host paths pass a socket address's 103 bytes, and are reached through the VMM's working directory (API calls, vsock both ways, teardown)",
        arguments: policies)
    func socketsPastTheAddressLimit(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "long-\(policy.rawValue.prefix(3))") { configuration, assets, _ in
            let prefix = "ln\(policy.rawValue.prefix(1))\(getpid())-"
            let id = prefix + String(repeating: "x", count: 64 - prefix.count)
            var spec = EndToEnd.spec(
                assets, id: id, args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.vsock.listen=5000", "microvm.vsock.connect=6000"])
            spec.vsock = VsockSpec(guestCid: 3)
            let vm = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let record = try configuration.stateStore.read(id: id)
                #expect(record.apiSocket.utf8.count > 103, "the test needs a path past the limit: \(record.apiSocket)")
                #expect(record.connectableAPISocket == "/proc/\(vm.pid)/cwd/" + record.apiSocket.dropFirst(vm.directory.string.count + 1))
                let listener = try await vm.listenVsock(port: 6000)
                #expect(listener.path.string.hasPrefix("/proc/\(vm.pid)/cwd/"), "\(listener.path)")
                try await vm.start()
                let inbound = try #require(await Device.withTimeout(.seconds(10)) { await listener.accept() } ?? nil)
                #expect(try await Device.within(.seconds(5)) { try await inbound.readLine() } == "hello from microvm-guest port=6000")
                let outbound = try await vm.connectVsock(port: 5000)
                let payload = Device.randomBytes(4096)
                try await Device.within(.seconds(5)) { try await outbound.write(payload) }
                #expect(try await Device.within(.seconds(10)) { try await outbound.read(exactly: payload.count) } == payload)
                await outbound.close()
                await inbound.close()
                try await vm.pause()
                try await vm.resume()
                #expect(await vm.stop().isClean)
                #expect(!FileManager.default.fileExists(atPath: vm.directory.string), "the VM's directory is removed")
            }
        }
    }

    // MARK: Network and MMDS

    @Test("net: UDP both ways over a TAP (hello from the guest, echo of host datagrams), rate limiters patched", arguments: policies)
    func network(policy: SandboxPolicy) async throws {
        let tap = try TapDevice.create(name: EndToEnd.tapName("n\(policy.rawValue.prefix(1))"), owner: policy == .required ? EndToEnd.uid : nil)
        defer {
            try? tap.remove()
            #expect(!TapDevice.exists(name: tap.name), "the test's TAP device was left behind")
        }
        let host = policy == .required ? "172.30.1.1" : "172.30.2.1"
        let guest = policy == .required ? "172.30.1.2" : "172.30.2.2"
        try await Device.ip(["addr", "add", host + "/24", "dev", tap.name])
        try await Device.ip(["link", "set", tap.name, "up"])
        try await EndToEnd.withDriver(policy, name: "net-\(policy.rawValue)") { configuration, assets, _ in
            let helloSocket = try Device.UDPSocket(bindTo: host, port: 7000)
            let client = try Device.UDPSocket(bindTo: host, port: 0)
            var spec = EndToEnd.spec(
                assets, id: "net-\(policy.rawValue)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.net.ip=\(guest)", "microvm.net.host=\(host)",
                       "microvm.net.hello=7000", "microvm.net.echo=7001"])
            spec.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: tap.name, mac: "06:00:ac:10:00:02")]
            spec.logging = .init(metrics: true)
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                _ = try await vm.console.waitForLine(containing: "net0 ready mac=06:00:ac:10:00:02 ip=\(guest)", timeout: .seconds(10))
                let hello = try await helloSocket.receive(timeout: .seconds(5))
                #expect(hello.bytes == Array("hello from microvm-guest\n".utf8) && hello.from == "\(guest):7000")
                _ = try await vm.console.waitForLine(containing: "net0 udp hello to=\(host):7000 status=sent", timeout: .seconds(2))

                for size in [1, 512, 1472] {
                    let payload = Device.randomBytes(size)
                    let echo = try await client.exchange(payload, to: guest, port: 7001, timeout: .seconds(3))
                    #expect(echo == payload, "echo of \(size) bytes")
                    _ = try await vm.console.waitForLine(containing: "net0 udp echo from=\(host):\(client.port) port=7001 bytes=\(size)", timeout: .seconds(2))
                }
                // A bandwidth limit on what the guest receives measurably slows a burst of
                // datagrams the guest echoes (Firecracker leaves the rest queued in the TAP).
                func burst() async throws -> Duration {
                    let start = ContinuousClock.now
                    for index in 0..<40 { try client.send(Device.randomBytes(1400) + [UInt8(index)], to: guest, port: 7001) }
                    for _ in 0..<40 { _ = try await client.receive(timeout: .seconds(10)) }
                    return ContinuousClock.now - start
                }
                let unlimited = try await burst()
                // 4 KiB every 100 ms (~41 KB/s; the test guest alone echoes ~80-100 KB/s): the
                // 57 KB beyond the first bucket take >= ~1.3 s.
                try await vm.updateNetworkInterface(id: "eth0", rx: RateLimiter(bandwidth: TokenBucket(size: 4 << 10, refillTime: 100)))
                let limited = try await burst()
                #expect(limited >= .milliseconds(1200) && limited > unlimited * 2, "rx limiter: \(limited) vs \(unlimited) unlimited")
                Issue.record("measured (informational, not a failure): net rx limiter: 40 x 1.4 KB echoed in \(limited) limited, \(unlimited) unlimited", severity: .warning)

                // Rate limiters can be replaced while running; traffic still flows.
                let bucket = TokenBucket(size: 1 << 20, refillTime: 100)
                try await vm.updateNetworkInterface(id: "eth0", rx: RateLimiter(bandwidth: bucket), tx: RateLimiter(bandwidth: bucket))
                let payload = Device.randomBytes(100)
                #expect(try await client.exchange(payload, to: guest, port: 7001, timeout: .seconds(3)) == payload)
                await #expect(throws: MicroVMError.self) { try await vm.updateNetworkInterface(id: "nope", rx: RateLimiter(bandwidth: bucket)) }

                let metrics = try await vm.flushMetrics()
                let eth0 = try #require(metrics.interfaces["eth0"])
                #expect(eth0.txPackets >= 5 && eth0.rxPackets >= 4, "\(eth0.fields)")
                #expect(await vm.stop().isClean)
            }
        }
    }

    @Test("MMDS V1 and V2: data put and patched through the library is what the guest reads; V2 needs the token", arguments: [MmdsVersion.v1, .v2])
    func metadata(version: MmdsVersion) async throws {
        let v = version == .v1 ? "1" : "2"
        let tap = try TapDevice.create(name: EndToEnd.tapName("m\(v)"), owner: EndToEnd.uid)
        defer {
            try? tap.remove()
            #expect(!TapDevice.exists(name: tap.name), "the test's TAP device was left behind")
        }
        try await EndToEnd.withDriver(.required, name: "mmds-v\(v)") { configuration, assets, _ in
            var spec = EndToEnd.spec(
                assets, id: "mmds-v\(v)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.net.ip=172.30.3.2",
                       "microvm.mmds=v\(v):/latest/meta/name", "microvm.mmds=v1:/latest/meta/zone"])
            spec.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: tap.name, mac: "06:00:ac:10:00:02")]
            spec.mmds = MMDSSpec(version: version, networkInterfaces: ["eth0"])
            let vm = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                try await vm.putMetadata(["latest": ["meta": ["name": .string("vm-v\(v)"), "zone": "z1"]]])
                try await vm.patchMetadata(["latest": ["meta": ["zone": "z2", "gone": nil]]])
                #expect(try await vm.metadata() == ["latest": ["meta": ["name": .string("vm-v\(v)"), "zone": "z2"]]])
                try await vm.start()
                if version == .v2 {
                    let token = try await vm.console.waitForLine(containing: "mmds v2 token", timeout: .seconds(10))
                    #expect(token.text.contains("status=200"), "\(token.text)")
                }
                let name = try await vm.console.waitForLine(containing: "GET /latest/meta/name", timeout: .seconds(10))
                #expect(name.text == "microvm-guest: mmds v\(v) GET /latest/meta/name status=200 bytes=\(5) body=vm-v\(v)")
                let zone = try await vm.console.waitForLine(containing: "GET /latest/meta/zone", timeout: .seconds(10))
                if version == .v1 {
                    #expect(zone.text == "microvm-guest: mmds v1 GET /latest/meta/zone status=200 bytes=2 body=z2")
                } else {
                    #expect(zone.text.contains("mmds v1 GET /latest/meta/zone status=401"), "V2 refuses a request without a token: \(zone.text)")
                }
                #expect(await vm.stop().isClean)
            }
        }
    }

    // MARK: Balloon and entropy

    @Test("balloon inflates to the target the library sets, statistics come back; entropy bytes reach the guest", arguments: policies)
    func balloonAndEntropy(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "balloon-\(policy.rawValue)") { configuration, assets, _ in
            var spec = EndToEnd.spec(
                assets, id: "balloon-\(policy.rawValue)-\(getpid())",
                args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.balloon=on", "microvm.rng=32"])
            spec.balloon = Balloon(amountMiB: 0, deflateOnOom: false, statsPollingIntervalSeconds: 1)
            spec.entropy = EntropyDevice()
            spec.logging = .init(metrics: true)
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let rng = try await vm.console.waitForLine(containing: "rng read", timeout: .seconds(10))
                let hex = Device.fields(rng.text)["hex"] ?? ""
                #expect(rng.text.contains("bytes=32 status=ok") && hex.count == 64 && hex != String(repeating: "0", count: 64), "\(rng.text)")
                _ = try await vm.console.waitForLine(containing: "balloon ready stats=1 deflate_on_oom=0", timeout: .seconds(5))

                try await vm.setBalloon(targetMiB: 8)
                _ = try await vm.console.waitForLine(containing: "balloon target=2048", timeout: .seconds(10))
                _ = try await vm.console.waitForLine(containing: "balloon stats n=2", timeout: .seconds(5))
                var stats = try await vm.balloonStatistics()
                let inflateDeadline = ContinuousClock.now + .seconds(10)
                while stats.actualPages != 2048 && ContinuousClock.now < inflateDeadline {
                    try await Task.sleep(for: .milliseconds(200))
                    stats = try await vm.balloonStatistics()
                }
                #expect(stats.targetMiB == 8 && stats.actualMiB == 8 && stats.actualPages == 2048, "\(stats)")
                #expect((stats.totalMemory ?? 0) > 60 << 20 && stats.freeMemory != nil, "\(stats)")
                try await vm.setBalloonStatisticsInterval(seconds: 2)
                try await vm.setBalloon(targetMiB: 0)
                _ = try await vm.console.waitForLine(containing: "balloon target=0", timeout: .seconds(10))
                let deflateDeadline = ContinuousClock.now + .seconds(10)
                while try await vm.balloonStatistics().actualPages != 0 && ContinuousClock.now < deflateDeadline {
                    try await Task.sleep(for: .milliseconds(200))
                }

                let metrics = try await vm.flushMetrics()
                #expect(metrics.balloon.inflateCount >= 1, "\(metrics.balloon.fields)")
                #expect(metrics.balloon.deflateCount >= 1, "\(metrics.balloon.fields)")
                #expect(metrics.balloon.statsUpdates >= 2, "\(metrics.balloon.fields)")
                #expect(metrics.entropy.bytes == 32, "\(metrics.entropy.fields)")
                #expect(await vm.stop().isClean)
            }
        }
    }

    @Test("device calls refuse the wrong state and missing devices locally")
    func refusals() async throws {
        try await EndToEnd.withDriver(.disabled, name: "refuse") { configuration, assets, _ in
            let vm = try await MicroVM.create(EndToEnd.spec(assets, id: "refuse-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                await #expect { try await vm.setBalloon(targetMiB: 1) } throws: { error in
                    guard case .invalidState(_, "update a device", .created, _) = error as? MicroVMError else { return false }
                    return true
                }
                try await vm.start()
                await #expect { try await vm.setBalloon(targetMiB: 1) } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.first?.field == "balloon"
                }
                await #expect { try await vm.listenVsock(port: 1) } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.first?.field == "vsock"
                }
                await #expect { try await vm.flushMetrics() } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.first?.field == "logging.metrics"
                }
                await vm.stop()
                await #expect { try await vm.updateDrive(id: "x", rateLimiter: RateLimiter()) } throws: { error in
                    guard case .invalidState(_, _, .stopped, _) = error as? MicroVMError else { return false }
                    return true
                }
            }
        }
    }

    @Test("metrics lines parse into typed counters, unknown groups kept, exported as deltas with the VM id")
    func metricsParsing() throws {
        let text = """
            {"utc_timestamp_ms":1,"block":{"read_bytes":10,"read_agg":{"min_us":1,"max_us":3,"sum_us":4}},"block_root":{"read_bytes":10},"api_server":{"process_startup_time_us":99,"sync_response_fails":0},"future_device":{"widgets":2}}
            {"utc_timestamp_ms":2,"net_eth0":{"rx_bytes_count":5},"latencies_us":{"pause_vm":7}}
            {"utc_timestamp_ms":3,"partial
            """
        let lines = try FirecrackerMetrics.parseLines(text)
        #expect(lines.count == 2)
        #expect(lines[0].block.readBytes == 10 && lines[0].drives["root"]?.readBytes == 10)
        #expect(lines[0].latencies["block"]?["read_agg"]?.sumMicroseconds == 4)
        #expect(lines[0][group: "future_device", field: "widgets"] == 2)
        #expect(lines[0].apiServer.processStartupTimeMicroseconds == 99)
        #expect(lines[1].interfaces["eth0"]?.rxBytes == 5)
        let exported = lines[0].exportedCounters(vmID: "vm1")
        #expect(Set(exported.map(\.label)) == ["firecracker_block_read_bytes", "firecracker_block_device_read_bytes", "firecracker_future_device_widgets"])
        #expect(lines[1].exportedCounters(vmID: "vm1").map(\.label) == ["firecracker_net_device_rx_bytes_count"])
        #expect(throws: MetricsParseError.self) { try FirecrackerMetrics(line: "[1]") }
    }
}

// MARK: - Helpers

enum Device {
    /// A file of `bytes` random bytes; returns its contents.
    static func randomImage(at path: String, bytes: Int) throws -> [UInt8] {
        let contents = randomBytes(bytes)
        try Data(contents).write(to: URL(fileURLWithPath: path))
        return contents
    }

    static func randomBytes(_ count: Int) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }

    /// The guest's `write` pattern: byte j of sector s is (j + s + seed) & 0xff.
    static func pattern(firstSector: Int, count: Int, seed: Int) -> [UInt8] {
        (firstSector..<(firstSector + count)).flatMap { sector in (0..<512).map { UInt8((($0 + sector + seed) & 0xff)) } }
    }

    /// zlib's CRC-32, as the guest prints it.
    static func crc32Hex(_ bytes: some Collection<UInt8>) -> String {
        var crc: UInt32 = 0xffff_ffff
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = (crc >> 1) ^ (0xedb8_8320 & (0 &- (crc & 1))) }
        }
        let value = String(crc ^ 0xffff_ffff, radix: 16)
        return String(repeating: "0", count: 8 - value.count) + value
    }

    static func hex(_ bytes: some Collection<UInt8>) -> String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    /// The `key=value` fields of a console line.
    static func fields(_ line: String) -> [String: String] {
        var result: [String: String] = [:]
        for word in line.split(separator: " ") {
            let parts = word.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
        }
        return result
    }

    static func ip(_ arguments: [String]) async throws {
        let result = try await Subprocess.run(
            .path("/usr/sbin/ip"), arguments: Arguments(arguments), output: .discarded, error: .string(limit: 4096))
        guard result.terminationStatus.isSuccess else {
            throw PrerequisiteMissing("ip \(arguments.joined(separator: " ")) failed: \(result.standardError)")
        }
    }

    /// `body`'s result, or nil after `timeout`.
    static func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async -> T) async -> T? {
        await withTaskGroup(of: T?.self) { group in
            group.addTask { await body() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// `body`'s result; throws after `timeout` (cancelling `body`, which for a vsock read
    /// closes the connection), so a lost byte fails the test instead of hanging it.
    static func within<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                throw PrerequisiteMissing("no result within \(timeout)")
            }
            return value
        }
    }

    /// A non-blocking UDP socket polled with short sleeps (the tests never block a thread of
    /// the cooperative pool that the VMs' supervision shares).
    final class UDPSocket: @unchecked Sendable {
        let fd: Int32
        let port: UInt16

        init(bindTo address: String, port: UInt16) throws {
            let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw PrerequisiteMissing("socket: errno \(errno)") }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            inet_pton(AF_INET, address, &sin.sin_addr)
            let bound = withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard bound == 0 else {
                let code = errno
                close(fd)
                throw PrerequisiteMissing("bind \(address):\(port): errno \(code)")
            }
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            _ = withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
            self.fd = fd
            self.port = UInt16(bigEndian: sin.sin_port)
        }

        deinit { close(fd) }

        func send(_ bytes: [UInt8], to address: String, port: UInt16) throws {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            inet_pton(AF_INET, address, &sin.sin_addr)
            let sent = bytes.withUnsafeBytes { buffer in
                withUnsafePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, buffer.baseAddress, buffer.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            }
            guard sent == bytes.count else { throw PrerequisiteMissing("sendto: errno \(errno)") }
        }

        func receive(timeout: Duration) async throws -> (bytes: [UInt8], from: String) {
            let deadline = ContinuousClock.now + timeout
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while ContinuousClock.now < deadline {
                var sin = sockaddr_in()
                var length = socklen_t(MemoryLayout<sockaddr_in>.size)
                let count = buffer.withUnsafeMutableBytes { raw in
                    withUnsafeMutablePointer(to: &sin) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &length) } }
                }
                if count >= 0 {
                    var text = [CChar](repeating: 0, count: Int(INET_ADDRSTRLEN))
                    inet_ntop(AF_INET, &sin.sin_addr, &text, socklen_t(INET_ADDRSTRLEN))
                    let host = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    return (Array(buffer[0..<count]), "\(host):\(UInt16(bigEndian: sin.sin_port))")
                }
                try await Task.sleep(for: .milliseconds(5))
            }
            throw PrerequisiteMissing("no UDP datagram within \(timeout) on port \(port)")
        }

        /// Sends `bytes` and waits for the same bytes to come back, resending every 500 ms (the
        /// first datagram may wait for ARP); other datagrams (late echoes of earlier sends) are
        /// skipped. Returns the last datagram received if none matched.
        func exchange(_ bytes: [UInt8], to address: String, port: UInt16, timeout: Duration) async throws -> [UInt8] {
            let deadline = ContinuousClock.now + timeout
            var last: [UInt8]?
            while ContinuousClock.now < deadline {
                try send(bytes, to: address, port: port)
                let resend = ContinuousClock.now + .milliseconds(500)
                while ContinuousClock.now < resend, let answer = try? await receive(timeout: resend - ContinuousClock.now) {
                    if answer.bytes == bytes { return answer.bytes }
                    last = answer.bytes
                }
            }
            if let last { return last }
            throw PrerequisiteMissing("no UDP answer from \(address):\(port) within \(timeout)")
        }
    }
}
