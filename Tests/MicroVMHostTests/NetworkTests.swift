#if canImport(Glibc)
    import Glibc
#endif
import Dispatch
import Logging
import Synchronization
import SystemPackage
import NetworkTestbed
import Testing

@testable import MicroVMHost

private var canRunNetwork: Bool {
    HostPrerequisite.isRoot && NetworkTools.locate("nft") != nil && NetworkTools.locate("ip") != nil
        && access("/dev/net/tun", R_OK | W_OK) == 0
}

private func requireNetwork() throws {
    try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
    try HostPrerequisite.require(NetworkTools.locate("nft") != nil, "nft (apt-get install -y nftables)")
    try HostPrerequisite.require(NetworkTools.locate("ip") != nil, "ip (iproute2)")
    try HostPrerequisite.require(access("/dev/net/tun", R_OK | W_OK) == 0, "/dev/net/tun")
}

/// rx packets of tap0 and tx packets of veth0 in a VM namespace.
private func linkCounters(_ namespace: String) throws -> (tapReceived: Int, vethSent: Int) {
    let json = try JSONValue.parse(try runCommand(["ip", "-j", "-s", "link", "show"], in: namespace))
    var tap = -1
    var veth = -1
    for link in json.array ?? [] {
        if link["ifname"]?.string == "tap0" { tap = link["stats64"]?["rx"]?["packets"]?.int ?? -1 }
        if link["ifname"]?.string == "veth0" { veth = link["stats64"]?["tx"]?["packets"]?.int ?? -1 }
    }
    return (tap, veth)
}

/// [user, group] of a TAP from `ip -j -d link show`, as text (iproute2 6.1 prints a group that
/// has a name by its name).
private func tapOwner(_ name: String, in namespace: String) throws -> [String] {
    let json = try JSONValue.parse(try runCommand(["ip", "-j", "-d", "link", "show", "dev", name], in: namespace))
    let data = json.array?.first?["linkinfo"]?["info_data"]
    return [data?["user"], data?["group"]].map { $0?.int.map(String.init) ?? $0?.string ?? "?" }
}

/// How iproute2 shows an owner: the group's name if it has one.
private func owner(_ uid: UInt32, _ gid: UInt32) -> [String] {
    guard let group = getgrgid(gid) else { return ["\(uid)", "\(gid)"] }
    return ["\(uid)", String(cString: group.pointee.gr_name)]
}

private func vm(_ name: String) throws -> VMIdentifier { try VMIdentifier(name) }

/// The `packets N` of the rule carrying `comment` in an `nft list` text.
private func counter(_ listing: String, comment: String) -> Int {
    for line in listing.split(separator: "\n") where line.contains("comment \"\(comment)\"") {
        let words = line.split(separator: " ")
        if let at = words.firstIndex(of: "packets"), at + 1 < words.count, let value = Int(words[at + 1]) { return value }
    }
    return -1
}

@Suite("NetworkUnit")
struct NetworkUnitTests {
    @Test func addressesAndPolicy() throws {
        #expect(IPv4Address("10.0.0.1")?.value == 0x0A00_0001)
        #expect(IPv4Address("256.0.0.1") == nil)
        #expect(try IPNetwork("10.1.2.3/8").description == "10.0.0.0/8")
        #expect(MACAddress(derivedFrom: IPv4Address(172, 16, 0, 2)).description == "06:00:ac:10:00:02")
        #expect(try IPNetwork("2001:DB8:0:0:1::7/32").description == "2001:db8::/32")
        #expect(try IPNetwork("fd00:ac10::2").description == "fd00:ac10::2/128")
        #expect(IPv6Address("2001:db8:0:0:1:0:0:1")?.description == "2001:db8::1:0:0:1")
        #expect(IPv6Address("::")?.description == "::")
        #expect(IPv6Address("1::")?.adding(0x1_0000).description == "1::1:0")
        for bad in [":::", "1::2::3", "12345::", "1:2:3:4:5:6:7:8:9", "g::1", "1.2.3.4::"] { #expect(IPv6Address(bad) == nil, "\(bad)") }
        #expect(throws: NetworkError.self) { try IPNetwork("2001:db8::/129") }
        #expect(EgressRule(destination: try IPNetwork("2001:db8::/32"), transport: .udp, ports: 53...53).nftMatch() == "ip6 daddr 2001:db8::/32 udp dport 53")
        #expect(EgressRule(destination: try IPNetwork("::/0"), transport: .icmp).nftMatch() == "meta nfproto ipv6 meta l4proto ipv6-icmp")
        #expect(throws: NetworkError.self) {
            try VMNetworkConfiguration(stateDirectory: "/tmp/x", ipv6: IPv6Addressing(addressPool: IPNetwork("fd00:ac10::/120"))).validate()
        }
        #expect(VMNetworkConfiguration(stateDirectory: "/tmp/x", ipv6: IPv6Addressing()).subnet6(3)?.peer.description == "fd6d:766d::e")
        #expect(throws: NetworkError.self) {
            try EgressPolicy(allow: [EgressRule(destination: IPNetwork("1.2.3.4"), transport: .icmp, ports: 1...2)]).validate()
        }
        let json = try JSONValue.parse(#"{"a":[1,2,{"b":"x\"y"}],"c":null,"d":true}"#)
        #expect(json["a"]?.array?.count == 3)
        #expect(json["a"]?.array?[2]["b"]?.string == "x\"y")
    }

    /// A host with no networked VM keeps no lease files: the last release removes them (after
    /// `whenLast`, which removes the nft table); lookups never make them; an acquire does.
    /// Threads that take and drop leases while the files come and go never share an index.
    @Test func lastReleaseRemovesTheStore() throws {
        let scratch = ScratchDirectory("leases-gone")
        defer { scratch.remove() }
        let directory = FilePath(scratch.path + "/network")
        let store = NetworkLeaseStore(directory: directory, capacity: 8, uidBase: 1000)
        #expect(try store.lease(for: vm("a")) == nil)
        #expect(try store.all().leases.isEmpty)
        try store.release(vm("a"))
        #expect(!FileSystem.exists(directory.string), "lookups and releases make nothing")
        _ = try store.acquire(for: vm("a"), mode: .tap, owner: nil)
        _ = try store.acquire(for: vm("b"), mode: .tap, owner: nil)
        var lastReleases = 0
        try store.release(vm("a"), whenLast: { lastReleases += 1 })
        #expect(lastReleases == 0 && FileSystem.exists(directory.string + "/lock"))
        try store.release(vm("b"), whenLast: { lastReleases += 1 })
        #expect(lastReleases == 1)
        #expect(!FileSystem.exists(directory.string), "the last release removes the files")
        #expect(try store.acquire(for: vm("c"), mode: .tap, owner: nil).lease.index == 0)
        try store.release(vm("c"))

        let held = Mutex<Set<Int>>([])
        let shared = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 6) { worker in
            for round in 0..<40 {
                do {
                    let id = try vm("w\(worker)-\(round)")
                    let lease = try store.acquire(for: id, mode: .tap, owner: nil).lease
                    if !held.withLock({ $0.insert(lease.index).inserted }) { shared.withLock { $0.append("index \(lease.index) twice") } }
                    held.withLock { _ = $0.remove(lease.index) }
                    try store.release(id)
                } catch {
                    shared.withLock { $0.append("\(error)") }
                }
            }
        }
        #expect(shared.withLock { $0 }.isEmpty)
        #expect(!FileSystem.exists(directory.string))
    }

    /// 200 VMs: unique indices, subnets, names, uids; a second store instance on the same
    /// directory (a driver restart) sees the same leases; released indices are reused.
    @Test func twoHundredLeasesWithoutCollision() throws {
        let scratch = ScratchDirectory("leases")
        defer { scratch.remove() }
        let configuration = VMNetworkConfiguration(stateDirectory: FilePath(scratch.path))
        let store = NetworkLeaseStore(directory: configuration.stateDirectory, capacity: configuration.capacity, uidBase: 200_000)
        var leases: [NetworkLease] = []
        for n in 0..<200 { leases.append(try store.acquire(for: vm("vm-\(n)"), mode: .namespace, owner: nil).lease) }
        #expect(Set(leases.map(\.index)).count == 200)
        #expect(Set(leases.map { configuration.subnet($0.index).peer }).count == 200)
        #expect(Set(leases.map { configuration.interfaceName($0.index) }).count == 200)
        #expect(leases.allSatisfy { configuration.interfaceName($0.index).utf8.count <= 15 })
        #expect(Set(leases.map(\.uid)).count == 200)
        // The same VM asks again: same lease.
        #expect(try store.acquire(for: vm("vm-7"), mode: .namespace, owner: nil).lease == leases[7])
        // A new instance (driver restart) reads the same leases.
        let restarted = NetworkLeaseStore(directory: configuration.stateDirectory, capacity: configuration.capacity, uidBase: 200_000)
        #expect(try restarted.all().leases == leases.sorted { $0.index < $1.index })
        #expect(try restarted.lease(for: vm("vm-150")) == leases[150])
        try restarted.release(vm("vm-3"))
        let again = try restarted.acquire(for: vm("new-vm"), mode: .tap, owner: (uid: 123, gid: 100)).lease
        #expect(again.index == leases[3].index)
        #expect(again.uid == 123 && again.gid == 100)
        #expect(try store.lease(for: vm("vm-3")) == nil)
        // A given index (a TAP-mode restore keeps its snapshot's allocation): free, taken, or
        // already this VM's.
        let chosen = try store.acquire(for: vm("restored"), mode: .tap, owner: nil, index: 250).lease
        #expect(chosen.index == 250 && chosen.uid == 200_250)
        #expect(try store.acquire(for: vm("restored"), mode: .tap, owner: nil, index: 250).lease == chosen)
        #expect(throws: NetworkError.leaseTaken(index: 250, holder: "restored", vm: "other")) {
            try store.acquire(for: vm("other"), mode: .tap, owner: nil, index: 250)
        }
        #expect(throws: NetworkError.leaseTaken(index: 5, holder: nil, vm: "restored")) {
            try store.acquire(for: vm("restored"), mode: .tap, owner: nil, index: 5)
        }
        #expect(try store.lease(for: vm("other")) == nil)
        // A small pool is exhausted with an error, not a collision.
        let tiny = NetworkLeaseStore(directory: FilePath(scratch.path + "/tiny"), capacity: 2, uidBase: 1)
        _ = try tiny.acquire(for: vm("a"), mode: .namespace, owner: nil)
        _ = try tiny.acquire(for: vm("b"), mode: .namespace, owner: nil)
        #expect(throws: NetworkError.poolExhausted(capacity: 2)) { try tiny.acquire(for: vm("c"), mode: .namespace, owner: nil) }
    }
}

/// The legacy (xtables) FORWARD chain check, on `iptables-legacy -S` listings as Docker,
/// ufw and hand-written rules leave them.
@Suite("NetworkLegacyIptables")
struct NetworkLegacyIptablesTests {
    static let ufw = """
        -P FORWARD DROP
        -A FORWARD -j ufw-before-logging-forward
        -A FORWARD -j ufw-before-forward
        -A FORWARD -j ufw-after-forward
        """

    static func isOurs(_ pattern: String) -> Bool {
        let configuration = VMNetworkConfiguration(stateDirectory: "/tmp/unused")
        guard pattern.hasSuffix("+") else { return configuration.index(ofName: pattern) != nil }
        return "mvm".hasPrefix(pattern.dropLast())
    }

    @Test func policyDropOfDockerAndUfw() {
        let docker = LegacyForwardChain(listing: Self.dockerTable, isOurs: Self.isOurs)
        #expect(docker.policyDrop && docker.droppingRules.isEmpty && docker.hasDockerUser && docker.dropsVMTraffic)
        let ufw = LegacyForwardChain(listing: Self.ufw, isOurs: Self.isOurs)
        #expect(ufw.policyDrop && !ufw.hasDockerUser)
        #expect(!LegacyForwardChain(listing: "-P FORWARD ACCEPT\n", isOurs: Self.isOurs).dropsVMTraffic)
        #expect(!LegacyForwardChain(listing: "", isOurs: Self.isOurs).dropsVMTraffic)
    }

    @Test func rulesThatDropEveryVMPacket() {
        let listing = """
            -P FORWARD ACCEPT
            -A FORWARD -m conntrack --ctstate INVALID -j DROP
            -A FORWARD -o docker0 -j DROP
            -A FORWARD -i eth0 -p tcp --dport 25 -j REJECT --reject-with icmp-port-unreachable
            -A FORWARD -i mvm+ -j REJECT --reject-with icmp-port-unreachable
            -A FORWARD ! -i docker0 -j DROP
            -A FORWARD -j DROP
            """
        let chain = LegacyForwardChain(listing: listing, isOurs: Self.isOurs)
        // Partial drops (INVALID, port 25) and drops for other interfaces are not VM-wide.
        #expect(chain.droppingRules == [
            "-A FORWARD -i mvm+ -j REJECT --reject-with icmp-port-unreachable", "-A FORWARD ! -i docker0 -j DROP", "-A FORWARD -j DROP",
        ])
        #expect(!chain.policyDrop && chain.dropsVMTraffic)
    }

    /// What the fix inserts clears the finding, in FORWARD and in DOCKER-USER alike.
    @Test func acceptRulesAheadClearIt() {
        let fixed = """
            -P FORWARD DROP
            -A FORWARD -i mvm+ -j ACCEPT
            -A FORWARD -o mvm+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
            -A FORWARD -j DROP
            """
        #expect(!LegacyForwardChain(listing: fixed, isOurs: Self.isOurs).dropsVMTraffic)
        let half = "-P FORWARD DROP\n-A FORWARD -i mvm+ -j ACCEPT\n"
        #expect(LegacyForwardChain(listing: half, isOurs: Self.isOurs).policyDrop)
        let other = "-P FORWARD DROP\n-A FORWARD -i eth0 -j ACCEPT\n-A FORWARD -m state --state ESTABLISHED -j ACCEPT\n"
        #expect(LegacyForwardChain(listing: other, isOurs: Self.isOurs).policyDrop)
    }

    /// Docker's whole filter table, as `iptables-legacy -S` prints it.
    static let dockerTable = """
        -P INPUT ACCEPT
        -P FORWARD DROP
        -P OUTPUT ACCEPT
        -N DOCKER
        -N DOCKER-ISOLATION-STAGE-1
        -N DOCKER-ISOLATION-STAGE-2
        -N DOCKER-USER
        -A FORWARD -j DOCKER-USER
        -A FORWARD -j DOCKER-ISOLATION-STAGE-1
        -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A FORWARD -o docker0 -j DOCKER
        -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
        -A FORWARD -i docker0 -o docker0 -j ACCEPT
        -A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
        -A DOCKER-ISOLATION-STAGE-1 -j RETURN
        -A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
        -A DOCKER-ISOLATION-STAGE-2 -j RETURN
        -A DOCKER-USER -j RETURN
        """

    /// The fix goes into DOCKER-USER on a Docker host; the check follows FORWARD's jump there.
    @Test func jumpsAreFollowed() {
        let fixed = Self.dockerTable.replacingOccurrences(
            of: "-A DOCKER-USER -j RETURN",
            with: "-A DOCKER-USER -i mvm+ -j ACCEPT\n-A DOCKER-USER -o mvm+ -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n-A DOCKER-USER -j RETURN")
        #expect(!LegacyForwardChain(listing: fixed, isOurs: Self.isOurs).dropsVMTraffic)
        // The same accept rules after a RETURN, or in a chain only docker0's packets reach, do not count.
        let returnedFirst = Self.dockerTable.replacingOccurrences(
            of: "-A DOCKER-USER -j RETURN",
            with: "-A DOCKER-USER -j RETURN\n-A DOCKER-USER -i mvm+ -j ACCEPT\n-A DOCKER-USER -o mvm+ -j ACCEPT")
        #expect(LegacyForwardChain(listing: returnedFirst, isOurs: Self.isOurs).policyDrop)
        let otherInterface = Self.dockerTable + "\n-A DOCKER -i mvm+ -j ACCEPT\n-A DOCKER -o mvm+ -j ACCEPT"
        #expect(LegacyForwardChain(listing: otherInterface, isOurs: Self.isOurs).policyDrop)
    }

    @Test func dropsInAChainFORWARDJumpsTo() {
        let ufw = """
            -P FORWARD ACCEPT
            -N ufw-before-forward
            -N ufw-reject-forward
            -N ufw-loop
            -A FORWARD -j ufw-before-forward
            -A FORWARD -m comment --comment partial -j ufw-reject-forward
            -A FORWARD -j ufw-loop
            -A ufw-before-forward -m conntrack --ctstate INVALID -j DROP
            -A ufw-before-forward -i mvm+ -j DROP
            -A ufw-reject-forward -j REJECT
            -A ufw-loop -j ufw-loop
            -A ufw-loop -j FORWARD
            """
        let chain = LegacyForwardChain(listing: ufw, isOurs: Self.isOurs)
        // The conditional jump's chain is not entered; jumps in a loop end.
        #expect(chain.droppingRules == ["-A ufw-before-forward -i mvm+ -j DROP"])
        #expect(!chain.policyDrop && chain.dropsVMTraffic)
    }

    @Test func theFixNamesTheChainAndNamespace() throws {
        let error = NetworkError.legacyForwardDrop(
            tool: "iptables-legacy", policyDrop: true, rules: ["-A FORWARD -j DROP"], fix: "iptables-legacy -I FORWARD 1 ...")
        #expect(error.summary.contains("policy DROP; -A FORWARD -j DROP"))
        #expect(error.hint.contains("iptables-legacy -I FORWARD 1"))
    }
}

@Suite("NetworkIsolation", .serialized)
struct NetworkIsolationTests {
    static let echoPort: UInt16 = 7
    static let closedPort: UInt16 = 9

    static let policy = EgressPolicy(allow: [
        EgressRule(destination: IPNetwork(NetworkTestbed.internetAddress, prefixLength: 32), transport: .udp, ports: echoPort...echoPort),
        EgressRule(destination: IPNetwork(NetworkTestbed.internetAddress, prefixLength: 32), transport: .tcp, ports: echoPort...echoPort),
    ])

    /// Allowed destinations answer; every other destination, spoofed sources, the host's and the
    /// namespace's own addresses and IPv6 get nothing, counted at both ends.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func egressFirewallFilters() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("iso")
        defer { topology.remove() }
        let internet = try EchoServer(namespace: topology.internetPath, ports: [Self.echoPort, Self.closedPort])
        defer { internet.shutdown() }
        let host = try EchoServer(namespace: topology.hostPath, ports: [Self.echoPort])
        defer { host.shutdown() }
        let network = try topology.network(logger: testLogger)
        #expect(network.preflight().problems.isEmpty, "\(network.preflight().problems)")

        let attachment = try network.setUp(for: vm("iso-a"), policy: Self.policy)
        defer { _ = try? network.tearDown(vm("iso-a")) }
        #expect(attachment.tapName == "tap0")
        #expect(attachment.guestAddress == IPv4Address(172, 16, 0, 2))
        #expect(attachment.bootArgument == "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off")
        #expect(FileSystem.exists(attachment.namespacePath!.string))

        let guest = try FakeGuest(attachment)
        try guest.resolveGateway()

        // Allowed: UDP and TCP to 192.0.2.2:7.
        var answered = 0
        for n in 0..<10 where guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: Array("ping \(n)".utf8)) == Array("ping \(n)".utf8) {
            answered += 1
        }
        #expect(answered == 10)
        #expect(internet.count("udp/7") == 10)
        #expect(guest.tcpConnect(to: NetworkTestbed.internetAddress, port: Self.echoPort))

        // Not allowed: another port, another destination, TCP to another port.
        for _ in 0..<5 {
            #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.closedPort, payload: [1], within: 150) == nil)
            #expect(guest.udpExchange(to: NetworkTestbed.otherAddress, port: Self.echoPort, payload: [2], within: 150) == nil)
        }
        #expect(!guest.tcpConnect(to: NetworkTestbed.internetAddress, port: Self.closedPort, within: 200))
        #expect(!guest.ping(NetworkTestbed.internetAddress))

        // Spoofed source address and spoofed MAC.
        for _ in 0..<5 {
            #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [3], from: IPv4Address(172, 16, 0, 99), within: 150) == nil)
            let forged = guest.udp(to: NetworkTestbed.internetAddress, sourcePort: 5555, port: Self.echoPort, payload: [4])
            guest.send(Array(forged[0..<6]) + [0x06, 0, 0, 0, 0, 0x63] + Array(forged[12...]))
        }

        // The host (its end of the link and its uplink address) and the namespace's own addresses.
        for target in [attachment.hostAddress, NetworkTestbed.uplinkAddress] {
            #expect(guest.udpExchange(to: target, port: Self.echoPort, payload: [5], within: 150) == nil)
            #expect(!guest.ping(target, within: 150))
        }
        for target in [attachment.gatewayAddress, attachment.outsideAddress] {
            #expect(!guest.ping(target, within: 150))
        }
        // IPv6: the namespace has IPv6 disabled (no address at all), so the kernel discards it
        // before any hook; the nft IPv6 rule is the second line. Counted at both ends: the
        // frames reach tap0 (rx), nothing leaves by veth0 (tx) and nothing comes back.
        let namespace = attachment.namespacePath!.string
        let before = try linkCounters(namespace)
        #expect(!guest.pingIPv6())
        #expect(!guest.pingIPv6())
        let after = try linkCounters(namespace)
        #expect(after.tapReceived - before.tapReceived == 2)
        #expect(after.vethSent == before.vethSent)
        #expect(try runCommand(["ip", "-6", "addr", "show"], in: namespace).trimmingNetworkWhitespace().isEmpty)
        // The TAP is owned by the VM's own uid:gid.
        #expect(try tapOwner(attachment.tapName, in: attachment.namespacePath!.string) == owner(attachment.uid, attachment.gid))

        // The other end saw only the allowed traffic.
        usleep(100_000)
        #expect(internet.count("udp/7") == 10)
        #expect(internet.count("udp/9") == 0)
        #expect(internet.count("tcp/9") == 0)
        #expect(host.count("udp/7") == 0)

        // And the firewall counted the drops.
        let inner = try network.namespaceRuleset(of: attachment)
        #expect(counter(inner, comment: "spoofed source") == 5, "\(inner)")
        #expect(counter(inner, comment: "spoofed MAC") == 5, "\(inner)")
        #expect(counter(inner, comment: "namespace addresses") >= 2, "\(inner)")
        let outer = try network.hostRuleset()
        #expect(counter(outer, comment: "not allowed") >= 11, "\(outer)")
        #expect(counter(outer, comment: "VM to host") >= 0)
        print("NETWORK-RULESET host:\n\(outer)\nNETWORK-RULESET vm namespace:\n\(inner)")
    }

    /// Two clones with the same guest address and MAC run side by side; each gets its own answers
    /// and the host tells them apart by their outside addresses.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func clonesWithOneGuestAddress() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("clone")
        defer { topology.remove() }
        let internet = try EchoServer(namespace: topology.internetPath, ports: [Self.echoPort])
        defer { internet.shutdown() }
        let network = try topology.network(logger: testLogger)
        let a = try network.setUp(for: vm("clone-a"), policy: Self.policy)
        let b = try network.setUp(for: vm("clone-b"), policy: Self.policy)
        defer {
            _ = try? network.tearDown(vm("clone-a"))
            _ = try? network.tearDown(vm("clone-b"))
        }
        #expect(a.guestAddress == b.guestAddress && a.guestMAC == b.guestMAC && a.tapName == b.tapName)
        #expect(a.outsideAddress != b.outsideAddress && a.hostInterface != b.hostInterface && a.uid != b.uid)
        let guestA = try FakeGuest(a)
        let guestB = try FakeGuest(b)
        try guestA.resolveGateway()
        try guestB.resolveGateway()
        for n in 0..<5 {
            let payloadA = Array("A\(n)".utf8)
            let payloadB = Array("B\(n)".utf8)
            let sourcePort: UInt16 = 41000  // the same 5-tuple in both clones
            guestA.send(guestA.udp(to: NetworkTestbed.internetAddress, sourcePort: sourcePort, port: Self.echoPort, payload: payloadA))
            guestB.send(guestB.udp(to: NetworkTestbed.internetAddress, sourcePort: sourcePort, port: Self.echoPort, payload: payloadB))
            let isUDP: ([UInt8]) -> Bool = { f in f.count > 42 && f[23] == 17 }
            #expect(guestA.receive(within: 500, isUDP).map { Array($0[42...]) } == payloadA)
            #expect(guestB.receive(within: 500, isUDP).map { Array($0[42...]) } == payloadB)
        }
        #expect(internet.count("udp/7") == 10)
        let outer = try network.hostRuleset()
        #expect(outer.contains("ip saddr != \(a.outsideAddress)") && outer.contains("ip saddr != \(b.outsideAddress)"))
    }

    /// Teardown and gc leave nothing: namespace, links, TAP, nft chains and map elements, lease.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func teardownAndGarbageCollectionLeaveNothing() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("gc")
        defer { topology.remove() }
        let network = try topology.network(logger: testLogger)

        func tableExists() -> Bool { (try? network.hostRuleset()) != nil }
        func leftovers(_ attachment: NetworkAttachment) throws -> [String] {
            var found: [String] = []
            if let path = attachment.namespacePath, FileSystem.exists(path.string) { found.append("netns \(path)") }
            if try network.interfaceExists(attachment.hostInterface, in: topology.hostPath) { found.append("link \(attachment.hostInterface)") }
            let rules = tableExists() ? try network.hostRuleset() : ""
            if rules.contains("\"\(attachment.hostInterface)\"") { found.append("map element") }
            if rules.contains("chain \(topology.prefix)\(attachment.index)_") { found.append("chain") }
            if try network.leases.lease(for: attachment.vm) != nil { found.append("lease") }
            return found
        }

        // destroy
        let first = try network.setUp(for: vm("gc-a"), policy: Self.policy)
        #expect(try leftovers(first).count == 5)
        try network.tearDown(vm("gc-a"))
        #expect(try leftovers(first) == [])
        // The last VM's network gone: no table (its drops would outlive every VM), no lease files.
        #expect(!tableExists())
        #expect(!FileSystem.exists(network.configuration.stateDirectory.string))
        try network.tearDown(vm("gc-a"))  // idempotent

        // A VM whose VMM was killed, and a driver restart: a new instance on the same state.
        let killed = try network.setUp(for: vm("gc-killed"), policy: Self.policy)
        let kept = try network.setUp(for: vm("gc-kept"), policy: Self.policy)
        let guest = try FakeGuest(killed)  // holds the TAP open like a VMM would
        _ = guest
        let restarted = try topology.network(logger: testLogger)
        #expect(try restarted.attachment(for: vm("gc-killed")) == killed)
        let report = try restarted.garbageCollect(keeping: [vm("gc-kept")])
        #expect(try report.releasedVMs == [vm("gc-killed")])
        #expect(report.failures.isEmpty, "\(report.failures)")
        #expect(try leftovers(killed) == [])
        #expect(try leftovers(kept).count == 5)

        // Orphans: plumbing whose lease vanished (a crash between steps).
        try network.leases.release(vm("gc-kept"))
        let orphanReport = try restarted.garbageCollect(keeping: [])
        #expect(orphanReport.orphanNamespaces.count == 1 && orphanReport.orphanInterfaces.count == 1 && orphanReport.orphanChains.count == 2)
        #expect(try leftovers(kept) == [])
        #expect(!tableExists() && !FileSystem.exists(network.configuration.stateDirectory.string), "gc leaves no table and no lease files")
    }

    /// A foreign forward chain with policy drop (what Docker or ufw install), forwarding off and a
    /// missing uplink are reported; the foreign table is left alone.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func preflightDetectsWhatBreaksIt() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("pre")
        defer { topology.remove() }
        #expect(try topology.network(logger: testLogger).preflight().problems == [])
        try runCommand(["nft", "add table ip filter; add chain ip filter FORWARD { type filter hook forward priority 0; policy drop; }"], in: topology.hostPath)
        try NetworkNamespace.writeSysctl("net.ipv4.ip_forward", "0", in: topology.hostPath)
        let report = try topology.network(uplink: "nosuch0", logger: testLogger).preflight()
        #expect(report.problems.contains(.foreignForwardDrop(family: "ip", table: "filter", chain: "FORWARD")))
        #expect(report.problems.contains(.forwardingDisabled(namespace: topology.hostPath)))
        #expect(report.problems.contains(.uplinkMissing(name: "nosuch0", namespace: topology.hostPath)))
        #expect(throws: NetworkError.self) { try report.requireReady() }
        // Setting up a VM does not touch the foreign table.
        let network = try topology.network(logger: testLogger)
        _ = try network.setUp(for: vm("pre-a"), policy: .denyAll)
        try network.tearDown(vm("pre-a"))
        #expect(try runCommand(["nft", "list", "table", "ip", "filter"], in: topology.hostPath).contains("policy drop"))
    }

    /// A legacy iptables FORWARD policy DROP (Docker or ufw on iptables-legacy) drops real VM
    /// packets and is reported with a fix; running the fix it names lets them through while our
    /// allowlist still filters. With Docker's DOCKER-USER chain the fix goes there, and the check
    /// follows FORWARD's jump to see it. Needs iptables-legacy (scripts/test.sh installs iptables).
    @Test(
        .enabled(if: HostPrerequisite.runnable(canRunNetwork && NetworkTools.locate("iptables-legacy") != nil)),
        arguments: [false, true])
    func legacyForwardDropIsReportedAndFixable(dockerUser: Bool) throws {
        try requireNetwork()
        try HostPrerequisite.require(NetworkTools.locate("iptables-legacy") != nil, "iptables-legacy (apt-get install -y iptables)")
        let topology = try NetworkTestbed("legacy")
        defer { topology.remove() }
        let internet = try EchoServer(namespace: topology.internetPath, ports: [Self.echoPort, Self.closedPort])
        defer { internet.shutdown() }
        let network = try topology.network(logger: testLogger)
        // Nothing loaded: nothing reported, and the check does not load a table itself.
        #expect(network.preflight().problems.isEmpty)
        #expect(try runCommand(["cat", "/proc/net/ip_tables_names"], in: topology.hostPath).isEmpty)

        try runCommand(["iptables-legacy", "-w", "5", "-P", "FORWARD", "DROP"], in: topology.hostPath)
        if dockerUser {
            try runCommand(["iptables-legacy", "-w", "5", "-N", "DOCKER-USER"], in: topology.hostPath)
            try runCommand(["iptables-legacy", "-w", "5", "-A", "DOCKER-USER", "-j", "RETURN"], in: topology.hostPath)
            try runCommand(["iptables-legacy", "-w", "5", "-A", "FORWARD", "-j", "DOCKER-USER"], in: topology.hostPath)
        }
        let report = network.preflight()
        let finding = try #require(report.problems.first { if case .legacyForwardDrop = $0 { true } else { false } })
        guard case .legacyForwardDrop(let tool, let policyDrop, _, let fix) = finding else { return }
        #expect(tool == "iptables-legacy" && policyDrop)
        let chain = dockerUser ? "DOCKER-USER" : "FORWARD"
        #expect(fix.hasPrefix("ip netns exec \(topology.hostName) iptables-legacy -I \(chain) 1 -i \(topology.prefix)+ -j ACCEPT"), "\(fix)")

        let attachment = try network.setUp(for: vm("legacy-a"), policy: Self.policy)
        defer { _ = try? network.tearDown(vm("legacy-a")) }
        let guest = try FakeGuest(attachment)
        try guest.resolveGateway()
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [1], within: 300) == nil)
        #expect(internet.count("udp/7") == 0)

        // The fix, as printed (without the `ip netns exec` part: this thread enters the namespace).
        for command in fix.split(separator: " && ") {
            let words = command.split(separator: " ").map(String.init)
            try runCommand(Array(words.drop { $0 != "iptables-legacy" }), in: topology.hostPath)
        }
        #expect(network.preflight().problems.isEmpty, "\(network.preflight().problems)")
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [2]) == [2])
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.closedPort, payload: [3], within: 200) == nil)
        #expect(internet.count("udp/7") == 1 && internet.count("udp/9") == 0)
    }

    /// With IPv6 configured: the guest's IPv6 reaches exactly the allowed IPv6 destinations
    /// (translated to the VM's unique outside address); other destinations, other ports,
    /// spoofed IPv6 sources and the host's IPv6 addresses get nothing, counted at both ends.
    /// Without it, an IPv6 rule is refused.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func ipv6EgressAllowlist() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("six")
        defer { topology.remove() }
        let internet = try EchoServer(namespace: topology.internetPath, ports: [Self.echoPort, Self.closedPort])
        defer { internet.shutdown() }
        let host = try EchoServer(namespace: topology.hostPath, ports: [Self.echoPort])
        defer { host.shutdown() }
        let policy = EgressPolicy(
            allow: Self.policy.allow + [
                EgressRule(destination: IPNetwork(NetworkTestbed.internetAddress6, prefixLength: 128), transport: .udp, ports: Self.echoPort...Self.echoPort)
            ])
        #expect(throws: NetworkError.self) { try topology.network(logger: testLogger).setUp(for: vm("six-refused"), policy: policy) }
        #expect(try topology.network(logger: testLogger).leases.lease(for: vm("six-refused")) == nil)

        let network = try topology.network(ipv6: true, logger: testLogger)
        #expect(network.preflight().problems.isEmpty, "\(network.preflight().problems)")
        let attachment = try network.setUp(for: vm("six-a"), policy: policy)
        defer { _ = try? network.tearDown(vm("six-a")) }
        let v6 = try #require(attachment.ipv6)
        #expect(v6.guestAddress.description == "fd00:ac10::2" && v6.gatewayAddress.description == "fd00:ac10::1")
        let guest = try FakeGuest(attachment)
        try guest.resolveGateway()

        var answered = 0
        for n in 0..<5 where guest.udp6Exchange(to: NetworkTestbed.internetAddress6, port: Self.echoPort, payload: Array("six \(n)".utf8), within: 1000) == Array("six \(n)".utf8) {
            answered += 1
        }
        #expect(answered == 5)
        // IPv4 still works beside it.
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [4]) == [4])
        for _ in 0..<3 {
            #expect(guest.udp6Exchange(to: NetworkTestbed.internetAddress6, port: Self.closedPort, payload: [1], within: 150) == nil)
            #expect(guest.udp6Exchange(to: NetworkTestbed.otherAddress6, port: Self.echoPort, payload: [2], within: 150) == nil)
            #expect(guest.udp6Exchange(to: NetworkTestbed.internetAddress6, port: Self.echoPort, payload: [3], from: IPv6Address("fd00:ac10::99"), within: 150) == nil)
        }
        for target in [v6.hostAddress, NetworkTestbed.uplinkAddress6, v6.gatewayAddress, v6.outsideAddress] {
            #expect(guest.udp6Exchange(to: target, port: Self.echoPort, payload: [5], within: 150) == nil, "\(target)")
        }
        usleep(100_000)
        #expect(internet.count("udp/7") == 6)
        #expect(internet.count("udp/9") == 0)
        #expect(host.count("udp/7") == 0)
        let inner = try network.namespaceRuleset(of: attachment)
        #expect(counter(inner, comment: "spoofed IPv6 source") == 3, "\(inner)")
        let outer = try network.hostRuleset()
        #expect(outer.contains("ip6 saddr != \(v6.outsideAddress)") && outer.contains("ip6 daddr \(NetworkTestbed.internetAddress6)"), "\(outer)")
        #expect(counter(outer, comment: "not allowed") >= 6, "\(outer)")
    }

    /// A TAP-mode VM restored under a new id takes the allocation its snapshot was taken with
    /// (same TAP name, guest address and MAC), not the lowest free one; while another VM holds
    /// it, the set-up fails with `leaseTaken` and leaves nothing.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func tapModeRestoreKeepsItsAllocation() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("keep")
        defer { topology.remove() }
        let network = try topology.network(logger: testLogger)
        let owner = VMNetworkOwner.fixed(uid: 123, gid: 100)
        let first = try network.setUp(for: vm("keep-a"), policy: Self.policy, mode: .tap, owner: owner)
        let source = try network.setUp(for: vm("keep-b"), policy: Self.policy, mode: .tap, owner: owner)
        try network.tearDown(vm("keep-a"))
        try network.tearDown(vm("keep-b"))
        let restored = try network.setUp(for: vm("keep-restored"), policy: Self.policy, mode: .tap, owner: owner, index: source.index)
        defer { _ = try? network.tearDown(vm("keep-restored")) }
        #expect(restored.index == source.index && restored.index != first.index)
        #expect(restored.tapName == source.tapName && restored.guestAddress == source.guestAddress && restored.guestMAC == source.guestMAC)
        #expect(throws: NetworkError.leaseTaken(index: source.index, holder: "keep-restored", vm: "keep-clone")) {
            try network.setUp(for: vm("keep-clone"), policy: Self.policy, mode: .tap, owner: owner, index: source.index)
        }
        #expect(try network.leases.lease(for: vm("keep-clone")) == nil)
        #expect(try network.interfaceExists(restored.tapName, in: topology.hostPath))
    }

    /// TAP mode (no namespace): per-VM addresses on a host TAP owned by the VM's uid.
    @Test(.enabled(if: HostPrerequisite.runnable(canRunNetwork)))
    func tapModeWithoutNamespace() throws {
        try requireNetwork()
        let topology = try NetworkTestbed("tap")
        defer { topology.remove() }
        let internet = try EchoServer(namespace: topology.internetPath, ports: [Self.echoPort])
        defer { internet.shutdown() }
        let network = try topology.network(ipv6: true, logger: testLogger)
        let policy = EgressPolicy(allow: Self.policy.allow + [
            EgressRule(destination: IPNetwork(NetworkTestbed.internetAddress6, prefixLength: 128), transport: .udp, ports: Self.echoPort...Self.echoPort)
        ])
        let attachment = try network.setUp(for: vm("tap-a"), policy: policy, mode: .tap, owner: .fixed(uid: 123, gid: 100))
        #expect(attachment.namespacePath == nil && attachment.tapName == attachment.hostInterface)
        #expect(attachment.uid == 123)
        #expect(try tapOwner(attachment.tapName, in: topology.hostPath) == owner(123, 100))
        var inHost = NetworkAttachment(
            vm: attachment.vm, index: attachment.index, mode: .tap, namespacePath: FilePath(topology.hostPath),
            tapName: attachment.tapName, hostInterface: attachment.hostInterface, guestAddress: attachment.guestAddress,
            gatewayAddress: attachment.gatewayAddress, prefixLength: 30, guestMAC: attachment.guestMAC,
            hostAddress: attachment.hostAddress, outsideAddress: attachment.outsideAddress, uid: 123, gid: 100,
            guestInterface: "eth0", nameservers: [])
        inHost.ipv6 = attachment.ipv6
        let guest = try FakeGuest(inHost)
        try guest.resolveGateway()
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [9]) == [9])
        #expect(guest.udpExchange(to: NetworkTestbed.otherAddress, port: Self.echoPort, payload: [9], within: 200) == nil)
        #expect(guest.udpExchange(to: NetworkTestbed.internetAddress, port: Self.echoPort, payload: [9], from: IPv4Address(10, 200, 0, 99), within: 200) == nil)
        // IPv6: the guest's own /126 address, allowed destination only, no spoofing.
        let v6 = try #require(attachment.ipv6)
        #expect(v6.guestAddress == v6.outsideAddress && v6.gatewayAddress == v6.hostAddress)
        #expect(guest.udp6Exchange(to: NetworkTestbed.internetAddress6, port: Self.echoPort, payload: [6], within: 1000) == [6])
        #expect(guest.udp6Exchange(to: NetworkTestbed.otherAddress6, port: Self.echoPort, payload: [6], within: 200) == nil)
        #expect(guest.udp6Exchange(to: NetworkTestbed.internetAddress6, port: Self.echoPort, payload: [6], from: v6.hostAddress.adding(2), within: 200) == nil)
        try network.tearDown(vm("tap-a"))
        #expect(try !network.interfaceExists(attachment.tapName, in: topology.hostPath))
    }
}
