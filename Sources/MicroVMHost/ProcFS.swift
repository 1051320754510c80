#if canImport(Glibc)
    import Glibc
#endif

/// What `/proc` says about a process, for supervision: whether a pid still names the process
/// the driver started (pid reuse), and the files the kernel reports with size 0.
public enum ProcFS {
    /// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot. With
    /// the pid it names one process for the whole uptime of the host, across exec.
    public static func startTime(of pid: Int32) -> UInt64? {
        statNumbers(of: pid, fields: 22, 22).map(\.0)
    }

    /// The CPU time the whole process (every thread) has used, user and system: fields 14 and
    /// 15 of `/proc/PID/stat`, in clock ticks (10 ms at the usual 100 Hz).
    public static func cpuTime(of pid: Int32) -> Duration? {
        guard let (user, system) = statNumbers(of: pid, fields: 14, 15) else { return nil }
        let ticksPerSecond = max(1, sysconf(Int32(_SC_CLK_TCK)))
        return .nanoseconds(Int64(clamping: (user &+ system) &* UInt64(1_000_000_000 / ticksPerSecond)))
    }

    /// Two numeric fields of `/proc/PID/stat`, numbered as proc(5) numbers them (`first` <=
    /// `second`), counted from the last `)`: the command before it may hold spaces and
    /// parentheses. Bytes, not a `String` split into 50 substrings: the start time is read on
    /// every launch, while Firecracker starts on the same CPUs.
    private static func statNumbers(of pid: Int32, fields first: Int, _ second: Int) -> (UInt64, UInt64)? {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 1024) { buffer -> (UInt64, UInt64)? in
            let count = read(fd, buffer.baseAddress, buffer.count)
            guard count > 0, let close = buffer[..<count].lastIndex(of: UInt8(ascii: ")")) else { return nil }
            // The space after `)` starts field 3 (the state).
            var field = 2
            var value: UInt64 = 0
            var firstValue: UInt64?
            for byte in buffer[(close + 1)..<count] {
                if byte == UInt8(ascii: " ") {
                    if field == first { firstValue = value }
                    if field == second { return firstValue.map { ($0, value) } }
                    field += 1
                    value = 0
                } else if field == first || field == second {
                    guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
                    value = value &* 10 &+ UInt64(byte - UInt8(ascii: "0"))
                }
            }
            return nil
        }
    }

    /// A numeric field of `/proc/PID/status` (`VmRSS`, `Threads`, ...), its unit (`kB`) left
    /// off; nil when the process or the field is not there.
    public static func statusNumber(_ field: String, of pid: Int32) -> UInt64? {
        let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += chunk[..<count]
        }
        let prefix = Array((field + ":").utf8)
        for line in text.split(separator: UInt8(ascii: "\n")) where line.starts(with: prefix) {
            let digits = line.dropFirst(prefix.count).drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }.prefix { $0 >= 48 && $0 <= 57 }
            return digits.isEmpty ? nil : UInt64(String(decoding: digits, as: UTF8.self))
        }
        return nil
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
