/// An IPv4 address, kept as a host-order integer so subnets can be computed.
public struct IPv4Address: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        value = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad notation (`10.0.0.1`); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var result: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy(\.isASCII), let byte = UInt8(part) else { return nil }
            result = result << 8 | UInt32(byte)
        }
        value = result
    }

    public var bytes: [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32(24 - 8 * $0)) } }
    public var description: String { bytes.map(String.init).joined(separator: ".") }
    public static func < (lhs: IPv4Address, rhs: IPv4Address) -> Bool { lhs.value < rhs.value }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let address = IPv4Address(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\(text) is not an IPv4 address")
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4` = /32).
/// IPv6 text is checked loosely (hex digits, colons, at most one `::`) and handed to nft as is.
public struct IPNetwork: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Family: String, Sendable, Hashable, Codable { case ipv4, ipv6 }

    public let family: Family
    /// The address part as written (normalized for IPv4: host bits cleared).
    public let address: String
    public let prefixLength: Int

    public init(_ text: String) throws(NetworkError) {
        let pieces = text.split(separator: "/", omittingEmptySubsequences: false)
        guard pieces.count <= 2, let first = pieces.first else { throw Self.invalid(text) }
        let addressText = String(first)
        if let v4 = IPv4Address(addressText) {
            let length = pieces.count == 2 ? Int(pieces[1]) : 32
            guard let length, (0...32).contains(length) else { throw Self.invalid(text) }
            let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << UInt32(32 - length)
            family = .ipv4
            address = IPv4Address(v4.value & mask).description
            prefixLength = length
        } else {
            let allowed = addressText.unicodeScalars.allSatisfy { $0.properties.isASCIIHexDigit || $0 == ":" || $0 == "." }
            let doubleColons = addressText.ranges(of: "::").count
            guard addressText.contains(":"), allowed, doubleColons <= 1, addressText.count <= 45 else { throw Self.invalid(text) }
            let length = pieces.count == 2 ? Int(pieces[1]) : 128
            guard let length, (0...128).contains(length) else { throw Self.invalid(text) }
            family = .ipv6
            address = addressText.lowercased()
            prefixLength = length
        }
    }

    public init(_ address: IPv4Address, prefixLength: Int) {
        precondition((0...32).contains(prefixLength))
        let mask: UInt32 = prefixLength == 0 ? 0 : ~UInt32(0) << UInt32(32 - prefixLength)
        family = .ipv4
        self.address = IPv4Address(address.value & mask).description
        self.prefixLength = prefixLength
    }

    public var description: String { "\(address)/\(prefixLength)" }

    /// For IPv4 networks: the first address and the number of addresses.
    public var ipv4Range: (first: IPv4Address, count: UInt64)? {
        guard family == .ipv4, let first = IPv4Address(address) else { return nil }
        return (first, UInt64(1) << UInt64(32 - prefixLength))
    }

    public func contains(_ candidate: IPv4Address) -> Bool {
        guard let (first, count) = ipv4Range else { return false }
        return candidate.value >= first.value && UInt64(candidate.value - first.value) < count
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        do {
            try self.init(text)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }

    private static func invalid(_ text: String) -> NetworkError {
        .invalidSetting(
            name: "CIDR", value: text, reason: "not an IPv4 or IPv6 address or network",
            fix: "write an address with an optional prefix length, e.g. 203.0.113.0/24, 8.8.8.8 or 2001:db8::/32")
    }
}

/// A MAC address.
public struct MACAddress: Sendable, Hashable, Codable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(_ bytes: [UInt8]) {
        precondition(bytes.count == 6)
        self.bytes = bytes
    }

    /// The convention of Firecracker's examples: `06:00` (locally administered, unicast) followed
    /// by the four bytes of the guest's IPv4 address, so the MAC follows from the address.
    public init(derivedFrom address: IPv4Address) {
        self.init([0x06, 0x00] + address.bytes)
    }

    public var description: String {
        bytes.map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }
}
