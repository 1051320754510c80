import ArgumentParser
import Dispatch
import Foundation
import Logging
import MicroVMHost
import NetworkTestbed
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Per-VM networks (`VMNetwork`) on real namespaces, links and nft transactions, all inside
/// namespaces this benchmark makes (the machine's own namespace and firewall are never touched):
/// set-up and teardown time with no VM present and with `--present` VMs present; then UDP
/// throughput from a fake guest on the VM's TAP to a socket in the namespace that plays the host,
/// through the library's firewall and through the same path without any nft table, interleaved.
struct NetworkBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network", abstract: "VM network set-up/teardown and guest -> host throughput with and without the firewall.")

    @Option(help: "VM networks present during the loaded series.") var present = 200
    @Option(help: "Set-up + teardown rounds per series.") var rounds = 20
    @Option(help: "Throughput runs per series.") var runs = 5
    @Option(help: "Seconds of one throughput run.") var seconds = 1.0
    @Option(help: "UDP payload sizes of the throughput series (bytes; 1472 fills a 1500-byte MTU).") var payloads = "1472,18"

    static let sinkPort: UInt16 = 5001

    func validate() throws {
        guard getuid() == 0 else { throw ValidationError("needs root (namespaces, links, nftables)") }
        for tool in ["ip", "nft"] where NetworkTools.locate(tool) == nil {
            throw ValidationError("\(tool) is missing: apt-get install -y nftables iproute2")
        }
        guard present >= 0, rounds > 0, runs > 0, seconds > 0 else { throw ValidationError("counts and seconds must be positive") }
        guard payloadSizes.allSatisfy({ (1...1472).contains($0) }), !payloadSizes.isEmpty else {
            throw ValidationError("payload sizes must be 1-1472")
        }
    }

    var payloadSizes: [Int] { payloads.split(separator: ",").compactMap { Int($0) } }

    func run() throws {
        let cleanup = Cleanup()
        let signals = cleanup.removeOnSignals()
        defer { cleanup.removeAll() }
        try withExtendedLifetime(signals) {
            try setUpAndTeardown(cleanup)
            try throughput(cleanup)
        }
    }

    // MARK: Set-up and teardown

    private func setUpAndTeardown(_ cleanup: Cleanup) throws {
        let testbed = try cleanup.testbed("setup")
        let network = try testbed.network(logger: quietLogger())
        let policy = EgressPolicy(allow: [
            EgressRule(destination: IPNetwork(NetworkTestbed.internetAddress, prefixLength: 32), transport: .udp, ports: 7...7)
        ])
        let clock = ContinuousClock()
        var emptySetUp = Samples(), emptyTearDown = Samples(), loadedSetUp = Samples(), loadedTearDown = Samples()
        var fill = Samples(), drain = Samples()
        /// One VM set up and torn down on top of whatever is present.
        func round(_ id: VMIdentifier, _ setUp: inout Samples, _ tearDown: inout Samples) throws {
            try cleanup.checkInterrupted()
            setUp.append(try clock.measure { _ = try network.setUp(for: id, policy: policy) })
            tearDown.append(try clock.measure { try network.tearDown(id) })
        }
        for n in 0..<rounds { try round(try VMIdentifier("bench-empty-\(n)"), &emptySetUp, &emptyTearDown) }
        var ids: [VMIdentifier] = []
        for n in 0..<present {
            try cleanup.checkInterrupted()
            let id = try VMIdentifier("bench-\(n)")
            fill.append(try clock.measure { _ = try network.setUp(for: id, policy: policy) })
            ids.append(id)
        }
        for n in 0..<rounds { try round(try VMIdentifier("bench-extra-\(n)"), &loadedSetUp, &loadedTearDown) }
        for id in ids {
            try cleanup.checkInterrupted()
            drain.append(try clock.measure { try network.tearDown(id) })
        }
        // Nothing of the VMs may be left: gc of an empty fleet finds no lease and no orphan.
        let report = try network.garbageCollect(keeping: [])
        guard report.releasedVMs.isEmpty, report.orphanNamespaces.isEmpty, report.orphanInterfaces.isEmpty,
            report.orphanChains.isEmpty, report.failures.isEmpty
        else { throw CommandFailure(description: "teardown left something behind: \(report)") }

        print("VM network set-up / teardown (namespace mode, ms; \(rounds) rounds, \(present) present in the loaded series)")
        print("series                                            p50      p95")
        for (label, samples) in [
            ("set-up, 0 present", emptySetUp), ("teardown, 0 present", emptyTearDown),
            ("set-up, \(present) present", loadedSetUp), ("teardown, \(present) present", loadedTearDown),
            ("set-up while filling 0 -> \(present)", fill), ("teardown while draining \(present) -> 0", drain),
        ] where !samples.values.isEmpty {
            print(
                label.padding(toLength: 44, withPad: " ", startingAt: 0)
                    + Samples.milliseconds(samples.percentile(50)).leftPadded(9) + Samples.milliseconds(samples.percentile(95)).leftPadded(9))
        }
    }

    // MARK: Throughput

    /// One VM of one testbed, a fake guest on its TAP and a sink in its host namespace.
    private struct Path {
        let label: String
        let guest: FakeGuest
        let sink: UDPSink
        let destination: IPv4Address
    }

    private func throughput(_ cleanup: Cleanup) throws {
        let policy = EgressPolicy(allowHost: [
            EgressRule(destination: IPNetwork(IPv4Address(0), prefixLength: 0), transport: .udp, ports: Self.sinkPort...Self.sinkPort)
        ])
        var paths: [Path] = []
        defer { for path in paths { path.sink.shutdown() } }
        for filtered in [true, false] {
            let testbed = try cleanup.testbed(filtered ? "fw" : "open")
            let network = try testbed.network(logger: quietLogger())
            let attachment = try network.setUp(for: try VMIdentifier("bench-flow"), policy: policy)
            if !filtered {
                // The same namespaces, links and routes without any nft table: no filter, no
                // conntrack, no NAT. The host then sees the guest's own address, which it has no
                // route back to: strict reverse-path filtering would drop it.
                let configuration = testbed.configuration()
                try runCommand(["nft", "delete", "table", "inet", configuration.tableName], in: testbed.hostPath)
                try runCommand(["nft", "delete", "table", "inet", configuration.tableName], in: attachment.namespacePath!.string)
                for key in ["all", attachment.hostInterface] {
                    try runCommand(["sysctl", "-qw", "net.ipv4.conf.\(key).rp_filter=0"], in: testbed.hostPath)
                }
            }
            let guest = try FakeGuest(attachment)
            try guest.resolveGateway()
            let sink = try UDPSink(namespace: testbed.hostPath, port: Self.sinkPort)
            paths.append(Path(
                label: filtered ? "through the firewall (VM rules)" : "same path, no nft table", guest: guest, sink: sink,
                destination: attachment.hostAddress))
        }
        // Every path must deliver before it is timed (a silent drop would read as 0 Mbit/s).
        for path in paths {
            let frame = path.guest.udp(to: path.destination, sourcePort: 40000, port: Self.sinkPort, payload: [1])
            _ = path.sink.take()
            for _ in 0..<10 { path.guest.send(frame) }
            usleep(100_000)
            guard path.sink.take().packets == 10 else { throw CommandFailure(description: "\(path.label): the sink did not receive the probe") }
        }

        let nanoseconds = Int64(seconds * 1e9)
        print("")
        print("guest -> host UDP, one flow, a fake guest writing frames into the TAP (\(runs) runs of \(seconds) s, p50)")
        print("series                              payload B    packets/s   Mbit/s   sent/s     loss")
        for size in payloadSizes {
            var received: [[Double]] = Array(repeating: [], count: paths.count)
            var offered: [[Double]] = Array(repeating: [], count: paths.count)
            var lost: [[Double]] = Array(repeating: [], count: paths.count)
            let frames = paths.map {
                $0.guest.udp(to: $0.destination, sourcePort: 40000, port: Self.sinkPort, payload: [UInt8](repeating: 0x5a, count: size))
            }
            for path in paths.indices { _ = paths[path].guest.blast(frames[path], for: nanoseconds / 5) }  // warm-up
            for run in 0..<runs {
                // Alternate which path goes first, so drift over the run does not favour one.
                for path in run % 2 == 0 ? Array(paths.indices) : paths.indices.reversed() {
                    try cleanup.checkInterrupted()
                    _ = paths[path].sink.take()
                    let start = monotonicNanoseconds()
                    let sent = paths[path].guest.blast(frames[path], for: nanoseconds)
                    let elapsed = Double(monotonicNanoseconds() - start) / 1e9
                    usleep(50_000)  // the sink drains its buffer
                    let got = paths[path].sink.take()
                    received[path].append(Double(got.packets) / elapsed)
                    offered[path].append(Double(sent) / elapsed)
                    lost[path].append(sent == 0 ? 0 : 1 - Double(got.packets) / Double(sent))
                }
            }
            for path in paths.indices {
                let pps = median(received[path])
                let mbps = pps * Double(size) * 8 / 1e6
                print(
                    paths[path].label.padding(toLength: 36, withPad: " ", startingAt: 0) + "\(size)".leftPadded(9)
                        + String(format: "%13.0f%9.1f%9.0f%8.1f%%", pps, mbps, median(offered[path]), median(lost[path]) * 100))
            }
        }
    }
}

private func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    guard !sorted.isEmpty else { return 0 }
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String { String(repeating: " ", count: max(0, width - count)) + self }
}

/// The testbeds of this run, removed at the end and on an error. A first SIGINT/SIGTERM/SIGHUP
/// only raises a flag that the benchmark checks between steps (at most one throughput run
/// away), so removal never races with a step that is creating links; a second one removes
/// everything from the signal's queue and exits, for a step that hangs.
private final class Cleanup: Sendable {
    private let testbeds = Mutex<[NetworkTestbed]>([])
    private let signals = Atomic<Int>(0)

    func testbed(_ label: String) throws -> NetworkTestbed {
        try checkInterrupted()
        let testbed = try NetworkTestbed(label, owner: "bench")
        testbeds.withLock { $0.append(testbed) }
        return testbed
    }

    func checkInterrupted() throws {
        if signals.load(ordering: .relaxed) > 0 { throw ExitCode(130) }
    }

    /// The sources must be kept alive for as long as the handlers should run.
    func removeOnSignals() -> [any DispatchSourceSignal] {
        [SIGINT, SIGTERM, SIGHUP].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { [self] in
                if signals.add(1, ordering: .relaxed).newValue > 1 {
                    removeAll()
                    _exit(128 + number)
                }
            }
            source.resume()
            return source
        }
    }

    /// Holds the lock while removing, so a second caller returns only when removal is done.
    func removeAll() {
        testbeds.withLock { list in
            for testbed in list { testbed.remove() }
            list.removeAll()
        }
    }
}
