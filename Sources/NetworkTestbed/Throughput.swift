#if canImport(Glibc)
    import Glibc
#endif
import CMicroVMSys
import Synchronization

extension FakeGuest {
    /// Writes `frame` (one prebuilt Ethernet frame) into the TAP over and over for `nanoseconds`,
    /// the way a VMM's TX queue hands frames to the kernel: one write(2) each, virtio-net header
    /// first. The kernel carries every frame through the namespace's path (and its firewall) in
    /// this thread before write returns, so the rate is what the path costs. Returns the number
    /// of frames the kernel took.
    public func blast(_ frame: [UInt8], for nanoseconds: Int64) -> Int {
        let packet = [UInt8](repeating: 0, count: 12) + frame
        let deadline = monotonicNanoseconds() + nanoseconds
        var written = 0
        packet.withUnsafeBytes { bytes in
            while true {
                for _ in 0..<64 where write(fd, bytes.baseAddress, bytes.count) == bytes.count { written += 1 }
                if monotonicNanoseconds() >= deadline { break }
            }
        }
        return written
    }
}

/// Counts UDP datagrams arriving on one port of a namespace, on a thread of its own.
public final class UDPSink: @unchecked Sendable {
    private let fd: Int32
    private let packets = Atomic<Int>(0)
    private let bytes = Atomic<Int>(0)
    private let stop = Atomic<Bool>(false)
    private var thread: pthread_t?

    public init(namespace path: String, port: UInt16) throws {
        fd = try boundSocket(in: path, stream: false, port: port)
        // A deep buffer, so a receiver that is briefly descheduled does not count as the path's loss.
        var size: Int32 = 32 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
        thread = startThread { [self] in loop() }
    }

    /// Datagrams and payload bytes received since the last call (and zeroes the counters).
    public func take() -> (packets: Int, bytes: Int) {
        (packets.exchange(0, ordering: .acquiring), bytes.exchange(0, ordering: .acquiring))
    }

    private func loop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while !stop.load(ordering: .relaxed) {
            var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&entry, 1, 20) > 0 else { continue }
            while true {
                let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                guard n >= 0 else { break }
                packets.add(1, ordering: .relaxed)
                bytes.add(n, ordering: .relaxed)
            }
        }
    }

    public func shutdown() {
        stop.store(true, ordering: .relaxed)
        if let thread { pthread_join(thread, nil) }
        thread = nil
        close(fd)
    }
}
