public import SystemPackage

/// How VM networks are laid out on this host. One value describes a fleet; every per-VM name,
/// subnet, MAC and uid follows from it and the VM's lease index.
public struct VMNetworkConfiguration: Sendable, Hashable {
    /// Where leases live (created 0700 if missing), e.g. `<state root>/.network`.
    public var stateDirectory: FilePath
    /// Starts every interface and namespace name this library creates (`<prefix><index>`), and
    /// names its nft chains; 1-8 lowercase letters. Names this library owns are recognised by
    /// it, so no other interface on the host may start with it.
    public var namePrefix: String
    /// The network namespace that plays the host: it holds the VM links' outer ends, the
    /// library's nft table and the uplink. nil: this process's own namespace.
    public var hostNamespace: FilePath?
    /// The interface VM traffic leaves by (masqueraded). nil: any interface that is not a VM's.
    public var uplink: String?
    /// Per-VM /30 subnets are cut from this IPv4 network (index i gets the i-th /30: .1 the
    /// host's end, .2 the VM namespace's end, or the guest's address without namespaces).
    public var addressPool: IPNetwork
    /// Per-VM uids (and gids, the same number) for jailed VMs, one per lease index.
    public var uidRange: ClosedRange<UInt32>
    /// The nftables table (family inet) the library owns in the host namespace.
    public var tableName: String
    /// What the guest sees in namespace mode; the same for every VM, so snapshot clones need
    /// no change.
    public var guest: GuestAddressing
    /// IPv6 for the guests; nil (the default): guests have none and all IPv6 from them is dropped.
    public var ipv6: IPv6Addressing?

    public init(
        stateDirectory: FilePath,
        namePrefix: String = "mvm",
        hostNamespace: FilePath? = nil,
        uplink: String? = nil,
        addressPool: IPNetwork = IPNetwork(IPv4Address(10, 200, 0, 0), prefixLength: 16),
        uidRange: ClosedRange<UInt32> = 200_000...265_535,
        tableName: String = "microvm",
        guest: GuestAddressing = GuestAddressing(),
        ipv6: IPv6Addressing? = nil
    ) {
        self.stateDirectory = stateDirectory
        self.namePrefix = namePrefix
        self.hostNamespace = hostNamespace
        self.uplink = uplink
        self.addressPool = addressPool
        self.uidRange = uidRange
        self.tableName = tableName
        self.guest = guest
        self.ipv6 = ipv6
    }

    /// How many VMs fit: the smallest of the /30s in the pool, the uid range and 100,000 (names
    /// stay within 15 characters).
    public var capacity: Int {
        let subnets = Int(min((addressPool.ipv4Range?.count ?? 0) / 4, 1 << 20))
        var result = min(subnets, Int(uidRange.upperBound - uidRange.lowerBound) + 1, 100_000)
        if let ipv6, ipv6.addressPool.family == .ipv6 {
            result = min(result, 1 << min(20, max(0, 126 - ipv6.addressPool.prefixLength)))
        }
        return result
    }

    public func validate() throws(NetworkError) {
        let prefixBytes = Array(namePrefix.utf8)
        guard (1...8).contains(prefixBytes.count), prefixBytes.allSatisfy({ $0 >= 0x61 && $0 <= 0x7A }) else {
            throw .invalidSetting(
                name: "namePrefix", value: namePrefix, reason: "must be 1-8 lowercase ASCII letters",
                fix: "use a short prefix such as \"mvm\"")
        }
        guard addressPool.family == .ipv4, addressPool.prefixLength <= 30 else {
            throw .invalidSetting(
                name: "addressPool", value: addressPool.description, reason: "must be an IPv4 network of /30 or wider",
                fix: "use a private range such as 10.200.0.0/16")
        }
        let guestNetwork = IPNetwork(guest.gateway, prefixLength: guest.prefixLength)
        if let (first, count) = addressPool.ipv4Range,
            guestNetwork.contains(first) || addressPool.contains(guest.address)
                || UInt64(first.value) + count > UInt64(UInt32.max) + 1
        {
            throw .invalidSetting(
                name: "addressPool", value: addressPool.description, reason: "overlaps the guest network \(guestNetwork)",
                fix: "pick disjoint ranges, e.g. pool 10.200.0.0/16 and guest 172.16.0.2/30")
        }
        let tableBytes = Array(tableName.utf8)
        guard (1...32).contains(tableBytes.count),
            tableBytes.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F })
        else {
            throw .invalidSetting(
                name: "tableName", value: tableName, reason: "must be 1-32 characters of a-z, 0-9, _",
                fix: "use the default \"microvm\"")
        }
        if let uplink { try Self.validateInterface(uplink, setting: "uplink") }
        try Self.validateInterface(guest.tapName, setting: "guest.tapName")
        guard guest.prefixLength >= 8, guest.prefixLength <= 30,
            IPNetwork(guest.gateway, prefixLength: guest.prefixLength).contains(guest.address),
            guest.gateway != guest.address
        else {
            throw .invalidSetting(
                name: "guest", value: "\(guest.address)/\(guest.prefixLength) via \(guest.gateway)",
                reason: "the gateway and the guest must be two addresses of one subnet of /8 to /30",
                fix: "use the default 172.16.0.2/30 via 172.16.0.1")
        }
        if let ipv6 { try ipv6.validate() }
        guard capacity > 0 else {
            throw .invalidSetting(
                name: "uidRange", value: "\(uidRange)", reason: "leaves no room for a VM", fix: "use e.g. 200000...265535")
        }
    }

    static func validateInterface(_ name: String, setting: String) throws(NetworkError) {
        let bytes = Array(name.utf8)
        guard (1...15).contains(bytes.count), name != ".", name != "..",
            !bytes.contains(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: ":") || $0 <= 0x20 || $0 == UInt8(ascii: "\"") })
        else {
            throw .invalidSetting(
                name: setting, value: name, reason: "not a valid interface name",
                fix: "use 1-15 characters without '/', ':', quotes or spaces")
        }
    }

    // MARK: Derived per index

    func interfaceName(_ index: Int) -> String { "\(namePrefix)\(index)" }
    func namespaceName(_ index: Int) -> String { "\(namePrefix)\(index)" }
    func namespacePath(_ index: Int) -> FilePath { FilePath(VMNetwork.namespaceDirectory + "/" + namespaceName(index)) }
    func chainName(_ index: Int, _ direction: String) -> String { "\(namePrefix)\(index)_\(direction)" }
    func subnet(_ index: Int) -> (host: IPv4Address, peer: IPv4Address) {
        let first = addressPool.ipv4Range!.first.value + UInt32(index) * 4
        return (IPv4Address(first + 1), IPv4Address(first + 2))
    }
    func subnet6(_ index: Int) -> (host: IPv6Address, peer: IPv6Address)? {
        guard let first = ipv6?.addressPool.ipv6Prefix else { return nil }
        let base = first.adding(UInt64(index) * 4)
        return (base.adding(1), base.adding(2))
    }
    func uid(_ index: Int) -> UInt32 { uidRange.lowerBound + UInt32(index) }

    /// The index of a name this library made (`<prefix><digits>`), or nil.
    func index(ofName name: String) -> Int? {
        guard name.hasPrefix(namePrefix) else { return nil }
        let digits = name.dropFirst(namePrefix.count)
        guard !digits.isEmpty, digits.count <= 6, digits.allSatisfy({ $0.isASCII && $0.isNumber }),
            digits == "0" || !digits.hasPrefix("0")
        else { return nil }
        return Int(digits)
    }
}

/// The guest's side of a namespaced VM network: identical for every VM.
public struct GuestAddressing: Sendable, Hashable {
    public var address: IPv4Address
    public var gateway: IPv4Address
    public var prefixLength: Int
    /// The TAP's name inside the VM's namespace (what Firecracker's `host_dev_name` says).
    public var tapName: String
    /// The interface name the guest kernel uses in `ip=`.
    public var guestInterface: String
    /// Resolvers for `ip=` (at most two); empty: none.
    public var nameservers: [IPv4Address]

    public init(
        address: IPv4Address = IPv4Address(172, 16, 0, 2), gateway: IPv4Address = IPv4Address(172, 16, 0, 1),
        prefixLength: Int = 30, tapName: String = "tap0", guestInterface: String = "eth0", nameservers: [IPv4Address] = []
    ) {
        self.address = address
        self.gateway = gateway
        self.prefixLength = prefixLength
        self.tapName = tapName
        self.guestInterface = guestInterface
        self.nameservers = nameservers
    }
}

/// IPv6 for VM networks. Each VM gets a /126 of `addressPool` on its link to the host (::1 the
/// host's end, ::2 the namespace's end, or the guest's own address in TAP mode); in namespace
/// mode the guest has the same `guestAddress` in every VM, translated to the namespace's end on
/// the way out (as for IPv4). The kernel's `ip=` argument carries no IPv6: the guest configures
/// `NetworkAttachment.ipv6` itself (e.g. `ip -6 addr add fd00:ac10::2/126 dev eth0` and a
/// default route via the gateway).
public struct IPv6Addressing: Sendable, Hashable {
    /// A unique local or routed network of /108 or wider (room for 2^18 VMs).
    public var addressPool: IPNetwork
    public var guestAddress: IPv6Address
    public var gateway: IPv6Address
    public var prefixLength: Int

    public init(
        addressPool: IPNetwork = IPNetwork(IPv6Address(high: 0xfd6d_766d_0000_0000, low: 0), prefixLength: 64),
        guestAddress: IPv6Address = IPv6Address(high: 0xfd00_ac10_0000_0000, low: 2),
        gateway: IPv6Address = IPv6Address(high: 0xfd00_ac10_0000_0000, low: 1),
        prefixLength: Int = 126
    ) {
        self.addressPool = addressPool
        self.guestAddress = guestAddress
        self.gateway = gateway
        self.prefixLength = prefixLength
    }

    func validate() throws(NetworkError) {
        guard addressPool.family == .ipv6, addressPool.prefixLength <= 108, let pool = addressPool.ipv6Prefix else {
            throw .invalidSetting(
                name: "ipv6.addressPool", value: addressPool.description, reason: "must be an IPv6 network of /108 or wider",
                fix: "use a unique local /64 such as fd6d:766d::/64")
        }
        guard (64...126).contains(prefixLength), gateway != guestAddress,
            gateway.masked(to: prefixLength) == guestAddress.masked(to: prefixLength)
        else {
            throw .invalidSetting(
                name: "ipv6", value: "\(guestAddress)/\(prefixLength) via \(gateway)",
                reason: "the gateway and the guest must be two addresses of one subnet of /64 to /126",
                fix: "use the default fd00:ac10::2/126 via fd00:ac10::1")
        }
        let shorter = min(addressPool.prefixLength, prefixLength)
        guard guestAddress.masked(to: shorter) != pool.masked(to: shorter) else {
            throw .invalidSetting(
                name: "ipv6.addressPool", value: addressPool.description, reason: "overlaps the guest network \(guestAddress)/\(prefixLength)",
                fix: "pick disjoint ranges, e.g. pool fd6d:766d::/64 and guest fd00:ac10::2/126")
        }
    }
}
