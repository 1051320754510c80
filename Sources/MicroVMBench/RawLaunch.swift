import Dispatch
import Foundation
import MicroVM
import Subprocess
import SystemPackage

/// The raw baselines: a binary started as a shell script would start it (this process's
/// environment passed on as is, the library's way, which swift-subprocess's `.inherit` makes
/// 0.1 ms slower), its stdout read on a plain thread until the guest's banner appears.
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
        let (pids, pidContinuation) = AsyncStream<Int32>.makeStream()
        let termination = Task {
            if let input {
                _ = try? await Subprocess.run(
                    .path(FilePath(executable)), arguments: Arguments(arguments), environment: .custom(InheritedEnvironment.entries),
                    input: .fileDescriptor(input, closeAfterSpawningProcess: true),
                    output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true), error: .discarded
                ) { execution in
                    pidContinuation.yield(execution.processIdentifier.value)
                    pidContinuation.finish()
                }
            } else {
                _ = try? await Subprocess.run(
                    .path(FilePath(executable)), arguments: Arguments(arguments), environment: .custom(InheritedEnvironment.entries),
                    input: .none, output: .fileDescriptor(writeEnd, closeAfterSpawningProcess: true), error: .discarded
                ) { execution in
                    pidContinuation.yield(execution.processIdentifier.value)
                    pidContinuation.finish()
                }
            }
        }
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
        var iterator = pids.makeAsyncIterator()
        let pid = await iterator.next() ?? -1
        guard let found else { throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "\(executable) ended before its banner"]) }
        return Result(elapsed: found - start, found: found, pid: pid, termination: termination)
    }
}
