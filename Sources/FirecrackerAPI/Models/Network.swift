/// A virtio-net device backed by a host TAP device (`PUT /network-interfaces/{iface_id}`,
/// pre-boot only; the id in the URL is `ifaceId`).
public struct NetworkInterface: Codable, Sendable, Hashable, VersionGated, LocallyValidated {
    /// The guest's MAC address (`xx:xx:xx:xx:xx:xx`); Firecracker picks none if unset.
    public var guestMac: String?
    /// Name of the TAP device on the host (in the VMM's network namespace).
    public var hostDevName: String
    /// Also the path id: only letters, digits and `_`.
    public var ifaceId: String
    /// MTU advertised to the guest (VIRTIO_NET_F_MTU), 68...65535. Firecracker 1.16+.
    public var mtu: Int?
    public var rxRateLimiter: RateLimiter?
    public var txRateLimiter: RateLimiter?

    public init(
        ifaceId: String, hostDevName: String, guestMac: String? = nil, mtu: Int? = nil,
        rxRateLimiter: RateLimiter? = nil, txRateLimiter: RateLimiter? = nil
    ) {
        self.ifaceId = ifaceId
        self.hostDevName = hostDevName
        self.guestMac = guestMac
        self.mtu = mtu
        self.rxRateLimiter = rxRateLimiter
        self.txRateLimiter = txRateLimiter
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(mtu == nil ? nil : FieldVersions.networkInterfaceMTU)
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.range(mtu, 68...65535, field: "mtu", in: "NetworkInterface")
    }

    enum CodingKeys: String, CodingKey {
        case guestMac = "guest_mac"
        case hostDevName = "host_dev_name"
        case ifaceId = "iface_id"
        case mtu
        case rxRateLimiter = "rx_rate_limiter"
        case txRateLimiter = "tx_rate_limiter"
    }
}

/// A post-boot network update (`PATCH /network-interfaces/{iface_id}`): only the rate limiters
/// can change.
public struct PartialNetworkInterface: Codable, Sendable, Hashable {
    public var ifaceId: String
    public var rxRateLimiter: RateLimiter?
    public var txRateLimiter: RateLimiter?

    public init(ifaceId: String, rxRateLimiter: RateLimiter? = nil, txRateLimiter: RateLimiter? = nil) {
        self.ifaceId = ifaceId
        self.rxRateLimiter = rxRateLimiter
        self.txRateLimiter = txRateLimiter
    }

    enum CodingKeys: String, CodingKey {
        case ifaceId = "iface_id"
        case rxRateLimiter = "rx_rate_limiter"
        case txRateLimiter = "tx_rate_limiter"
    }
}

/// A vsock device (`PUT /vsock`, pre-boot only). The host side is a Unix socket at `udsPath`:
/// connect to it and send `CONNECT <port>\n` to reach a guest port; the guest's connections to
/// host port P arrive on `<udsPath>_P`, where the host must listen.
///
/// The context id has Firecracker's type (u32); a value below 3 (reserved) is refused before
/// sending, and so is an `Int` that `UInt32` cannot hold.
public struct Vsock: Codable, Sendable, Hashable, LocallyValidated {
    /// The guest's context id; 0-2 are reserved, so at least 3.
    public var guestCid: UInt32 {
        didSet { unrepresentable = [] }
    }
    public var udsPath: String
    /// Deprecated by Firecracker and ignored; kept only so old configurations still encode.
    /// Firecracker answers a request that sets it with `Deprecation: true`.
    public var vsockId: String?
    var unrepresentable: [UnrepresentableInteger] = []

    public init(guestCid: UInt32, udsPath: String, vsockId: String? = nil) {
        self.guestCid = guestCid
        self.udsPath = udsPath
        self.vsockId = vsockId
    }

    /// From an `Int` (integer literals pick this one); a value outside `UInt32` is refused by
    /// ``validate()``.
    public init(guestCid: Int, udsPath: String, vsockId: String? = nil) {
        var problems: [UnrepresentableInteger] = []
        self.init(guestCid: .wire(guestCid, field: "guest_cid", into: &problems), udsPath: udsPath, vsockId: vsockId)
        unrepresentable = problems
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.representable(unrepresentable, in: "Vsock")
        try Check.atLeast(
            guestCid, 3, field: "guest_cid", in: "Vsock", hint: "context ids 0-2 are reserved; use 3 or more")
    }

    enum CodingKeys: String, CodingKey {
        case guestCid = "guest_cid"
        case udsPath = "uds_path"
        case vsockId = "vsock_id"
    }
}

/// A virtio-rng device (`PUT /entropy`, pre-boot only) feeding the guest from the host's RNG.
public struct EntropyDevice: Codable, Sendable, Hashable {
    public var rateLimiter: RateLimiter?

    public init(rateLimiter: RateLimiter? = nil) {
        self.rateLimiter = rateLimiter
    }

    enum CodingKeys: String, CodingKey {
        case rateLimiter = "rate_limiter"
    }
}

/// Where the serial console goes (`PUT /serial`, Firecracker 1.14+). Without it, the guest's
/// serial output goes to Firecracker's stdout.
public struct SerialDevice: Codable, Sendable, Hashable, VersionGated {
    /// A file or named pipe that receives the guest's serial output.
    public var serialOutPath: String?
    /// Drops console output beyond this rate (counted in metrics). Firecracker 1.16+.
    public var rateLimiter: TokenBucket?

    public init(serialOutPath: String? = nil, rateLimiter: TokenBucket? = nil) {
        self.serialOutPath = serialOutPath
        self.rateLimiter = rateLimiter
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(rateLimiter == nil ? nil : FieldVersions.serialRateLimiter)
    }

    enum CodingKeys: String, CodingKey {
        case serialOutPath = "serial_out_path"
        case rateLimiter = "rate_limiter"
    }
}
