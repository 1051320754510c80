#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
public import Logging
import SystemPackage

/// Per-VM networks with real isolation: a network namespace per VM (or a plain TAP), collision-
/// free addresses from persisted leases, and one nftables table (family inet) that really
/// filters, changed only in atomic `nft` transactions.
///
/// Topology of VM i in namespace mode (`P` = name prefix, `/30` i-th of the pool):
///
///     host namespace                      VM namespace P<i>                guest
///     [uplink] <- masquerade - [P<i>] === veth === [veth0] -SNAT- [tap0] --- eth0
///                               .1/30               .2/30         172.16.0.1  172.16.0.2
///
/// Every call blocks (it runs `ip`/`nft`, moves the calling thread between namespaces and takes
/// file locks): call it from a thread pool, never from an event loop. Threads of one process may
/// call it concurrently.
public final class VMNetwork: Sendable {
    /// Where `ip netns` keeps namespace files (iproute2's compile-time default).
    public static let namespaceDirectory = "/var/run/netns"
    static let innerVeth = "veth0"

    public let configuration: VMNetworkConfiguration
    public let leases: NetworkLeaseStore
    let tools: NetworkTools
    let logger: Logger

    public init(configuration: VMNetworkConfiguration, logger: Logger) throws(NetworkError) {
        try configuration.validate()
        self.configuration = configuration
        self.tools = try NetworkTools.find()
        self.leases = NetworkLeaseStore(
            directory: configuration.stateDirectory, capacity: configuration.capacity,
            uidBase: configuration.uidRange.lowerBound)
        self.logger = logger
    }

    var hostNamespace: String? { configuration.hostNamespace?.string }
    var table: String { "inet \(configuration.tableName)" }
    var wildcard: String { "\"\(configuration.namePrefix)*\"" }

    // MARK: Set-up

    /// Creates (or recreates) the VM's network and returns what its launch needs. The VM's
    /// firewall rules are in place before its link exists (fail closed). On failure everything
    /// made so far is removed again, the lease included if this call made it. `index` takes
    /// that allocation instead of the lowest free one (a TAP-mode guest restored from a snapshot
    /// keeps its addresses); it fails with `leaseTaken` while another VM holds it.
    public func setUp(
        for vm: VMIdentifier, policy: EgressPolicy, mode: NetworkLease.Mode = .namespace, owner: VMNetworkOwner = .leased,
        index: Int? = nil
    ) throws(NetworkError) -> NetworkAttachment {
        try policy.validate()
        if configuration.ipv6 == nil, let rule = (policy.allow + policy.allowHost).first(where: { $0.destination.family == .ipv6 }) {
            throw .invalidSetting(
                name: "egress rule", value: rule.description,
                reason: "this host's VM networks have no IPv6 (VMNetworkConfiguration.ipv6 is nil), so all IPv6 from guests is dropped",
                fix: "set VMNetworkConfiguration.ipv6 to give guests IPv6 addresses, or remove the IPv6 rules")
        }
        var fixed: (uid: UInt32, gid: UInt32)?
        if case .fixed(let uid, let gid) = owner { fixed = (uid, gid) }
        let (lease, created) = try leases.acquire(for: vm, mode: mode, owner: fixed, index: index)
        let attachment = attachment(for: lease)
        var log = logger
        log[metadataKey: "vm"] = "\(vm)"
        do {
            // Leftovers of a crash, or of an earlier set-up of this lease.
            try removePlumbing(lease, logger: log)
            try installHostRules(lease, attachment: attachment, policy: policy)
            switch mode {
            case .namespace: try buildNamespace(lease, attachment: attachment)
            case .tap: try buildTap(lease, attachment: attachment)
            }
        } catch {
            log.warning("network set-up failed; removing what was made", metadata: ["error": "\(error.summary)"])
            _ = try? removePlumbing(lease, logger: log)
            _ = try? removeHostRules(lease)
            if created { _ = try? leases.release(vm, whenLast: { removeHostTable(logger: log) }) }
            throw error
        }
        log.debug(
            "network ready",
            metadata: [
                "index": "\(lease.index)", "mode": "\(mode.rawValue)", "host_interface": "\(attachment.hostInterface)",
                "outside_address": "\(attachment.outsideAddress)",
            ])
        return attachment
    }

    /// The attachment of a VM that has a lease (e.g. to restore a snapshot under the same
    /// allocation, or after a driver restart), or nil.
    public func attachment(for vm: VMIdentifier) throws(NetworkError) -> NetworkAttachment? {
        try leases.lease(for: vm).map { attachment(for: $0) }
    }

    func attachment(for lease: NetworkLease) -> NetworkAttachment {
        var attachment = ipv4Attachment(for: lease)
        if let ipv6 = configuration.ipv6, let subnet = configuration.subnet6(lease.index) {
            attachment.ipv6 =
                switch lease.mode {
                case .namespace:
                    IPv6Attachment(
                        guestAddress: ipv6.guestAddress, gatewayAddress: ipv6.gateway, prefixLength: ipv6.prefixLength,
                        hostAddress: subnet.host, outsideAddress: subnet.peer)
                case .tap:
                    IPv6Attachment(
                        guestAddress: subnet.peer, gatewayAddress: subnet.host, prefixLength: 126, hostAddress: subnet.host,
                        outsideAddress: subnet.peer)
                }
        }
        return attachment
    }

    private func ipv4Attachment(for lease: NetworkLease) -> NetworkAttachment {
        let subnet = configuration.subnet(lease.index)
        let guest = configuration.guest
        switch lease.mode {
        case .namespace:
            return NetworkAttachment(
                vm: lease.vm, index: lease.index, mode: .namespace, namespacePath: configuration.namespacePath(lease.index),
                tapName: guest.tapName, hostInterface: configuration.interfaceName(lease.index),
                guestAddress: guest.address, gatewayAddress: guest.gateway, prefixLength: guest.prefixLength,
                guestMAC: MACAddress(derivedFrom: guest.address), hostAddress: subnet.host, outsideAddress: subnet.peer,
                uid: lease.uid, gid: lease.gid, guestInterface: guest.guestInterface, nameservers: guest.nameservers)
        case .tap:
            return NetworkAttachment(
                vm: lease.vm, index: lease.index, mode: .tap, namespacePath: nil,
                tapName: configuration.interfaceName(lease.index), hostInterface: configuration.interfaceName(lease.index),
                guestAddress: subnet.peer, gatewayAddress: subnet.host, prefixLength: 30,
                guestMAC: MACAddress(derivedFrom: subnet.peer), hostAddress: subnet.host, outsideAddress: subnet.peer,
                uid: lease.uid, gid: lease.gid, guestInterface: guest.guestInterface, nameservers: guest.nameservers)
        }
    }

    private func buildNamespace(_ lease: NetworkLease, attachment: NetworkAttachment) throws(NetworkError) {
        let vm = lease.vm.rawValue
        let name = configuration.namespaceName(lease.index)
        let path = configuration.namespacePath(lease.index).string
        let guest = configuration.guest
        try NetworkTools.run(tools.ip, ["netns", "add", name], vm: vm)
        // A fresh namespace forwards nothing and has IPv6 on; set both before any link exists.
        if attachment.ipv6 == nil {
            try NetworkNamespace.writeSysctl("net.ipv6.conf.all.disable_ipv6", "1", in: path)
            try NetworkNamespace.writeSysctl("net.ipv6.conf.default.disable_ipv6", "1", in: path)
        } else {
            // Router, not host: no autoconfiguration from whatever a guest advertises.
            try NetworkNamespace.writeSysctl("net.ipv6.conf.default.accept_ra", "0", in: path)
            try NetworkNamespace.writeSysctl("net.ipv6.conf.default.autoconf", "0", in: path)
            try NetworkNamespace.writeSysctl("net.ipv6.conf.all.forwarding", "1", in: path)
        }
        try NetworkNamespace.writeSysctl("net.ipv4.ip_forward", "1", in: path)
        try NetworkTools.run(tools.nft, [namespaceRules(attachment)], in: path, vm: vm)
        var host = [
            "link add \(attachment.hostInterface) type veth peer name \(Self.innerVeth) netns \(name)",
            "addr add \(attachment.hostAddress)/30 dev \(attachment.hostInterface)",
            "link set \(attachment.hostInterface) up",
        ]
        var inside = [
            "link set lo up",
            "addr add \(attachment.outsideAddress)/30 dev \(Self.innerVeth)",
            "link set \(Self.innerVeth) up",
            "route add default via \(attachment.hostAddress) dev \(Self.innerVeth)",
            "tuntap add dev \(guest.tapName) mode tap user \(lease.uid) group \(lease.gid) vnet_hdr",
            "addr add \(guest.gateway)/\(guest.prefixLength) dev \(guest.tapName)",
            "link set \(guest.tapName) up",
            "neigh replace \(guest.address) lladdr \(attachment.guestMAC) dev \(guest.tapName) nud permanent",
        ]
        if let v6 = attachment.ipv6 {
            // nodad: duplicate address detection would hold each address back for a second or
            // more, and these links have exactly one peer with a leased address.
            host.insert("addr add \(v6.hostAddress)/126 dev \(attachment.hostInterface) nodad", at: 2)
            inside += [
                "addr add \(v6.outsideAddress)/126 dev \(Self.innerVeth) nodad",
                "route add ::/0 via \(v6.hostAddress) dev \(Self.innerVeth)",
                "addr add \(v6.gatewayAddress)/\(v6.prefixLength) dev \(guest.tapName) nodad",
                "neigh replace \(v6.guestAddress) lladdr \(attachment.guestMAC) dev \(guest.tapName) nud permanent",
            ]
        }
        try runBatch(host, in: hostNamespace, lease: lease, label: "host")
        try runBatch(inside, in: path, lease: lease, label: "vm")
    }

    private func buildTap(_ lease: NetworkLease, attachment: NetworkAttachment) throws(NetworkError) {
        let tap = attachment.tapName
        var lines = [
            "tuntap add dev \(tap) mode tap user \(lease.uid) group \(lease.gid) vnet_hdr",
            "addr add \(attachment.hostAddress)/30 dev \(tap)",
            "link set \(tap) up",
            "neigh replace \(attachment.guestAddress) lladdr \(attachment.guestMAC) dev \(tap) nud permanent",
        ]
        if let v6 = attachment.ipv6 {
            lines += [
                "addr add \(v6.hostAddress)/126 dev \(tap) nodad",
                "neigh replace \(v6.guestAddress) lladdr \(attachment.guestMAC) dev \(tap) nud permanent",
            ]
        }
        try runBatch(lines, in: hostNamespace, lease: lease, label: "host")
    }

    /// `ip -batch FILE` inside `namespace`: one process for many link changes.
    private func runBatch(_ lines: [String], in namespace: String?, lease: NetworkLease, label: String) throws(NetworkError) {
        let path = "\(configuration.stateDirectory.string)/batch-\(lease.index)-\(label)"
        do throws(SystemCallError) {
            let fd = try SystemCallError.check("open", path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600) }
            defer { close(fd) }
            let bytes = Array((lines.joined(separator: "\n") + "\n").utf8)
            try SystemCallError.check("write", path) { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
        } catch {
            throw .system(vm: lease.vm.rawValue, error)
        }
        defer { unlink(path) }
        try NetworkTools.run(tools.ip, ["-batch", path], in: namespace, vm: lease.vm.rawValue)
    }

    // MARK: nftables

    /// The library's base chains in the host namespace. Re-stated (flush + add) in every
    /// transaction that touches the table, so the table is whole after any single transaction.
    func hostBaseRules() -> [String] {
        let t = table
        let pool = configuration.addressPool
        var lines = [
            "add table \(t)",
            "add map \(t) vm_out { type ifname : verdict ; }",
            "add map \(t) vm_in { type ifname : verdict ; }",
            "add chain \(t) forward { type filter hook forward priority filter ; policy accept ; }",
            "add chain \(t) input { type filter hook input priority filter ; policy accept ; }",
            "add chain \(t) postrouting { type nat hook postrouting priority srcnat ; policy accept ; }",
            "flush chain \(t) forward",
            "flush chain \(t) input",
            "flush chain \(t) postrouting",
            "add rule \(t) forward ct state established,related accept",
            "add rule \(t) forward iifname \(wildcard) oifname \(wildcard) counter drop comment \"VM to VM\"",
        ]
        if let uplink = configuration.uplink {
            lines.append("add rule \(t) forward iifname \(wildcard) oifname != \"\(uplink)\" counter drop comment \"not the uplink\"")
        }
        if let pool6 = configuration.ipv6?.addressPool {
            lines.append("add rule \(t) forward iifname \(wildcard) ip6 daddr \(pool6) counter drop comment \"VM link addresses (IPv6)\"")
        }
        lines += [
            "add rule \(t) forward iifname \(wildcard) ip daddr \(pool) counter drop comment \"VM link addresses\"",
            "add rule \(t) forward iifname vmap @vm_out",
            "add rule \(t) forward iifname \(wildcard) counter drop comment \"VM without rules\"",
            "add rule \(t) forward oifname \(wildcard) counter drop comment \"into VMs\"",
            "add rule \(t) input iifname \(wildcard) ct state established,related accept",
            // Neighbour discovery is IPv6's ARP: without it no VM link resolves its peer. Hop
            // limit 255 proves it was not routed from elsewhere (RFC 4861).
            "add rule \(t) input iifname \(wildcard) icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept",
            "add rule \(t) input iifname vmap @vm_in",
            "add rule \(t) input iifname \(wildcard) counter drop comment \"VM to host\"",
        ]
        let out = configuration.uplink.map { "oifname \"\($0)\"" } ?? "oifname != \(wildcard)"
        lines.append("add rule \(t) postrouting ip saddr \(pool) \(out) masquerade")
        if let pool6 = configuration.ipv6?.addressPool {
            lines.append("add rule \(t) postrouting ip6 saddr \(pool6) \(out) masquerade")
        }
        return lines
    }

    func vmRules(_ lease: NetworkLease, attachment: NetworkAttachment, policy: EgressPolicy) -> [String] {
        let t = table
        let out = configuration.chainName(lease.index, "out")
        let into = configuration.chainName(lease.index, "in")
        let iface = "\"\(attachment.hostInterface)\""
        var lines = [
            "add chain \(t) \(out)",
            "add chain \(t) \(into)",
            "flush chain \(t) \(out)",
            "flush chain \(t) \(into)",
        ]
        for chain in [out, into] {
            if let v6 = attachment.ipv6 {
                lines.append("add rule \(t) \(chain) ip6 saddr != \(v6.outsideAddress) counter drop comment \"spoofed IPv6 source\"")
            } else {
                lines.append("add rule \(t) \(chain) meta nfproto ipv6 counter drop comment \"IPv6\"")
            }
            lines.append("add rule \(t) \(chain) ip saddr != \(attachment.outsideAddress) counter drop comment \"spoofed source\"")
        }
        for rule in policy.allow { lines.append("add rule \(t) \(out) \(rule.nftMatch()) counter accept") }
        for rule in policy.allowHost { lines.append("add rule \(t) \(into) \(rule.nftMatch()) counter accept") }
        lines.append("add rule \(t) \(out) counter drop comment \"not allowed\"")
        lines.append("add rule \(t) \(into) counter drop comment \"not allowed\"")
        lines.append("add element \(t) vm_out { \(iface) : jump \(out) }")
        lines.append("add element \(t) vm_in { \(iface) : jump \(into) }")
        return lines
    }

    private func installHostRules(_ lease: NetworkLease, attachment: NetworkAttachment, policy: EgressPolicy) throws(NetworkError) {
        let script = (hostBaseRules() + vmRules(lease, attachment: attachment, policy: policy)).joined(separator: "\n")
        try NetworkTools.run(tools.nft, [script], in: hostNamespace, vm: lease.vm.rawValue)
    }

    /// One transaction that removes the VM's map elements and chains, whether or not they exist
    /// (each is added first, which is a no-op for an existing one).
    func removeHostRulesScript(index: Int) -> String {
        let t = table
        let out = configuration.chainName(index, "out")
        let into = configuration.chainName(index, "in")
        let iface = "\"\(configuration.interfaceName(index))\""
        return (hostBaseRules() + [
            "add chain \(t) \(out)",
            "add chain \(t) \(into)",
            "add element \(t) vm_out { \(iface) : jump \(out) }",
            "add element \(t) vm_in { \(iface) : jump \(into) }",
            "delete element \(t) vm_out { \(iface) }",
            "delete element \(t) vm_in { \(iface) }",
            "flush chain \(t) \(out)",
            "flush chain \(t) \(into)",
            "delete chain \(t) \(out)",
            "delete chain \(t) \(into)",
        ]).joined(separator: "\n")
    }

    /// The host's table, once no VM has a network: its rules (drops for every interface
    /// named with the prefix) would otherwise stay on a host with no VM. The next VM's
    /// set-up states it again. A failure is logged; `gc` and the next set-up find the table
    /// whole.
    func removeHostTable(logger: Logger) {
        do {
            try NetworkTools.run(tools.nft, ["delete table \(table)"], in: hostNamespace, vm: nil)
        } catch {
            if case .commandFailed(_, _, _, let message) = error, message.contains("No such file or directory") { return }
            logger.warning("could not remove the host's nftables table", metadata: ["table": "\(table)", "error": "\(error.summary)"])
        }
    }

    private func removeHostRules(_ lease: NetworkLease) throws(NetworkError) {
        try NetworkTools.run(tools.nft, [removeHostRulesScript(index: lease.index)], in: hostNamespace, vm: lease.vm.rawValue)
    }

    /// The VM namespace's own table: guest source checks (IPv6 dropped when the VM has none), the namespace's addresses
    /// closed to the guest, forwarding only between the TAP and the veth, SNAT to the
    /// namespace's outer address (so clones with one guest address differ outside).
    func namespaceRules(_ attachment: NetworkAttachment) -> String {
        let guest = configuration.guest
        let tap = "\"\(guest.tapName)\""
        let veth = "\"\(Self.innerVeth)\""
        // Link-local sources stay allowed: the guest's neighbour discovery uses them, and the
        // kernel never forwards them.
        let ipv6Source =
            attachment.ipv6.map { "iifname \(tap) ip6 saddr != { \($0.guestAddress), fe80::/10 } counter drop comment \"spoofed IPv6 source\"" }
            ?? "iifname \(tap) meta nfproto ipv6 counter drop comment \"IPv6\""
        let neighbourDiscovery =
            attachment.ipv6 == nil ? "" : "iifname \(tap) icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept"
        let ipv6NAT = attachment.ipv6.map { "oifname \(veth) ip6 saddr \($0.guestAddress) snat ip6 to \($0.outsideAddress)" } ?? ""
        return """
            table \(table) {
                chain prerouting {
                    type filter hook prerouting priority raw; policy accept;
                    \(ipv6Source)
                    iifname \(tap) ip saddr != \(guest.address) counter drop comment "spoofed source"
                    iifname \(tap) ether saddr != \(attachment.guestMAC) counter drop comment "spoofed MAC"
                }
                chain input {
                    type filter hook input priority filter; policy accept;
                    \(neighbourDiscovery)
                    iifname \(tap) counter drop comment "namespace addresses"
                }
                chain forward {
                    type filter hook forward priority filter; policy drop;
                    iifname \(tap) oifname \(veth) accept
                    iifname \(veth) oifname \(tap) ct state established,related accept
                    counter drop
                }
                chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    oifname \(veth) ip saddr \(guest.address) snat ip to \(attachment.outsideAddress)
                    \(ipv6NAT)
                }
            }
            """
    }

    // MARK: Teardown

    /// Removes the VM's network: its links first (no traffic once its rules go), then its nft
    /// chains and map elements in one transaction, then its namespace, then its lease. Runs
    /// every step even when one fails and reports all failures. Idempotent: a VM without a
    /// lease has nothing to remove.
    public func tearDown(_ vm: VMIdentifier) throws(NetworkError) {
        guard let lease = try leases.lease(for: vm) else { return }
        var log = logger
        log[metadataKey: "vm"] = "\(vm)"
        var failures: [NetworkError] = []
        do { try removePlumbing(lease, logger: log) } catch { failures.append(error) }
        do { try removeHostRules(lease) } catch { failures.append(error) }
        if failures.isEmpty {
            do { try leases.release(vm, whenLast: { removeHostTable(logger: log) }) } catch { failures.append(error) }
        }
        guard failures.isEmpty else {
            log.warning("network teardown incomplete", metadata: ["failures": "\(failures.map(\.summary))"])
            throw .teardownIncomplete(vm: vm.rawValue, failures: failures)
        }
        log.debug("network removed", metadata: ["index": "\(lease.index)"])
    }

    /// Deletes the host-side interface and the namespace of an index, if they exist.
    private func removePlumbing(_ lease: NetworkLease, logger: Logger) throws(NetworkError) {
        try removePlumbing(index: lease.index, vm: lease.vm.rawValue)
    }

    func removePlumbing(index: Int, vm: String?) throws(NetworkError) {
        let name = configuration.interfaceName(index)
        var failures: [NetworkError] = []
        // Deleting one end of a veth pair deletes both; a TAP is deleted the same way.
        do {
            if try interfaceExists(name, in: hostNamespace) {
                try NetworkTools.run(tools.ip, ["link", "del", "dev", name], in: hostNamespace, vm: vm)
            }
        } catch {
            if case .commandFailed(_, _, _, let message) = error,
                message.contains("Cannot find device") || message.contains("does not exist")
            {
                // Already gone.
            } else {
                failures.append(error)
            }
        }
        let namespacePath = configuration.namespacePath(index).string
        if FileSystem.exists(namespacePath) {
            do {
                try NetworkTools.run(tools.ip, ["netns", "del", configuration.namespaceName(index)], vm: vm)
            } catch {
                failures.append(error)
            }
        }
        if let first = failures.first {
            throw failures.count == 1 ? first : .teardownIncomplete(vm: vm ?? "?", failures: failures)
        }
    }

    /// Whether an interface exists in a namespace (if_nametoindex there; no process).
    func interfaceExists(_ name: String, in namespace: String?) throws(NetworkError) -> Bool {
        try NetworkNamespace.run(in: namespace) { () throws(NetworkError) -> Bool in if_nametoindex(name) != 0 }
    }

    // MARK: Inspection

    /// `nft list table` of the library's table in the host namespace (for logs and reports).
    public func hostRuleset() throws(NetworkError) -> String {
        try NetworkTools.run(tools.nft, ["list", "table", "inet", configuration.tableName], in: hostNamespace)
    }

    /// `nft list table` of the library's table inside a VM's namespace.
    public func namespaceRuleset(of attachment: NetworkAttachment) throws(NetworkError) -> String {
        try NetworkTools.run(tools.nft, ["list", "table", "inet", configuration.tableName], in: attachment.namespacePath?.string)
    }
}
