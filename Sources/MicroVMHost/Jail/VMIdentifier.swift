/// A VM id the jailer accepts. It names the jail directory and the VM's cgroups, so it is
/// validated before anything touches the disk and is never rewritten behind the caller's back:
/// silently mapping `a/b` to `a_b` would both be rejected by the jailer (no `_`) and make two
/// names share one jail.
///
/// The jailer (v1.12.1, `validate_instance_id`) allows 1-64 bytes of Unicode alphanumerics or
/// `-`. This type allows only the ASCII subset: everything it accepts the jailer accepts, and the
/// id stays safe in file names, cgroup paths and logs.
public struct VMIdentifier: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    public static let maximumLength = 64

    public let rawValue: String

    /// Validates `rawValue` exactly; throws without changing anything.
    public init(_ rawValue: String) throws(JailError) {
        if let problem = Self.problem(with: rawValue) {
            throw .invalidIdentifier(rawValue, problem)
        }
        self.rawValue = rawValue
    }

    /// The first rule `candidate` breaks, or nil when it is a valid id.
    public static func problem(with candidate: String) -> IdentifierProblem? {
        // Same order and unit (UTF-8 bytes) as the jailer: length first, then characters.
        if candidate.isEmpty { return .empty }
        if candidate.utf8.count > maximumLength { return .tooLong(length: candidate.utf8.count) }
        for (position, character) in candidate.enumerated() where !isAllowed(character) {
            return .invalidCharacter(character, position: position)
        }
        return nil
    }

    /// Makes a valid id from any name: the name's ASCII letters and digits (other runs become a
    /// single `-`), then `-` and 16 hex digits of the SHA-256 of the whole name's UTF-8 bytes.
    /// The suffix is always added, so two different names never share an id (`a/b` and `a_b`
    /// differ, and so do `a-b` and the derived id of some other name), and the same name always
    /// gives the same id, across processes and machines.
    public static func derive(from name: String) -> VMIdentifier {
        let digest = SHA256.hash(Array(name.utf8))
        let suffix = digest.prefix(8).map { byte in
            let hex = String(byte, radix: 16)
            return hex.count == 1 ? "0" + hex : hex
        }.joined()
        let budget = maximumLength - 1 - suffix.count
        var prefix = ""
        var pendingDash = false
        for scalar in name.unicodeScalars {
            if scalar.isASCII, isAllowed(Character(scalar)), scalar != "-" {
                if pendingDash, !prefix.isEmpty { prefix.append("-") }
                pendingDash = false
                prefix.unicodeScalars.append(scalar)
            } else {
                pendingDash = true
            }
            if prefix.count >= budget { break }
        }
        prefix = String(prefix.prefix(budget))
        while prefix.hasSuffix("-") { prefix.removeLast() }
        if prefix.isEmpty { prefix = "vm" }
        // Valid by construction.
        return VMIdentifier(unchecked: prefix + "-" + suffix)
    }

    private init(unchecked rawValue: String) {
        self.rawValue = rawValue
    }

    private static func isAllowed(_ character: Character) -> Bool {
        guard character.isASCII, let ascii = character.asciiValue else { return false }
        return (ascii >= 0x30 && ascii <= 0x39) || (ascii >= 0x41 && ascii <= 0x5A)
            || (ascii >= 0x61 && ascii <= 0x7A) || ascii == 0x2D
    }

    public var description: String { rawValue }

    public static func < (lhs: VMIdentifier, rhs: VMIdentifier) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let raw = try container.decode(String.self)
        do {
            try self.init(raw)
        } catch {
            throw DecodingError.dataCorruptedError(in: container, debugDescription: error.description)
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// FIPS 180-4 SHA-256, here only so that derived ids are stable and hard to make collide on
/// purpose without pulling a crypto library into the host module.
enum SHA256 {
    private static let k: [UInt32] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
        0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
        0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
        0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
        0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
        0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
        0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ]

    static func hash(_ message: [UInt8]) -> [UInt8] {
        var h: [UInt32] = [
            0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19,
        ]
        var data = message
        let bitLength = UInt64(message.count) &* 8
        data.append(0x80)
        while data.count % 64 != 56 { data.append(0) }
        for shift in stride(from: 56, through: 0, by: -8) { data.append(UInt8(truncatingIfNeeded: bitLength >> UInt64(shift))) }

        var w = [UInt32](repeating: 0, count: 64)
        for chunk in stride(from: 0, to: data.count, by: 64) {
            for i in 0..<16 {
                let j = chunk + i * 4
                w[i] = UInt32(data[j]) << 24 | UInt32(data[j + 1]) << 16 | UInt32(data[j + 2]) << 8 | UInt32(data[j + 3])
            }
            for i in 16..<64 {
                let s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
                let s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
                w[i] = w[i - 16] &+ s0 &+ w[i - 7] &+ s1
            }
            var (a, b, c, d, e, f, g, hh) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7])
            for i in 0..<64 {
                let s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
                let ch = (e & f) ^ (~e & g)
                let t1 = hh &+ s1 &+ ch &+ k[i] &+ w[i]
                let s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
                let maj = (a & b) ^ (a & c) ^ (b & c)
                let t2 = s0 &+ maj
                hh = g
                g = f
                f = e
                e = d &+ t1
                d = c
                c = b
                b = a
                a = t1 &+ t2
            }
            h[0] = h[0] &+ a
            h[1] = h[1] &+ b
            h[2] = h[2] &+ c
            h[3] = h[3] &+ d
            h[4] = h[4] &+ e
            h[5] = h[5] &+ f
            h[6] = h[6] &+ g
            h[7] = h[7] &+ hh
        }
        return h.flatMap { word in (0..<4).map { UInt8(truncatingIfNeeded: word >> UInt32(24 - $0 * 8)) } }
    }

    @inline(__always)
    private static func rotr(_ x: UInt32, _ n: UInt32) -> UInt32 { (x >> n) | (x << (32 - n)) }
}
