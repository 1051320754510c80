public import FirecrackerAPI
public import Logging
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// An unjailed Firecracker process with its API socket, started and ready to take calls.
///
/// This is the "sandbox disabled" launch path and the base the jailed path builds on: it owns
/// the socket file (Firecracker never removes it, and a stale one makes the next start fail)
/// and the process, and `stop`/`kill` leave neither behind.
public final class FirecrackerInstance: Sendable {
    public let process: VMMProcess
    public let client: FirecrackerClient
    public let socketPath: String
    private let logger: Logger

    public enum StartError: Error, Sendable, CustomStringConvertible {
        case socketInUse(path: String)
        case exitedDuringStartup(exit: VMMExit, standardError: [String], console: [String])
        case notReady(FirecrackerAPIError)
        case launch(VMMProcess.LaunchError)

        public var description: String {
            switch self {
            case .socketInUse(let path):
                "\(path) is the API socket of a running Firecracker. Hint: stop that VM or choose another socket path"
            case .exitedDuringStartup(let exit, let stderr, let console):
                "Firecracker \(exit) before its API became ready; stderr: \(stderr.suffix(5)); output: \(console.suffix(5)). Hint: check the arguments and that /dev/kvm is accessible"
            case .notReady(let error):
                "Firecracker's API did not become ready: \(error)"
            case .launch(let error):
                error.description
            }
        }
    }

    private init(process: VMMProcess, client: FirecrackerClient, socketPath: String, logger: Logger) {
        self.process = process
        self.client = client
        self.socketPath = socketPath
        self.logger = logger
    }

    /// Starts `firecracker --api-sock socketPath` plus `arguments` and waits until the API answers.
    ///
    /// A stale socket at the path (nothing listening) is removed first; a live one is refused.
    public static func start(
        firecracker: FilePath, socketPath: String, arguments: [String] = [],
        readinessTimeout: Duration = .seconds(5),
        clientConfiguration: FirecrackerClient.Configuration = .init(),
        logger: Logger
    ) async throws(StartError) -> FirecrackerInstance {
        try await removeStaleSocket(at: socketPath, logger: logger)
        let process: VMMProcess
        do {
            process = try await VMMProcess.launch(
                executable: firecracker, arguments: ["--api-sock", socketPath] + arguments, logger: logger)
        } catch let error as VMMProcess.LaunchError {
            throw .launch(error)
        } catch {
            throw .launch(.init(executable: firecracker.string, message: "\(error)"))
        }
        let client = FirecrackerClient(socketPath: socketPath, configuration: clientConfiguration, logger: logger)
        let instance = FirecrackerInstance(process: process, client: client, socketPath: socketPath, logger: logger)
        // Race readiness against an early exit, so a bad argument is reported at once with
        // Firecracker's own words rather than as a readiness timeout.
        let outcome = await withTaskGroup(of: ReadinessOutcome.self) { group in
            group.addTask {
                do throws(FirecrackerAPIError) {
                    try await client.waitUntilReady(timeout: readinessTimeout)
                    return .ready
                } catch {
                    return .failed(error)
                }
            }
            group.addTask {
                // Returns nil when cancelled because readiness won the race.
                if let exit = await process.exit(within: nil) { return .exited(exit) }
                return .failed(.transport(.io("cancelled"), operation: "start", socketPath: socketPath))
            }
            let first = await group.next()!
            group.cancelAll()
            return first
        }
        switch outcome {
        case .ready:
            return instance
        case .exited(let exit):
            await instance.cleanUp()
            throw .exitedDuringStartup(
                exit: exit, standardError: await process.standardError.recentLines.map(\.text),
                console: await process.console.recentLines.map(\.text))
        case .failed(let error):
            await instance.kill()
            throw .notReady(error)
        }
    }

    private enum ReadinessOutcome: Sendable {
        case ready
        case exited(VMMExit)
        case failed(FirecrackerAPIError)
    }

    /// Asks the guest to shut down (Ctrl-Alt-Del), waits `grace` for Firecracker to exit, then
    /// kills it. Always removes the socket.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> VMMExit {
        do {
            try await client.sendCtrlAltDel()
        } catch {
            logger.debug("SendCtrlAltDel failed; killing", metadata: ["error": "\(error)"])
        }
        let exit: VMMExit
        if let clean = await process.exit(within: grace) {
            exit = clean
        } else {
            logger.warning("guest did not stop within the grace period; killing the VMM", metadata: ["socket": "\(socketPath)"])
            exit = await process.terminate(grace: .seconds(2))
        }
        await cleanUp()
        return exit
    }

    /// Kills the VMM at once and removes the socket.
    @discardableResult
    public func kill() async -> VMMExit {
        let exit = await process.terminate(grace: .seconds(2))
        await cleanUp()
        return exit
    }

    private func cleanUp() async {
        await client.close()
        unlink(socketPath)
    }

    private static func removeStaleSocket(at path: String, logger: Logger) async throws(StartError) {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        let probe = FirecrackerClient(
            socketPath: path, configuration: .init(requestTimeout: .milliseconds(500), connectTimeout: .milliseconds(200)))
        defer { Task { await probe.close() } }
        do {
            _ = try await probe.send(APIRequest(method: .get, path: "/"))
            throw StartError.socketInUse(path: path)
        } catch let error as StartError {
            throw error
        } catch {
            logger.info("removing a stale API socket", metadata: ["socket": "\(path)"])
            unlink(path)
        }
    }
}
