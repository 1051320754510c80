import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// One of the files a VM's monitor keeps in the VM's state directory (`console.log`,
/// `firecracker.log`), read the way `tail -F` reads a log: the one rotation (`NAME.1`) first,
/// then `NAME`, followed across the rotation until the monitor says the VM has ended. Reading
/// the files instead of attaching keeps `logs` free of side effects: it never becomes the VM's
/// driver, and the history is there whether or not anything was attached.
struct MonitorLogFiles {
    let directory: String
    let name: String

    var path: String { directory + "/" + name }
    var rotatedPath: String { path + ".1" }
    /// Written by the monitor once the VMM is reaped and every stream is drained into its file.
    var exitPath: String { directory + "/exit" }

    /// Whether the monitor keeps this log for the VM (either file exists).
    var exist: Bool {
        access(path, F_OK) == 0 || access(rotatedPath, F_OK) == 0
    }

    /// The whole log as it is now, and the current file left open at its end for `follow`.
    /// `NAME` is opened before `NAME.1`: a rotation in between then shows as both names being
    /// the same file (read once), where the other order would lose the rotated part.
    func read() -> (bytes: [UInt8], current: OpenLog?) {
        let current = OpenLog(path: path)
        var rotated = OpenLog(path: rotatedPath)
        if let opened = rotated, let current, opened.identity == current.identity {
            opened.close()
            rotated = nil
        }
        var bytes = rotated?.readToEnd() ?? []
        rotated?.close()
        if let current { bytes += current.readToEnd() }
        return (bytes, current)
    }

    /// Prints what is written after `current` until the VM has ended (the `exit` file, or the
    /// state directory removed, or `stillWriting` false) and everything written is printed, or
    /// the task is cancelled. Polls: the monitor's files change at the guest's pace, and a poll
    /// every `interval` costs a few system calls.
    @discardableResult
    func follow(
        from current: OpenLog?, interval: Duration = .milliseconds(150), stillWriting: () -> Bool, print: ([UInt8]) -> Void
    ) async -> FollowEnd {
        var current = current
        defer { current?.close() }
        while !Task.isCancelled {
            // Decided before the last read: whatever the monitor wrote before `exit` is then read.
            let ended: FollowEnd? =
                access(exitPath, F_OK) == 0 ? .exited : access(directory, F_OK) != 0 ? .removed : !stillWriting() ? .writerGone : nil
            if let open = current {
                let bytes = open.readToEnd()
                if !bytes.isEmpty { print(bytes) }
            }
            if let identity = OpenLog.identity(of: path), identity != current?.identity {
                // Rotated (the old file is complete once renamed) or created since: the rest of
                // the old one, then the new one from its start.
                if let old = current {
                    let rest = old.readToEnd()
                    if !rest.isEmpty { print(rest) }
                    old.close()
                }
                current = OpenLog(path: path)
                if let bytes = current?.readToEnd(), !bytes.isEmpty { print(bytes) }
            }
            if let ended { return ended }
            try? await Task.sleep(for: interval)
        }
        return .interrupted
    }

    enum FollowEnd: Equatable {
        /// The monitor wrote `exit`: the VMM has ended and its output is all in the file.
        case exited
        /// The state directory is gone (`stop`, `rm` or `gc` removed the VM).
        case removed
        /// The monitor died without writing `exit`: nothing records the stream any more.
        case writerGone
        case interrupted
    }

    /// Where the last `count` lines of `bytes` begin, as `tail -n` counts them: a final line
    /// without its newline is a line.
    static func tailStart(of bytes: [UInt8], lines count: Int) -> Int {
        guard count > 0 else { return bytes.count }
        var index = bytes.count
        // A newline that ends the text closes the last line; it does not start another.
        if index > 0, bytes[index - 1] == UInt8(ascii: "\n") { index -= 1 }
        var seen = 0
        while index > 0 {
            if bytes[index - 1] == UInt8(ascii: "\n") {
                seen += 1
                if seen == count { return index }
            }
            index -= 1
        }
        return 0
    }
}

/// An open log file read from where the last read stopped.
final class OpenLog {
    struct Identity: Equatable {
        var device: UInt64
        var inode: UInt64
    }

    private let fd: Int32
    let identity: Identity

    init?(path: String) {
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            Glibc.close(fd)
            return nil
        }
        identity = Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    static func identity(of path: String) -> Identity? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Identity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }

    /// Everything from the current offset to the end of file as it is now.
    func readToEnd() -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0, errno == EINTR { continue }
            if count <= 0 { return result }
            result += buffer[..<count]
        }
    }

    private var closed = false

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    deinit { close() }
}
