/// What a VM may reach. Everything not listed is dropped: other destinations, traffic to the
/// host, traffic to other VMs, connections from outside into the VM, and IPv6 unless an IPv6
/// destination is listed (which needs `VMNetworkConfiguration.ipv6`: guests have no IPv6 otherwise).
public struct EgressPolicy: Sendable, Hashable, Codable {
    /// Destinations beyond the host (through the uplink, masqueraded).
    public var allow: [EgressRule]
    /// Services on the host itself the VM may reach (any of the host's addresses), e.g. a DNS
    /// resolver: `EgressRule(destination: "0.0.0.0/0", transport: .udp, ports: 53...53)`.
    public var allowHost: [EgressRule]

    public init(allow: [EgressRule] = [], allowHost: [EgressRule] = []) {
        self.allow = allow
        self.allowHost = allowHost
    }

    /// Nothing at all.
    public static let denyAll = EgressPolicy()

    /// Every IPv4 destination beyond the host (still no host, no other VM, no IPv6, no spoofing).
    /// Add `EgressRule(destination: IPNetwork("::/0"))` for every IPv6 destination too.
    public static let internet = EgressPolicy(allow: [EgressRule(destination: IPNetwork(IPv4Address(0), prefixLength: 0))])

    /// Refuses rules the firewall cannot enforce.
    public func validate() throws(NetworkError) {
        for rule in allow + allowHost {
            if let ports = rule.ports {
                guard rule.transport == .tcp || rule.transport == .udp else {
                    throw .invalidSetting(
                        name: "egress rule", value: rule.description, reason: "ports need transport tcp or udp",
                        fix: "set transport to .tcp or .udp, or drop the port range")
                }
                guard ports.lowerBound > 0 else {
                    throw .invalidSetting(
                        name: "egress rule", value: rule.description, reason: "port 0 is not a port",
                        fix: "use ports in 1...65535")
                }
            }
        }
    }
}

/// One allowed destination: a network, a transport and optionally a port range.
public struct EgressRule: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Transport: String, Sendable, Hashable, Codable {
        case any, tcp, udp, icmp
    }

    public var destination: IPNetwork
    public var transport: Transport
    public var ports: ClosedRange<UInt16>?

    public init(destination: IPNetwork, transport: Transport = .any, ports: ClosedRange<UInt16>? = nil) {
        self.destination = destination
        self.transport = transport
        self.ports = ports
    }

    public var description: String {
        var text = "\(destination) \(transport.rawValue)"
        if let ports { text += ports.count == 1 ? " \(ports.lowerBound)" : " \(ports.lowerBound)-\(ports.upperBound)" }
        return text
    }

    /// The nft match for this rule, without verdict; `matchDestination` false for host rules,
    /// which apply to any of the host's addresses unless the destination is narrower than /0.
    func nftMatch() -> String {
        var parts: [String] = []
        let v6 = destination.family == .ipv6
        if destination.prefixLength > 0 {
            parts.append("\(v6 ? "ip6" : "ip") daddr \(destination)")
        } else {
            parts.append("meta nfproto \(v6 ? "ipv6" : "ipv4")")
        }
        switch transport {
        case .any: break
        case .icmp: parts.append(v6 ? "meta l4proto ipv6-icmp" : "meta l4proto icmp")
        case .tcp, .udp:
            if let ports {
                parts.append("\(transport.rawValue) dport \(ports.count == 1 ? "\(ports.lowerBound)" : "\(ports.lowerBound)-\(ports.upperBound)")")
            } else {
                parts.append("meta l4proto \(transport.rawValue)")
            }
        }
        return parts.joined(separator: " ")
    }
}
