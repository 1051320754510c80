/// The hot-pluggable memory region, a virtio-mem device (`PUT /hotplug/memory`, pre-boot only,
/// Firecracker 1.14+). Memory is then plugged and unplugged with ``MemoryHotplugSizeUpdate``.
///
/// The spec marks every field optional, but Firecracker refuses a body without
/// `total_size_mib`, so the initializer asks for it (the property stays optional so that the
/// spec's shapes still decode). Sizes are Firecracker's usize (`UInt64` here); the spec's
/// minimums (slot 128, block 2) are checked before sending.
public struct MemoryHotplugConfig: Codable, Sendable, Hashable, LocallyValidated {
    /// The most memory that can ever be plugged; a multiple of `slotSizeMiB`.
    public var totalSizeMiB: UInt64?
    /// Host-side granularity; at least 128 (the default).
    public var slotSizeMiB: UInt64?
    /// Guest-side granularity; at least 2 (the default).
    public var blockSizeMiB: UInt64?

    public init(totalSizeMiB: UInt64, slotSizeMiB: UInt64? = nil, blockSizeMiB: UInt64? = nil) {
        self.totalSizeMiB = totalSizeMiB
        self.slotSizeMiB = slotSizeMiB
        self.blockSizeMiB = blockSizeMiB
    }

    public func validate() throws(FirecrackerAPIError) {
        try Check.atLeast(slotSizeMiB, 128, field: "slot_size_mib", in: "MemoryHotplugConfig")
        try Check.atLeast(blockSizeMiB, 2, field: "block_size_mib", in: "MemoryHotplugConfig")
    }

    enum CodingKeys: String, CodingKey {
        case totalSizeMiB = "total_size_mib"
        case slotSizeMiB = "slot_size_mib"
        case blockSizeMiB = "block_size_mib"
    }
}

/// A new target for the plugged memory (`PATCH /hotplug/memory`, Firecracker 1.14+). The guest
/// driver plugs or unplugs towards it; follow progress with `GET /hotplug/memory`.
///
/// Optional in the spec, but Firecracker requires `requested_size_mib`; hence the initializer.
public struct MemoryHotplugSizeUpdate: Codable, Sendable, Hashable {
    public var requestedSizeMiB: UInt64?

    public init(requestedSizeMiB: UInt64) {
        self.requestedSizeMiB = requestedSizeMiB
    }

    enum CodingKeys: String, CodingKey {
        case requestedSizeMiB = "requested_size_mib"
    }
}

/// What `GET /hotplug/memory` answers (Firecracker 1.14+).
public struct MemoryHotplugStatus: Codable, Sendable, Hashable {
    public var totalSizeMiB: UInt64?
    public var slotSizeMiB: UInt64?
    public var blockSizeMiB: UInt64?
    /// How much the guest has plugged so far.
    public var pluggedSizeMiB: UInt64?
    /// The target of the last update.
    public var requestedSizeMiB: UInt64?

    public init(
        totalSizeMiB: UInt64? = nil, slotSizeMiB: UInt64? = nil, blockSizeMiB: UInt64? = nil,
        pluggedSizeMiB: UInt64? = nil, requestedSizeMiB: UInt64? = nil
    ) {
        self.totalSizeMiB = totalSizeMiB
        self.slotSizeMiB = slotSizeMiB
        self.blockSizeMiB = blockSizeMiB
        self.pluggedSizeMiB = pluggedSizeMiB
        self.requestedSizeMiB = requestedSizeMiB
    }

    enum CodingKeys: String, CodingKey {
        case totalSizeMiB = "total_size_mib"
        case slotSizeMiB = "slot_size_mib"
        case blockSizeMiB = "block_size_mib"
        case pluggedSizeMiB = "plugged_size_mib"
        case requestedSizeMiB = "requested_size_mib"
    }
}
