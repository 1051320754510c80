/// A block device (`PUT /drives/{drive_id}`, pre-boot only; the id in the URL is `driveId`).
///
/// One type covers both backends the spec folds together: a virtio-block drive sets
/// `pathOnHost` and `isReadOnly`; a vhost-user-block drive sets only `socket`. Firecracker
/// rejects a mix, so set one group or the other.
public struct Drive: Codable, Sendable, Hashable {
    /// Host-side caching; `unsafe` (the default) ignores guest flushes.
    public enum CacheType: String, Codable, Sendable, CaseIterable {
        case unsafe = "Unsafe"
        case writeback = "Writeback"
    }

    /// How the VMM performs the I/O. `async` (io_uring) needs a host kernel newer than 5.10.51.
    public enum IOEngine: String, Codable, Sendable, CaseIterable {
        case sync = "Sync"
        case async = "Async"
    }

    /// Also the path id: only letters, digits and `_`.
    public var driveId: String
    /// Boot partition's PARTUUID, used for `root=` only when `isRootDevice` is true.
    public var partuuid: String?
    public var isRootDevice: Bool
    public var cacheType: CacheType?
    /// virtio-block only (required there).
    public var isReadOnly: Bool?
    /// virtio-block only (required there): the image as the VMM sees it.
    public var pathOnHost: String?
    /// virtio-block only.
    public var rateLimiter: RateLimiter?
    /// virtio-block only.
    public var ioEngine: IOEngine?
    /// vhost-user-block only: the backend's socket.
    public var socket: String?

    public init(
        driveId: String, isRootDevice: Bool, pathOnHost: String? = nil, isReadOnly: Bool? = nil,
        partuuid: String? = nil, cacheType: CacheType? = nil, rateLimiter: RateLimiter? = nil,
        ioEngine: IOEngine? = nil, socket: String? = nil
    ) {
        self.driveId = driveId
        self.isRootDevice = isRootDevice
        self.pathOnHost = pathOnHost
        self.isReadOnly = isReadOnly
        self.partuuid = partuuid
        self.cacheType = cacheType
        self.rateLimiter = rateLimiter
        self.ioEngine = ioEngine
        self.socket = socket
    }

    enum CodingKeys: String, CodingKey {
        case driveId = "drive_id"
        case partuuid
        case isRootDevice = "is_root_device"
        case cacheType = "cache_type"
        case isReadOnly = "is_read_only"
        case pathOnHost = "path_on_host"
        case rateLimiter = "rate_limiter"
        case ioEngine = "io_engine"
        case socket
    }
}

/// A post-boot drive update (`PATCH /drives/{drive_id}`): swap the backing file (for example
/// after the guest unmounted it) or change the rate limiter.
public struct PartialDrive: Codable, Sendable, Hashable {
    public var driveId: String
    public var pathOnHost: String?
    public var rateLimiter: RateLimiter?

    public init(driveId: String, pathOnHost: String? = nil, rateLimiter: RateLimiter? = nil) {
        self.driveId = driveId
        self.pathOnHost = pathOnHost
        self.rateLimiter = rateLimiter
    }

    enum CodingKeys: String, CodingKey {
        case driveId = "drive_id"
        case pathOnHost = "path_on_host"
        case rateLimiter = "rate_limiter"
    }
}

/// A virtio-pmem device (`PUT /pmem/{id}`, pre-boot only, Firecracker 1.14+): a host file mapped
/// into the guest as persistent memory.
public struct Pmem: Codable, Sendable, Hashable, VersionGated {
    /// Also the path id: only letters, digits and `_`.
    public var id: String
    public var pathOnHost: String
    /// Boot from this device; fails if another root device is configured.
    public var rootDevice: Bool?
    public var readOnly: Bool?
    /// Limits the guest's FLUSH requests. Firecracker 1.16+.
    public var rateLimiter: RateLimiter?

    public init(
        id: String, pathOnHost: String, rootDevice: Bool? = nil, readOnly: Bool? = nil,
        rateLimiter: RateLimiter? = nil
    ) {
        self.id = id
        self.pathOnHost = pathOnHost
        self.rootDevice = rootDevice
        self.readOnly = readOnly
        self.rateLimiter = rateLimiter
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(
            rateLimiter == nil ? nil : FieldVersions.pmemRateLimiter)
    }

    enum CodingKeys: String, CodingKey {
        case id
        case pathOnHost = "path_on_host"
        case rootDevice = "root_device"
        case readOnly = "read_only"
        case rateLimiter = "rate_limiter"
    }
}

/// A post-boot pmem update (`PATCH /pmem/{id}`, Firecracker 1.16+): only the rate limiter can
/// change.
public struct PartialPmem: Codable, Sendable, Hashable {
    public var id: String
    public var rateLimiter: RateLimiter?

    public init(id: String, rateLimiter: RateLimiter? = nil) {
        self.id = id
        self.rateLimiter = rateLimiter
    }

    enum CodingKeys: String, CodingKey {
        case id
        case rateLimiter = "rate_limiter"
    }
}
