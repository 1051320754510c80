import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import SystemPackage
import Testing

/// A topology made of namespaces this test owns: "host" (the library's host side: VM links, its
/// nft table, the uplink `up0`) and "internet" (192.0.2.2, where UDP receivers listen). The
/// machine's own namespace and firewall are never touched.
struct TestTopology {
    let host: String
    let internet: String

    static func ip(_ arguments: [String]) async throws {
        let result = try await Subprocess.run(.name("ip"), arguments: Arguments(arguments), output: .discarded, error: .string(limit: 4096))
        guard case .exited(0) = result.terminationStatus else {
            throw PrerequisiteMissing("ip \(arguments.joined(separator: " ")): \(result.standardError)")
        }
    }

    static func make(tag: String) async throws -> TestTopology {
        let topology = TestTopology(host: "mvth\(tag)", internet: "mvti\(tag)")
        try await ip(["netns", "add", topology.host])
        try await ip(["netns", "add", topology.internet])
        try await ip(["-n", topology.host, "link", "add", "up0", "type", "veth", "peer", "name", "in0", "netns", topology.internet])
        for (namespace, device, address) in [(topology.host, "up0", "192.0.2.1/24"), (topology.internet, "in0", "192.0.2.2/24")] {
            try await ip(["-n", namespace, "addr", "add", address, "dev", device])
            try await ip(["-n", namespace, "link", "set", device, "up"])
            try await ip(["-n", namespace, "link", "set", "lo", "up"])
        }
        try await ip(["-n", topology.internet, "route", "add", "default", "via", "192.0.2.1"])
        try await ip(["netns", "exec", topology.host, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        return topology
    }

    /// A name prefix for VM networks that no other test process uses at the same time: VM
    /// namespaces (`<prefix><index>`) are global, and other runs of these tests may share the
    /// machine. `kind` is one letter.
    static func namePrefix(_ kind: String) -> String {
        let letters = String(getpid()).map { Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(String($0))!)) }
        return "mv" + kind + String(letters.suffix(5))
    }

    func remove() async {
        try? await Self.ip(["netns", "del", host])
        try? await Self.ip(["netns", "del", internet])
    }

    /// Receives UDP on 192.0.2.2:`port` in the internet namespace for `seconds`; what arrived.
    func receive(port: Int, seconds: Double) -> Task<String, Never> {
        let script = """
            import socket, sys
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("192.0.2.2", \(port)))
            s.settimeout(\(seconds))
            try:
                data, peer = s.recvfrom(2048)
                sys.stdout.write(data.decode(errors="replace") + " from " + peer[0])
            except socket.timeout:
                pass
            """
        return Task {
            let result = try? await Subprocess.run(
                .name("ip"), arguments: ["netns", "exec", internet, "python3", "-c", script], output: .string(limit: 4096), error: .discarded)
            return result?.standardOutput ?? ""
        }
    }
}

/// VMs on a network the driver makes: the real guest's packets cross the namespace, the
/// firewall and the uplink exactly as the policy allows.
@Suite("Networked VMs end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct NetworkedVMTests {
    @Test("A jailed VM in its own network namespace reaches what the policy allows, nothing else; everything is removed after")
    func egressFromTheGuest() async throws {
        let tag = String(getpid() % 100_000)
        let topology = try await TestTopology.make(tag: tag)
        do {
            try await Self.run(topology: topology, tag: tag)
        } catch {
            await topology.remove()
            throw error
        }
        await topology.remove()
        let left = try await Subprocess.run(.name("ip"), arguments: ["netns", "list"], output: .string(limit: 65536)).standardOutput
        #expect(!left.contains(TestTopology.namePrefix("e")) && !left.contains(topology.host), "namespaces left: \(left)")
    }

    static func run(topology: TestTopology, tag: String) async throws {
        try await EndToEnd.withDriver(.required, name: "net") { configuration, assets, directory in
            var configuration = configuration
            configuration.network = VMNetworkConfiguration(
                stateDirectory: FilePath(directory + "/network"), namePrefix: TestTopology.namePrefix("e"), hostNamespace: FilePath("/var/run/netns/" + topology.host),
                uplink: "up0")
            for (port, allowed) in [(7, true), (9, false)] {
                var spec = EndToEnd.spec(
                    assets, id: "net-\(port)-\(tag)",
                    args: ["console=ttyS0", "microvm.heartbeat_ms=0", "microvm.net.ip=172.16.0.2", "microvm.net.host=192.0.2.2", "microvm.net.hello=\(port)"])
                spec.network = NetworkSpec(allow: [EgressRuleSpec(destination: "192.0.2.2/32", protocol: "udp", ports: "7")])
                let vm = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
                let namespace = try #require(vm.network?.namespacePath)
                try await EndToEnd.using(vm) { vm in
                    #expect(vm.network?.guestAddress.description == "172.16.0.2")
                    let status = try String(contentsOfFile: "/proc/\(vm.pid)/status", encoding: .utf8)
                    #expect(status.contains("Uid:\t\(vm.network!.uid)\t"), "the VMM runs as the network's leased uid")
                    // The project's guest ARPs for the destination itself (a Linux guest would
                    // use the gateway from its ip= argument): let its namespace answer for it.
                    try await TestTopology.ip(["netns", "exec", namespace.lastComponent!.string, "sysctl", "-qw", "net.ipv4.conf.tap0.proxy_arp=1"])
                    let received = topology.receive(port: port, seconds: allowed ? 5 : 1.5)
                    try await Task.sleep(for: .milliseconds(300))
                    try await vm.start()
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: net0 udp hello to=192.0.2.2:\(port)", timeout: .seconds(10))
                    let payload = await received.value
                    if allowed {
                        #expect(payload.hasPrefix("hello from microvm-guest"), "port \(port): \(payload)")
                        #expect(payload.hasSuffix("from 192.0.2.1"), "masqueraded behind the uplink: \(payload)")
                    } else {
                        #expect(payload.isEmpty, "port \(port) is not allowed, yet \(payload) arrived")
                    }
                    #expect(await vm.stop().kind == .guestShutdown)
                }
                #expect(!FileManager.default.fileExists(atPath: namespace.string), "the VM's namespace was left behind")
            }
            let leases = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/network/leases")) ?? []
            #expect(leases.isEmpty, "leases left: \(leases)")
        }
    }

    @Test("An unjailed VM on a TAP-mode network restored from its snapshot under a new id keeps its allocation; a clone beside the running source is refused")
    func tapModeRestoreKeepsTheAllocation() async throws {
        let tag = "r" + String(getpid() % 100_000)
        let topology = try await TestTopology.make(tag: tag)
        do {
            try await EndToEnd.withDriver(.disabled, name: "net-tap") { configuration, assets, directory in
                var configuration = configuration
                configuration.network = VMNetworkConfiguration(
                    stateDirectory: FilePath(directory + "/network"), namePrefix: TestTopology.namePrefix("r"), hostNamespace: FilePath("/var/run/netns/" + topology.host),
                    uplink: "up0")
                var spec = EndToEnd.spec(assets, id: "tapsnap-\(tag)")
                spec.network = NetworkSpec(mode: .tap)
                // Another VM first, so the source's lease is not the lowest free one at restore.
                var other = EndToEnd.spec(assets, id: "tapsnap-other-\(tag)")
                other.network = NetworkSpec(mode: .tap)
                let first = try await MicroVM.run(other, configuration: configuration, logger: EndToEnd.logger)
                let source = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                let sourceNetwork = try #require(source.network)
                #expect(sourceNetwork.mode == .tap && sourceNetwork.namespacePath == nil)
                let snapshot = try await EndToEnd.using(source) { vm in
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(10))
                    return try await vm.snapshot(to: FilePath(directory + "/snap"), type: .full)
                }
                #expect(snapshot.networkIndex == sourceNetwork.index)
                // The source still holds the lease: a clone would need its address.
                await #expect {
                    _ = try await MicroVM.restore(snapshot, id: "tapsnap-clone-\(tag)", configuration: configuration, logger: EndToEnd.logger)
                } throws: { error in
                    guard case .createFailed(_, _, let cause, _) = error as? MicroVMError else { return false }
                    return "\(cause)".contains("leaseTaken") || "\(cause)".contains("needs network lease")
                }
                #expect(await source.stop().kind == .guestShutdown)
                await first.kill()
                let restored = try await MicroVM.restore(snapshot, id: "tapsnap-restored-\(tag)", configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(restored) { vm in
                    let network = try #require(vm.network)
                    #expect(network.index == sourceNetwork.index && network.index != 0)
                    #expect(network.tapName == sourceNetwork.tapName && network.guestAddress == sourceNetwork.guestAddress)
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat", timeout: .seconds(5))
                    #expect(await vm.stop().kind == .guestShutdown)
                }
                let leases = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/network/leases")) ?? []
                #expect(leases.isEmpty, "leases left: \(leases)")
            }
        } catch {
            await topology.remove()
            throw error
        }
        await topology.remove()
    }
}
