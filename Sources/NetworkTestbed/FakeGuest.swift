#if canImport(Glibc)
    import Glibc
#endif
import CMicroVMSys
public import MicroVMHost

/// A stand-in for a guest: attaches to the VM's TAP from inside the VM's namespace exactly as
/// Firecracker does (`/dev/net/tun`, TUNSETIFF with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR, 12-byte
/// virtio-net header) and speaks raw Ethernet: ARP, IPv4 UDP/TCP/ICMP, and an IPv6 probe.
public final class FakeGuest {
    public let fd: Int32
    public let mac: [UInt8]
    public let address: IPv4Address
    public let gateway: IPv4Address
    /// The guest's IPv6 side, when the VM network has one.
    public let ipv6: IPv6Attachment?
    public private(set) var gatewayMAC: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
    private var nextPort: UInt16 = 40000

    public init(_ attachment: NetworkAttachment) throws {
        let namespace = attachment.namespacePath?.string ?? "/proc/self/ns/net"
        fd = cmv_netns_tap_attach(namespace, attachment.tapName)
        guard fd >= 0 else { throw CommandFailure(description: "attach to \(attachment.tapName) in \(namespace): errno \(errno)") }
        mac = attachment.guestMAC.bytes
        address = attachment.guestAddress
        gateway = attachment.gatewayAddress
        ipv6 = attachment.ipv6
    }

    deinit { close(fd) }

    public func port() -> UInt16 {
        nextPort += 1
        return nextPort
    }

    // MARK: Frames

    public func send(_ frame: [UInt8]) {
        let packet = [UInt8](repeating: 0, count: 12) + frame
        _ = packet.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The next frame (without the virtio-net header) that `accept` takes, within `milliseconds`.
    /// Answers ARP requests for the guest's address on the way.
    public func receive(within milliseconds: Int, _ accept: ([UInt8]) -> Bool) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let deadline = monotonicMilliseconds() + milliseconds
        while true {
            let left = deadline - monotonicMilliseconds()
            if left <= 0 { return nil }
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, Int32(left)) > 0 else { continue }
            let n = read(fd, &buffer, buffer.count)
            guard n > 12 else { continue }
            let frame = Array(buffer[12..<n])
            if frame.count >= 42, frame[12] == 0x08, frame[13] == 0x06, frame[21] == 1, Array(frame[38..<42]) == address.bytes {
                // ARP request for us: reply.
                let sender = Array(frame[22..<28])
                let senderIP = Array(frame[28..<32])
                send(sender + mac + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2] + mac + address.bytes + sender + senderIP)
                continue
            }
            if accept(frame) { return frame }
        }
    }

    /// ARP for the gateway (the TAP's address in the namespace).
    public func resolveGateway() throws {
        let request = [UInt8](repeating: 0xff, count: 6) + mac + [0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1] + mac + address.bytes
            + [UInt8](repeating: 0, count: 6) + gateway.bytes
        for _ in 0..<3 {
            send(request)
            if let reply = receive(within: 500, { f in
                f.count >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2 && Array(f[28..<32]) == self.gateway.bytes
            }) {
                gatewayMAC = Array(reply[22..<28])
                return
            }
        }
        throw CommandFailure(description: "no ARP reply from the gateway \(gateway)")
    }

    public func ipv4(protocol proto: UInt8, from source: IPv4Address? = nil, to destination: IPv4Address, payload: [UInt8], sourceMAC: [UInt8]? = nil) -> [UInt8] {
        let src = source ?? address
        var header: [UInt8] = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0] + src.bytes + destination.bytes
        let total = UInt16(20 + payload.count)
        header[2] = UInt8(total >> 8)
        header[3] = UInt8(total & 0xff)
        let sum = checksum(header)
        header[10] = UInt8(sum >> 8)
        header[11] = UInt8(sum & 0xff)
        return gatewayMAC + (sourceMAC ?? mac) + [0x08, 0x00] + header + payload
    }

    public func udp(from source: IPv4Address? = nil, to destination: IPv4Address, sourcePort: UInt16, port: UInt16, payload: [UInt8]) -> [UInt8] {
        let length = UInt16(8 + payload.count)
        let segment = be16(sourcePort) + be16(port) + be16(length) + [0, 0] + payload  // checksum 0: none (IPv4)
        return ipv4(protocol: 17, from: source, to: destination, payload: segment)
    }

    /// Sends a UDP datagram and waits for the answer from `destination:port` to our port.
    public func udpExchange(to destination: IPv4Address, port: UInt16, payload: [UInt8], from source: IPv4Address? = nil, within: Int = 400) -> [UInt8]? {
        let sourcePort = self.port()
        send(udp(from: source, to: destination, sourcePort: sourcePort, port: port, payload: payload))
        guard let frame = receive(within: within, { f in
            f.count >= 42 && f[12] == 0x08 && f[13] == 0 && f[23] == 17 && Array(f[26..<30]) == destination.bytes
                && f[34] == UInt8(port >> 8) && f[35] == UInt8(port & 0xff)
                && f[36] == UInt8(sourcePort >> 8) && f[37] == UInt8(sourcePort & 0xff)
        }) else { return nil }
        return Array(frame[42...])
    }

    /// Sends a TCP SYN; true when a SYN-ACK comes back (the destination accepted the connection,
    /// so the server counts it only if we complete the handshake: we do, then reset).
    public func tcpConnect(to destination: IPv4Address, port: UInt16, within: Int = 400) -> Bool {
        let sourcePort = self.port()
        let sequence: UInt32 = 1000
        send(tcp(to: destination, sourcePort: sourcePort, port: port, sequence: sequence, acknowledgement: 0, flags: 0x02))
        guard let frame = receive(within: within, { f in
            f.count >= 54 && f[12] == 0x08 && f[13] == 0 && f[23] == 6 && Array(f[26..<30]) == destination.bytes
                && f[36] == UInt8(sourcePort >> 8) && f[37] == UInt8(sourcePort & 0xff) && f[47] & 0x12 == 0x12
        }) else { return false }
        let theirs = UInt32(frame[38]) << 24 | UInt32(frame[39]) << 16 | UInt32(frame[40]) << 8 | UInt32(frame[41])
        send(tcp(to: destination, sourcePort: sourcePort, port: port, sequence: sequence + 1, acknowledgement: theirs + 1, flags: 0x10))
        send(tcp(to: destination, sourcePort: sourcePort, port: port, sequence: sequence + 1, acknowledgement: theirs + 1, flags: 0x14))
        return true
    }

    public func tcp(to destination: IPv4Address, sourcePort: UInt16, port: UInt16, sequence: UInt32, acknowledgement: UInt32, flags: UInt8) -> [UInt8] {
        var segment = be16(sourcePort) + be16(port) + be32(sequence) + be32(acknowledgement) + [0x50, flags] + be16(65535) + [0, 0, 0, 0]
        let pseudo = address.bytes + destination.bytes + [0, 6] + be16(UInt16(segment.count))
        let sum = checksum(pseudo + segment)
        segment[16] = UInt8(sum >> 8)
        segment[17] = UInt8(sum & 0xff)
        return ipv4(protocol: 6, to: destination, payload: segment)
    }

    /// ICMP echo; true when the reply comes.
    public func ping(_ destination: IPv4Address, within: Int = 300) -> Bool {
        let identifier = port()
        var message: [UInt8] = [8, 0, 0, 0] + be16(identifier) + [0, 1] + Array("microvm".utf8)
        let sum = checksum(message)
        message[2] = UInt8(sum >> 8)
        message[3] = UInt8(sum & 0xff)
        send(ipv4(protocol: 1, to: destination, payload: message))
        return receive(within: within, { f in
            f.count >= 42 && f[12] == 0x08 && f[13] == 0 && f[23] == 1 && f[34] == 0 && Array(f[26..<30]) == destination.bytes
                && f[38] == UInt8(identifier >> 8) && f[39] == UInt8(identifier & 0xff)
        }) != nil
    }

    /// A UDP datagram in IPv6 (from the guest's IPv6 address unless `source` says otherwise).
    public func udp6(from source: IPv6Address? = nil, to destination: IPv6Address, sourcePort: UInt16, port: UInt16, payload: [UInt8]) -> [UInt8] {
        let src = (source ?? ipv6?.guestAddress ?? IPv6Address(high: 0, low: 0)).bytes
        let length = UInt16(8 + payload.count)
        var segment = be16(sourcePort) + be16(port) + be16(length) + [0, 0] + payload
        let computed = checksum(src + destination.bytes + be32(UInt32(length)) + [0, 0, 0, 17] + segment)
        let sum = computed == 0 ? 0xffff : computed  // 0 means "no checksum", which IPv6 forbids
        segment[6] = UInt8(sum >> 8)
        segment[7] = UInt8(sum & 0xff)
        let header: [UInt8] = [0x60, 0, 0, 0] + be16(length) + [17, 64] + src + destination.bytes
        return gatewayMAC + mac + [0x86, 0xdd] + header + segment
    }

    /// Sends a UDP datagram over IPv6 and waits for the answer from `destination:port`.
    public func udp6Exchange(
        to destination: IPv6Address, port: UInt16, payload: [UInt8], from source: IPv6Address? = nil, within: Int = 400
    ) -> [UInt8]? {
        let sourcePort = self.port()
        send(udp6(from: source, to: destination, sourcePort: sourcePort, port: port, payload: payload))
        guard let frame = receive(within: within, { f in
            f.count >= 62 && f[12] == 0x86 && f[13] == 0xdd && f[20] == 17 && Array(f[22..<38]) == destination.bytes
                && f[54] == UInt8(port >> 8) && f[55] == UInt8(port & 0xff)
                && f[56] == UInt8(sourcePort >> 8) && f[57] == UInt8(sourcePort & 0xff)
        }) else { return nil }
        return Array(frame[62...])
    }

    /// An ICMPv6 echo request to all nodes (ff02::1) from a link-local address; true if any
    /// IPv6 frame comes back.
    public func pingIPv6(within: Int = 300) -> Bool {
        let source: [UInt8] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0] + [mac[0] ^ 2, mac[1], mac[2], 0xff, 0xfe, mac[3], mac[4], mac[5]]
        let destination: [UInt8] = [0xff, 0x02] + [UInt8](repeating: 0, count: 13) + [1]
        var message: [UInt8] = [128, 0, 0, 0, 0, 1, 0, 1]
        let pseudo = source + destination + be32(UInt32(message.count)) + [0, 0, 0, 58]
        let sum = checksum(pseudo + message)
        message[2] = UInt8(sum >> 8)
        message[3] = UInt8(sum & 0xff)
        let header: [UInt8] = [0x60, 0, 0, 0] + be16(UInt16(message.count)) + [58, 255] + source + destination
        send([0x33, 0x33, 0, 0, 0, 1] + mac + [0x86, 0xdd] + header + message)
        return receive(within: within, { f in f.count > 14 && f[12] == 0x86 && f[13] == 0xdd }) != nil
    }
}

public func be16(_ value: UInt16) -> [UInt8] { [UInt8(value >> 8), UInt8(value & 0xff)] }
public func be32(_ value: UInt32) -> [UInt8] { [UInt8(value >> 24), UInt8((value >> 16) & 0xff), UInt8((value >> 8) & 0xff), UInt8(value & 0xff)] }

public func checksum(_ bytes: [UInt8]) -> UInt16 {
    var sum: UInt32 = 0
    var index = 0
    while index + 1 < bytes.count {
        sum += UInt32(bytes[index]) << 8 | UInt32(bytes[index + 1])
        index += 2
    }
    if index < bytes.count { sum += UInt32(bytes[index]) << 8 }
    while sum >> 16 != 0 { sum = (sum & 0xffff) + (sum >> 16) }
    return ~UInt16(sum)
}

public func monotonicMilliseconds() -> Int {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int(now.tv_sec) * 1000 + Int(now.tv_nsec) / 1_000_000
}

public func monotonicNanoseconds() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
}
