/// Everything that can go wrong while allocating, setting up, checking or tearing down a VM's
/// network. Each case carries what it was about and `hint` says what to do.
public enum NetworkError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A configuration value or policy entry is unusable.
    case invalidSetting(name: String, value: String, reason: String, fix: String)
    /// A tool the library runs (`ip`, `nft`) is not installed.
    case toolMissing(tool: String, searched: [String])
    /// A command exited with an error; `message` is its stderr, verbatim.
    case commandFailed(vm: String?, command: String, termination: ProcessTermination, message: String)
    /// A command's output could not be understood.
    case unexpectedOutput(command: String, detail: String)
    /// Every index of the address pool / uid range is leased.
    case poolExhausted(capacity: Int)
    /// `vm` needs lease `index` (a TAP-mode snapshot's guest keeps the address of its lease),
    /// and another VM (`holder`, if readable) holds it, or `vm` holds another.
    case leaseTaken(index: Int, holder: String?, vm: String)
    /// A lease file is damaged.
    case leaseCorrupt(path: String, detail: String)
    /// A system call failed.
    case system(vm: String?, SystemCallError)
    /// The namespace that plays the host (`hostNamespace`) does not exist.
    case hostNamespaceMissing(path: String)
    /// IPv4 forwarding is off in the host namespace: VM traffic would not be routed.
    case forwardingDisabled(namespace: String)
    /// IPv6 forwarding is off in the host namespace while guests are given IPv6.
    case ipv6ForwardingDisabled(namespace: String)
    /// Another table's forward base chain has policy drop (Docker, ufw, firewalld): it drops VM
    /// traffic our accept lets through, because every base chain on the hook must accept.
    case foreignForwardDrop(family: String, table: String, chain: String)
    /// A legacy (xtables) FORWARD chain drops VM traffic (policy DROP, or DROP/REJECT rules for
    /// VM interfaces): Docker or ufw on iptables-legacy. `fix` is the exact command.
    case legacyForwardDrop(tool: String, policyDrop: Bool, rules: [String], fix: String)
    /// Legacy (non-nft) iptables tables exist and cannot be inspected (no iptables-legacy).
    case legacyIptables(tables: [String])
    /// br_netfilter is loaded and passes bridged traffic through iptables/nftables.
    case bridgeNetfilter(detail: String)
    /// The uplink interface for masquerading does not exist in the host namespace.
    case uplinkMissing(name: String, namespace: String)
    /// `/dev/net/tun` is missing.
    case tunUnavailable(String)
    /// Some teardown steps failed; each failure is listed, the other steps ran.
    case teardownIncomplete(vm: String, failures: [NetworkError])
    /// Preflight found problems that make networking unsafe or broken; every one is listed.
    case hostNotReady(problems: [NetworkError])

    public var description: String { "\(summary). Hint: \(hint)" }

    public var summary: String {
        switch self {
        case .invalidSetting(let name, let value, let reason, _):
            "invalid \(name) \(String(reflecting: value)): \(reason)"
        case .toolMissing(let tool, let searched):
            "\(tool) is not installed (looked in \(searched.joined(separator: ", ")))"
        case .commandFailed(let vm, let command, let termination, let message):
            (vm.map { "VM \($0): " } ?? "") + "\(command) failed (\(termination)): \(message.trimmingNetworkWhitespace())"
        case .unexpectedOutput(let command, let detail):
            "could not read the output of \(command): \(detail)"
        case .poolExhausted(let capacity):
            "all \(capacity) network leases are in use"
        case .leaseTaken(let index, let holder, let vm):
            "VM \(vm) needs network lease \(index), which " + (holder.map { "VM \($0) holds" } ?? "is taken")
        case .leaseCorrupt(let path, let detail):
            "network lease \(path) is damaged: \(detail)"
        case .system(let vm, let error):
            (vm.map { "VM \($0): " } ?? "") + error.description
        case .hostNamespaceMissing(let path):
            "the host network namespace \(path) does not exist"
        case .forwardingDisabled(let namespace):
            "IPv4 forwarding is off in \(namespace) (net.ipv4.ip_forward = 0): VM traffic is not routed"
        case .ipv6ForwardingDisabled(let namespace):
            "IPv6 forwarding is off in \(namespace) (net.ipv6.conf.all.forwarding = 0) while VM networks have IPv6: guests' IPv6 traffic is not routed"
        case .foreignForwardDrop(let family, let table, let chain):
            "table \(family) \(table) has a forward chain \(chain) with policy drop: it drops VM traffic that our firewall accepts"
        case .legacyForwardDrop(let tool, let policyDrop, let rules, _):
            "the \(tool) FORWARD chain drops VM traffic ("
                + ((policyDrop ? ["policy DROP"] : []) + rules).joined(separator: "; ")
                + "): legacy rules are invisible to nft and a packet must pass both"
        case .legacyIptables(let tables):
            "legacy iptables tables are loaded (\(tables.joined(separator: ", "))); their rules are invisible to nft and may drop VM traffic"
        case .bridgeNetfilter(let detail):
            "br_netfilter is active: \(detail)"
        case .uplinkMissing(let name, let namespace):
            "uplink interface \(name) does not exist in \(namespace)"
        case .tunUnavailable(let detail):
            "/dev/net/tun is unusable: \(detail)"
        case .teardownIncomplete(let vm, let failures):
            "VM \(vm): network teardown incomplete: " + failures.map(\.summary).joined(separator: "; ")
        case .hostNotReady(let problems):
            "the host is not ready for VM networking: " + problems.map(\.summary).joined(separator: "; ")
        }
    }

    public var hint: String {
        switch self {
        case .invalidSetting(_, _, _, let fix):
            fix
        case .toolMissing(let tool, _):
            tool == "nft"
                ? "install nftables (apt-get install -y nftables; dnf install nftables)"
                : "install iproute2 (apt-get install -y iproute2)"
        case .commandFailed(_, let command, _, let message):
            if message.contains("Operation not permitted") {
                "run as root (CAP_NET_ADMIN and CAP_SYS_ADMIN are needed for namespaces, links and nftables)"
            } else if command.hasPrefix("nft"), message.contains("No such file or directory") {
                "the kernel lacks an nftables module (nf_tables, nft_chain_nat, nft_ct, nft_masq): modprobe it"
            } else {
                "run the command by hand as root to reproduce; its own message is above"
            }
        case .unexpectedOutput:
            "check that iproute2 and nftables are recent enough for JSON output (-j): iproute2 >= 4.13, nftables >= 0.9"
        case .poolExhausted:
            "destroy VMs you no longer need, run gc to release leases of VMs that died, or widen the address pool and uid range"
        case .leaseTaken:
            "a guest restored in TAP mode keeps the address of the lease it was snapshotted with: destroy (or gc) the VM holding it first; to run clones side by side use namespace mode (jailed), where every guest has the same address"
        case .leaseCorrupt:
            "remove the file after making sure its VM is gone, then run gc"
        case .system(_, let error):
            switch error.errno {
            case 1, 13: "run as root (CAP_NET_ADMIN, CAP_SYS_ADMIN)"
            case 2: "the path does not exist; check the state directory and that /var/run/netns is writable"
            default: "see the system error above"
            }
        case .hostNamespaceMissing:
            "create it (ip netns add NAME) or leave hostNamespace nil to use this process's namespace"
        case .forwardingDisabled:
            "enable it: sysctl -w net.ipv4.ip_forward=1 (persist in /etc/sysctl.d/), in the namespace that plays the host"
        case .ipv6ForwardingDisabled:
            "enable it: sysctl -w net.ipv6.conf.all.forwarding=1 (persist in /etc/sysctl.d/; it stops the host's own IPv6 autoconfiguration unless accept_ra=2 on its uplink), or leave VMNetworkConfiguration.ipv6 nil"
        case .foreignForwardDrop(let family, let table, let chain):
            "accept VM traffic in that chain too, e.g. nft insert rule \(family) \(table) \(chain) iifname \"<prefix>*\" accept and oifname \"<prefix>*\" ct state established,related accept (for Docker: iptables -I DOCKER-USER ...); our own per-VM rules still filter it"
        case .legacyForwardDrop(_, _, _, let fix):
            "let VM traffic through it (our nftables rules still filter it): \(fix)"
        case .legacyIptables:
            "install iptables (apt-get install -y iptables) so the check can read them, or inspect them with iptables-legacy-save and make sure the FORWARD chain accepts VM traffic, or migrate to iptables-nft"
        case .bridgeNetfilter:
            "VM links are routed, not bridged, so this matters only if you bridge VM interfaces yourself; unload br_netfilter or set net.bridge.bridge-nf-call-iptables=0 if bridged traffic vanishes"
        case .uplinkMissing:
            "name an existing interface (ip link) as the uplink, or leave it nil to masquerade on every non-VM interface"
        case .tunUnavailable:
            "load the tun module (modprobe tun) and make sure /dev/net/tun is a character device"
        case .teardownIncomplete:
            "fix the listed failures and run the teardown (or gc) again; it is idempotent"
        case .hostNotReady(let problems):
            problems.map(\.hint).joined(separator: "; ")
        }
    }
}

extension String {
    func trimmingNetworkWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
