#if canImport(Glibc)
    import Glibc
#endif

/// What `/proc` says about a process, for supervision: whether a pid still names the process
/// the driver started (pid reuse), and the files the kernel reports with size 0.
public enum ProcFS {
    /// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot. With
    /// the pid it names one process for the whole uptime of the host, across exec.
    public static func startTime(of pid: Int32) -> UInt64? {
        // Bytes, not a `String` split into 50 substrings: this runs on every launch, while
        // Firecracker starts on the same CPUs.
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1024) { buffer -> UInt64? in
            let count = read(fd, buffer.baseAddress, buffer.count)
            guard count > 0, let close = buffer[..<count].lastIndex(of: UInt8(ascii: ")")) else { return nil }
            // After the command come field 3 (state) onwards; the start time is the 20th of those.
            var field = 0
            var value: UInt64 = 0
            for byte in buffer[(close + 1)..<count] {
                if byte == UInt8(ascii: " ") {
                    if field == 20 { return value }
                    field += 1
                    value = 0
                } else if field == 20 {
                    guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                    value = value &* 10 &+ UInt64(byte - UInt8(ascii: "0"))
                }
            }
            return field == 20 ? value : nil
        }
    }

    /// The one-letter state from `/proc/PID/stat` (R, S, D, Z, ...), or nil when there is no such process.
    public static func state(of pid: Int32) -> Character? {
        JailedVMM.processState(pid)
    }

    /// Whether two paths name the same file (device and inode); nil when either cannot be read.
    public static func sameFile(_ first: String, _ second: String) -> Bool? {
        guard let a = try? JailFileSystem.statPath(first), let b = try? JailFileSystem.statPath(second) else { return nil }
        return a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }
}
