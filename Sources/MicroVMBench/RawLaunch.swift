import Dispatch
import Foundation
import MicroVM
import SystemPackage

/// The raw baselines: a binary started as a script would start it (exec'd at once, with this
/// process's environment), its stdout read on a plain thread until the guest's banner appears.
enum RawLaunch {
    struct Result {
        let elapsed: Duration
        /// When the banner's line was read to its end.
        let found: ContinuousClock.Instant
        let pid: Int32
        let termination: Task<Void, Never>
    }

    /// Starts `executable`, runs `perform` (e.g. API calls) while its stdout is read, and
    /// returns once the line containing `banner` has been read to its end. `input`, when given,
    /// is the process's stdin (the guest's serial input), closed here once it is spawned.
    static func untilBanner(
        executable: String, arguments: [String], banner: String, input: FileDescriptor? = nil,
        perform: @Sendable () async throws -> Void = {}
    ) async throws -> Result {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { throw CocoaError(.fileWriteUnknown) }
        let readEnd = fds[0]
        let writeEnd = FileDescriptor(rawValue: fds[1])
        let start = ContinuousClock.now
        // Spawned natively (posix_spawn on this thread, as the library does), not through
        // swift-subprocess, whose hops to its spawning thread and back add 0.4-0.5 ms that a
        // shell or a C program starting Firecracker does not pay (BENCHMARKS.md, session 12).
        let nullDevice = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(nullDevice) }
        let spawned: ProcessLauncher.Spawned
        do {
            spawned = try await ProcessLauncher.spawn(
                executable: FilePath(executable), arguments: arguments, workingDirectory: nil,
                standardInput: input?.rawValue ?? nullDevice, standardOutput: writeEnd.rawValue, standardError: nullDevice)
        } catch {
            try? input?.close()
            try? writeEnd.close()
            close(readEnd)
            throw error
        }
        try? input?.close()
        try? writeEnd.close()
        close(spawned.pidfd)
        let termination = Task<Void, Never> { _ = await spawned.termination.value }
        async let performed: Void = perform()
        let found: ContinuousClock.Instant? = await withCheckedContinuation { continuation in
            DispatchQueue.global().async {
                defer { close(readEnd) }
                let needle = Array(banner.utf8)
                var seen: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 4096)
                while true {
                    let count = buffer.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                    if count <= 0 {
                        continuation.resume(returning: nil)
                        return
                    }
                    seen += buffer[0..<count]
                    // The whole line, as the library's console delivers it: the needle, then
                    // its line's end (the guest writes a line a byte at a time, ~1 ms for 60).
                    if seen.count >= needle.count,
                        let start = (0...(seen.count - needle.count)).first(where: { seen[$0..<($0 + needle.count)].elementsEqual(needle) }),
                        seen[(start + needle.count)...].contains(UInt8(ascii: "\n"))
                    {
                        continuation.resume(returning: ContinuousClock.now)
                        return
                    }
                }
            }
        }
        try await performed
        let pid = spawned.pid
        guard let found else { throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "\(executable) ended before its banner"]) }
        return Result(elapsed: found - start, found: found, pid: pid, termination: termination)
    }
}
