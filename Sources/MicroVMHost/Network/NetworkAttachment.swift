public import SystemPackage

/// What a VM's launch needs from its network, from `VMNetwork.setUp`.
///
/// Namespace mode: pass `namespacePath` to the jailer (`--netns`, `JailerConfiguration.networkNamespace`),
/// give Firecracker a NIC with `host_dev_name = tapName` and `guest_mac = guestMAC`, append
/// `bootArgument` to the kernel command line, and run the VMM as `uid:gid` (the TAP's owner).
/// Snapshot clones: the TAP name and guest addresses are the same for every VM, so a restored
/// snapshot needs no change; `network_overrides` may still name `tapName` for its NIC.
public struct NetworkAttachment: Sendable, Hashable {
    public let vm: VMIdentifier
    public let index: Int
    public let mode: NetworkLease.Mode
    /// The VM's network namespace (`/var/run/netns/<prefix><index>`); nil in TAP mode.
    public let namespacePath: FilePath?
    /// The TAP Firecracker opens: fixed (`tap0`) inside the namespace, `<prefix><index>` in TAP mode.
    public let tapName: String
    /// The interface in the host namespace that carries the VM's traffic (veth end or the TAP).
    public let hostInterface: String
    public let guestAddress: IPv4Address
    public let gatewayAddress: IPv4Address
    public let prefixLength: Int
    public let guestMAC: MACAddress
    /// The host's end of the VM's /30.
    public let hostAddress: IPv4Address
    /// The source address the VM's traffic carries in the host namespace (before masquerade):
    /// the namespace's end of the /30, or the guest's own address in TAP mode. Unique per VM,
    /// so clones with one guest address are told apart here.
    public let outsideAddress: IPv4Address
    /// The jailed VMM's user and group; the TAP is owned by them.
    public let uid: UInt32
    public let gid: UInt32
    /// The guest interface name used in `bootArgument`.
    public let guestInterface: String
    public let nameservers: [IPv4Address]
    /// The VM's IPv6 addresses when the host's VM networks have IPv6 (`VMNetworkConfiguration.ipv6`);
    /// the guest configures them itself (`ip=` carries only IPv4).
    public internal(set) var ipv6: IPv6Attachment? = nil

    /// The kernel's `ip=` argument (`ip=<client>::<gateway>:<netmask>::<device>:off[:<dns0>[:<dns1>]]`).
    public var bootArgument: String {
        let mask = IPv4Address(prefixLength == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefixLength))
        var text = "ip=\(guestAddress)::\(gatewayAddress):\(mask)::\(guestInterface):off"
        for server in nameservers.prefix(2) { text += ":\(server)" }
        return text
    }
}

/// A VM's IPv6 side, laid out like its IPv4 side.
public struct IPv6Attachment: Sendable, Hashable {
    public let guestAddress: IPv6Address
    public let gatewayAddress: IPv6Address
    public let prefixLength: Int
    /// The host's end of the VM's /126.
    public let hostAddress: IPv6Address
    /// The source of the VM's traffic in the host namespace (before masquerade): unique per VM.
    public let outsideAddress: IPv6Address
}

/// Whose uid:gid a VM runs as.
public enum VMNetworkOwner: Sendable, Hashable {
    /// A uid (= gid) from the configured range, one per lease: VMs cannot touch each other's files.
    case leased
    /// The same uid:gid for every VM (the jailer's classic setup).
    case fixed(uid: UInt32, gid: UInt32)
}
