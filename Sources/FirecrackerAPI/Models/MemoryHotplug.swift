/// The hot-pluggable memory region, a virtio-mem device (`PUT /hotplug/memory`, pre-boot only,
/// Firecracker 1.14+). Memory is then plugged and unplugged with ``MemoryHotplugSizeUpdate``.
///
/// The spec marks every field optional, but Firecracker refuses a body without
/// `total_size_mib`, so the initializer asks for it (the property stays optional so that the
/// spec's shapes still decode).
public struct MemoryHotplugConfig: Codable, Sendable, Hashable {
    /// The most memory that can ever be plugged; a multiple of `slotSizeMiB`.
    public var totalSizeMiB: Int?
    /// Host-side granularity; at least 128 (the default).
    public var slotSizeMiB: Int?
    /// Guest-side granularity; at least 2 (the default).
    public var blockSizeMiB: Int?

    public init(totalSizeMiB: Int, slotSizeMiB: Int? = nil, blockSizeMiB: Int? = nil) {
        self.totalSizeMiB = totalSizeMiB
        self.slotSizeMiB = slotSizeMiB
        self.blockSizeMiB = blockSizeMiB
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
    public var requestedSizeMiB: Int?

    public init(requestedSizeMiB: Int) {
        self.requestedSizeMiB = requestedSizeMiB
    }

    enum CodingKeys: String, CodingKey {
        case requestedSizeMiB = "requested_size_mib"
    }
}

/// What `GET /hotplug/memory` answers (Firecracker 1.14+).
public struct MemoryHotplugStatus: Codable, Sendable, Hashable {
    public var totalSizeMiB: Int?
    public var slotSizeMiB: Int?
    public var blockSizeMiB: Int?
    /// How much the guest has plugged so far.
    public var pluggedSizeMiB: Int?
    /// The target of the last update.
    public var requestedSizeMiB: Int?

    public init(
        totalSizeMiB: Int? = nil, slotSizeMiB: Int? = nil, blockSizeMiB: Int? = nil,
        pluggedSizeMiB: Int? = nil, requestedSizeMiB: Int? = nil
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
