#if canImport(Glibc)
    import Glibc
#endif
import Testing

@testable import MicroVMHost

/// Set-up and teardown time per VM (p50/p95): the first 200 VMs, then 20 more while 200 are
/// present, then tearing the 200 down; all with real namespaces, links and nft transactions.
/// Prints `NETWORK-BENCH` lines. Every VM's plumbing must be gone afterwards.
@Suite("NetworkBenchmark", .serialized)
struct NetworkBenchmarkTests {
    /// A benchmark, not a check: it only prints figures, so it runs when asked for
    /// (`MICROVM_NETWORK_BENCH=1`; see BENCHMARKS.md), never as part of the suite.
    @Test(.enabled(if: getenv("MICROVM_NETWORK_BENCH") != nil && HostPrerequisite.isRoot && NetworkTools.locate("nft") != nil))
    func setUpAndTeardownTimes() throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot && NetworkTools.locate("nft") != nil, "root and nft")
        let topology = try NetworkTopology("bench")
        defer { topology.remove() }
        let network = try topology.network()
        let policy = EgressPolicy(allow: [
            EgressRule(destination: IPNetwork(NetworkTopology.internetAddress, prefixLength: 32), transport: .udp, ports: 7...7)
        ])
        func timed(_ body: () throws -> Void) rethrows -> Double {
            let start = monotonicNanoseconds()
            try body()
            return Double(monotonicNanoseconds() - start) / 1e6
        }
        var setUp: [Double] = []
        var attachments: [NetworkAttachment] = []
        for n in 0..<200 {
            setUp.append(try timed { attachments.append(try network.setUp(for: VMIdentifier("bench-\(n)"), policy: policy)) })
        }
        #expect(Set(attachments.map(\.outsideAddress)).count == 200)
        #expect(Set(attachments.map(\.hostInterface)).count == 200)
        #expect(Set(attachments.compactMap(\.namespacePath)).count == 200)
        var setUpLoaded: [Double] = []
        var tearDownLoaded: [Double] = []
        for n in 0..<20 {
            let id = try VMIdentifier("bench-extra-\(n)")
            setUpLoaded.append(try timed { _ = try network.setUp(for: id, policy: policy) })
            tearDownLoaded.append(try timed { try network.tearDown(id) })
        }
        var tearDown: [Double] = []
        for attachment in attachments { tearDown.append(try timed { try network.tearDown(attachment.vm) }) }
        #expect(network.ourNamespaces().isEmpty)
        #expect(try network.ourInterfaces().isEmpty)
        #expect(try network.ourChains().isEmpty)
        #expect(try network.leases.all().leases.isEmpty)
        for (label, samples) in [
            ("set-up, first 200 VMs", setUp), ("set-up with 200 present", setUpLoaded),
            ("teardown with 200 present", tearDownLoaded), ("teardown of the 200", tearDown),
        ] {
            print("NETWORK-BENCH \(label): p50 \(percentile(samples, 0.5)) ms, p95 \(percentile(samples, 0.95)) ms, n=\(samples.count)")
        }
    }
}

func percentile(_ samples: [Double], _ p: Double) -> String {
    let sorted = samples.sorted()
    let value = sorted[min(sorted.count - 1, Int((Double(sorted.count) * p).rounded(.up)) - 1)]
    return "\(Double(Int(value * 10)) / 10)"
}

func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
