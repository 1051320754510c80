/// What `/proc` says about a process, for supervision: whether a pid still names the process
/// the driver started (pid reuse), and the files the kernel reports with size 0.
public enum ProcFS {
    /// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks after boot. With
    /// the pid it names one process for the whole uptime of the host, across exec.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let text = try? readSmallFile("/proc/\(pid)/stat", limit: 4096),
            let close = text.lastIndex(of: ")")
        else { return nil }
        // After the command come field 3 (state) onwards; the start time is the 20th of those.
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 19 ? UInt64(fields[19]) : nil
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
