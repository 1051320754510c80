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

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, `1.2.3.4` = /32),
/// normalized: host bits cleared, IPv6 in RFC 5952 text.
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
            guard let v6 = IPv6Address(addressText) else { throw Self.invalid(text) }
            let length = pieces.count == 2 ? Int(pieces[1]) : 128
            guard let length, (0...128).contains(length) else { throw Self.invalid(text) }
            family = .ipv6
            address = v6.masked(to: length).description
            prefixLength = length
        }
    }

    public init(_ address: IPv6Address, prefixLength: Int) {
        precondition((0...128).contains(prefixLength))
        family = .ipv6
        self.address = address.masked(to: prefixLength).description
        self.prefixLength = prefixLength
    }

    /// For IPv6 networks: the first address.
    public var ipv6Prefix: IPv6Address? { family == .ipv6 ? IPv6Address(address) : nil }

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

/// An IPv6 address as two host-order halves, so per-VM subnets can be computed.
public struct IPv6Address: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses RFC 4291 text (`fd00::2`, `2001:db8:0:0:0:0:0:1`); nil for anything else, including
    /// the dotted-quad tail form, which nothing here needs.
    public init?(_ text: String) {
        guard !text.isEmpty, text.utf8.count <= 39 else { return nil }
        guard let halves = Self.splitAtDoubleColon(text) else { return nil }
        func groups(_ part: Substring) -> [UInt16]? {
            if part.isEmpty { return [] }
            var result: [UInt16] = []
            for group in part.split(separator: ":", omittingEmptySubsequences: false) {
                guard (1...4).contains(group.count), group.unicodeScalars.allSatisfy(\.properties.isASCIIHexDigit),
                    let value = UInt16(group, radix: 16)
                else { return nil }
                result.append(value)
            }
            return result
        }
        guard let head = groups(halves[0]) else { return nil }
        var all = head
        if halves.count == 2 {
            guard let tail = groups(halves[1]), head.count + tail.count <= 7 else { return nil }
            all += [UInt16](repeating: 0, count: 8 - head.count - tail.count) + tail
        }
        guard all.count == 8 else { return nil }
        high = all[0..<4].reduce(0) { $0 << 16 | UInt64($1) }
        low = all[4..<8].reduce(0) { $0 << 16 | UInt64($1) }
    }

    /// The text before and after a `::` (one element without one), or nil for more than one.
    private static func splitAtDoubleColon(_ text: String) -> [Substring]? {
        let ranges = text.ranges(of: "::")
        if ranges.isEmpty { return [Substring(text)] }
        guard ranges.count == 1, let range = ranges.first else { return nil }
        // ":::" leaves a stray colon on one side; the group parser rejects the empty group it makes.
        return [text[..<range.lowerBound], text[range.upperBound...]]
    }

    var groups: [UInt16] {
        (0..<4).map { UInt16(truncatingIfNeeded: high >> UInt64(48 - 16 * $0)) }
            + (0..<4).map { UInt16(truncatingIfNeeded: low >> UInt64(48 - 16 * $0)) }
    }

    public var bytes: [UInt8] { groups.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] } }

    /// RFC 5952 text: lowercase, no leading zeros, the longest run of two or more zero groups as `::`.
    public var description: String {
        let groups = self.groups
        var best = (start: -1, length: 0)
        var index = 0
        while index < 8 {
            guard groups[index] == 0 else {
                index += 1
                continue
            }
            var end = index
            while end < 8 && groups[end] == 0 { end += 1 }
            if end - index > best.length { best = (index, end - index) }
            index = end
        }
        let hex = groups.map { String($0, radix: 16) }
        guard best.length >= 2 else { return hex.joined(separator: ":") }
        return hex[..<best.start].joined(separator: ":") + "::" + hex[(best.start + best.length)...].joined(separator: ":")
    }

    /// The address `offset` above this one (no carry beyond the low half is needed here).
    public func adding(_ offset: UInt64) -> IPv6Address {
        let (sum, overflow) = low.addingReportingOverflow(offset)
        return IPv6Address(high: overflow ? high &+ 1 : high, low: sum)
    }

    /// This address with everything after the first `prefixLength` bits cleared.
    public func masked(to prefixLength: Int) -> IPv6Address {
        func mask(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? ~0 : ~UInt64(0) << UInt64(64 - bits) }
        return IPv6Address(high: high & mask(prefixLength), low: low & mask(prefixLength - 64))
    }

    public static func < (lhs: IPv6Address, rhs: IPv6Address) -> Bool { (lhs.high, lhs.low) < (rhs.high, rhs.low) }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        guard let address = IPv6Address(text) else {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: "\(text) is not an IPv6 address")
        }
        self = address
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

