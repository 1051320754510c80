import Logging
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Starts a process (Firecracker itself, or the jailer that starts it) through swift-subprocess,
/// which clears the signal mask in the child and reaps it without blocking a thread. The child
/// runs in its own session, so a terminal's SIGINT or SIGHUP aimed at the host process does not
/// reach the VMM (Firecracker turns SIGHUP into exit code 156).
enum ProcessLauncher {
    struct Spawned: Sendable {
        let pid: Int32
        /// A private duplicate of swift-subprocess's pidfd: it stays valid after the child is
        /// reaped, so a signal can never reach a recycled pid.
        let pidfd: Int32
        /// The started process's termination, as swift-subprocess reaped it.
        let termination: Task<VMMExit, Never>
    }

    /// Spawns `executable` with `standardInput/Output/Error` as its standard streams. They stay
    /// open here: the caller closes its copies after the spawn, whether it succeeded or not.
    static func spawn(
        executable: FilePath, arguments: [String], workingDirectory: FilePath?,
        standardInput: Int32, standardOutput: Int32, standardError: Int32
    ) async throws(LaunchFailure) -> Spawned {
        var options = PlatformOptions()
        options.createSession = true
        let configuration = Configuration(
            executable: .path(executable), arguments: Arguments(arguments), environment: .custom(InheritedEnvironment.entries),
            workingDirectory: workingDirectory, platformOptions: options)
        let input = FileDescriptor(rawValue: standardInput)
        let output = FileDescriptor(rawValue: standardOutput)
        let error = FileDescriptor(rawValue: standardError)
        let (started, continuation) = AsyncStream<Result<(Int32, Int32), LaunchFailure>>.makeStream()
        let termination = Task<VMMExit, Never> {
            do {
                let result = try await Subprocess.run(
                    configuration,
                    input: .fileDescriptor(input, closeAfterSpawningProcess: false),
                    output: .fileDescriptor(output, closeAfterSpawningProcess: false),
                    error: .fileDescriptor(error, closeAfterSpawningProcess: false)
                ) { execution in
                    let identifier = execution.processIdentifier
                    let pidfd = identifier.processDescriptor >= 0 ? dup(identifier.processDescriptor) : -1
                    continuation.yield(.success((identifier.value, pidfd)))
                    continuation.finish()
                }
                switch result.terminationStatus {
                case .exited(let code): return .exited(code: code)
                case .signaled(let signal): return .signaled(signal: signal)
                }
            } catch {
                continuation.yield(.failure(LaunchFailure(executable: executable.string, message: "\(error)")))
                continuation.finish()
                return .unknown
            }
        }
        var iterator = started.makeAsyncIterator()
        switch await iterator.next() {
        case .success(let (pid, pidfd))?:
            return Spawned(pid: pid, pidfd: pidfd, termination: termination)
        case .failure(let failure)?:
            throw failure
        case nil:
            throw LaunchFailure(executable: executable.string, message: "the launch did not report back")
        }
    }
}

/// A process that could not be started at all (missing or non-executable binary).
public struct LaunchFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public let executable: String
    public let message: String
    public var description: String {
        "could not start \(executable): \(message). Hint: \(hint)"
    }

    public var hint: String { "check that the file exists and is executable" }
}

/// This process's environment as it is now, for a child to inherit unchanged (the raw baselines
/// of `microvm-bench` start theirs with it too).
///
/// swift-subprocess's `.inherit` parses the environment into a dictionary of `String`s and prints
/// it back, twice per spawn (once for `PATH`): 0.1-0.2 ms of the library's 1 ms before the exec
/// in a `perf` profile (BENCHMARKS.md, session 7). The raw entries of `environ`, copied as they
/// are, reach the child byte for byte.
package enum InheritedEnvironment {
    /// Each `NAME=value` entry with its terminating NUL, as swift-subprocess's
    /// `Environment.custom(_: [[UInt8]])` takes it (it hands each one to `strdup`).
    package static var entries: [[UInt8]] {
        var entries: [[UInt8]] = []
        var cursor = environ
        while let entry = cursor.pointee {
            let length = strlen(entry)
            entries.append(Array(UnsafeBufferPointer(start: UnsafeRawPointer(entry).assumingMemoryBound(to: UInt8.self), count: length + 1)))
            cursor += 1
        }
        return entries
    }
}
