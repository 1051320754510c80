#if canImport(Glibc)
    import Glibc
#endif

/// One output stream of the VMM (its console, its stderr, Firecracker's log) as the monitor
/// keeps it: a bounded ring of the latest bytes for clients that attach later, numbered by
/// the stream's total offset so a client can resume where it left off, and a size-capped log
/// file (one rotation) that outlives the monitor.
final class MonitoredStream {
    let name: String
    /// Bytes ever written to the stream: the offset of the next byte.
    private(set) var total: UInt64 = 0
    private var ring: [UInt8] = []
    private var ringStart = 0  // index of the oldest byte once the ring is full
    private let ringCapacity: Int
    private let file: LogFile?
    /// The stream's source is closed and drained: no more bytes will come.
    var ended = false

    init(name: String, ringCapacity: Int, file: LogFile?) {
        self.name = name
        self.ringCapacity = max(ringCapacity, 1)
        self.file = file
    }

    func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        total += UInt64(bytes.count)
        file?.write(bytes)
        if ring.count < ringCapacity {
            let room = ringCapacity - ring.count
            ring.append(contentsOf: bytes.prefix(room))
            if bytes.count > room { overwrite(UnsafeRawBufferPointer(rebasing: bytes[room...])) }
        } else {
            overwrite(bytes)
        }
    }

    private func overwrite(_ bytes: UnsafeRawBufferPointer) {
        // Only the newest ringCapacity bytes can survive.
        let kept = bytes.count > ringCapacity ? UnsafeRawBufferPointer(rebasing: bytes[(bytes.count - ringCapacity)...]) : bytes
        for byte in kept {
            ring[ringStart] = byte
            ringStart = (ringStart + 1) % ringCapacity
        }
    }

    /// The retained bytes from `offset` on, and the offset of the first one returned (later than
    /// `offset` when the ring no longer holds it).
    func bytes(from offset: UInt64) -> (start: UInt64, bytes: [UInt8]) {
        let oldest = total - UInt64(ring.count)
        let start = min(max(offset, oldest), total)
        let skip = Int(start - oldest)
        var ordered: [UInt8]
        if ring.count < ringCapacity || ringStart == 0 {
            ordered = Array(ring[skip...])
        } else {
            ordered = Array(ring[ringStart...]) + Array(ring[..<ringStart])
            ordered.removeFirst(skip)
        }
        return (start, ordered)
    }

    func close() {
        file?.close()
    }
}

/// An append-only file rotated once at `maximumBytes` (`name` → `name.1`), so a guest that
/// writes without end costs at most twice that on disk.
final class LogFile {
    private let path: String
    private let maximumBytes: Int
    private var fd: Int32
    private var written: Int

    init?(path: String, maximumBytes: Int) {
        self.path = path
        self.maximumBytes = max(maximumBytes, 4096)
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        written = 0
        if fd < 0 { return nil }
    }

    func write(_ bytes: UnsafeRawBufferPointer) {
        guard fd >= 0 else { return }
        if written + bytes.count > maximumBytes, written > 0 { rotate() }
        var done = 0
        while done < bytes.count {
            let count = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if count < 0 {
                if errno == EINTR { continue }
                return  // a full disk loses log lines, never the VM
            }
            done += count
        }
        written += done
    }

    private func rotate() {
        Glibc.close(fd)
        rename(path, path + ".1")
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        written = 0
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
