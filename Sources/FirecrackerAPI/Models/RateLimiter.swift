/// A token bucket: `size` tokens refill over `refillTime` milliseconds, plus a one-off burst
/// allowance consumed before refilling begins. Used for bytes (bandwidth) or operations.
/// Numbers are unsigned, as in the spec (minimum 0) and in Firecracker (u64).
public struct TokenBucket: Codable, Sendable, Hashable {
    /// Tokens available once, before the regular refill rate applies.
    public var oneTimeBurst: UInt64?
    /// Milliseconds for an empty bucket to refill completely.
    public var refillTime: UInt64
    /// Capacity of the bucket, in tokens.
    public var size: UInt64

    public init(size: UInt64, refillTime: UInt64, oneTimeBurst: UInt64? = nil) {
        self.size = size
        self.refillTime = refillTime
        self.oneTimeBurst = oneTimeBurst
    }

    enum CodingKeys: String, CodingKey {
        case oneTimeBurst = "one_time_burst"
        case refillTime = "refill_time"
        case size
    }
}

/// Independent bandwidth and operations limits for a device. A missing bucket means that
/// dimension is unlimited.
public struct RateLimiter: Codable, Sendable, Hashable {
    /// Tokens are bytes.
    public var bandwidth: TokenBucket?
    /// Tokens are I/O operations.
    public var ops: TokenBucket?

    public init(bandwidth: TokenBucket? = nil, ops: TokenBucket? = nil) {
        self.bandwidth = bandwidth
        self.ops = ops
    }
}
