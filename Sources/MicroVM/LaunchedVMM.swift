public import FirecrackerAPI
public import Logging
public import MicroVMHost
public import SystemPackage

import class Foundation.NSString

#if canImport(Glibc)
    import Glibc
#endif

/// A Firecracker started under a ``SandboxPolicy``: jailed when the host can, and otherwise
/// (policy `preferred`, or `disabled`) unjailed with the same file layout, so callers write one
/// code path and can always ask ``isSandboxed``.
///
/// Files are staged the same way in both cases (into `<chroot base>/<exec>/<id>/root`); for
/// the API, ``apiPath(_:)`` gives the path Firecracker must be told: the in-jail path when jailed,
/// the staged file's host path when not. Teardown removes the directory either way.
public final class LaunchedVMM: Sendable {
    public enum Backend: Sendable {
        case jailed(JailedFirecracker)
        case unjailed(FirecrackerInstance)
    }

    public let backend: Backend
    /// Why the VM runs the way it does; for `unjailed`, the preflight problems that prevented a jail.
    public let decision: SandboxDecision
    public let jail: Jail
    public let staged: [StagedFile]
    private let logger: Logger

    private init(backend: Backend, decision: SandboxDecision, jail: Jail, staged: [StagedFile], logger: Logger) {
        self.backend = backend
        self.decision = decision
        self.jail = jail
        self.staged = staged
        self.logger = logger
    }

    /// Whether the VMM runs inside the jailer's sandbox.
    public var isSandboxed: Bool {
        if case .jailed = backend { return true }
        return false
    }

    public var client: FirecrackerClient {
        switch backend {
        case .jailed(let vm): vm.client
        case .unjailed(let vm): vm.client
        }
    }

    public var console: Console {
        switch backend {
        case .jailed(let vm): vm.console
        case .unjailed(let vm): vm.process.console
        }
    }

    /// The pid of the Firecracker process itself.
    public var pid: Int32 {
        switch backend {
        case .jailed(let vm): vm.vmm.pid
        case .unjailed(let vm): vm.process.pid
        }
    }

    /// The path to give Firecracker's API for a file staged at `jailPath`.
    public func apiPath(_ jailPath: FilePath) -> String {
        switch backend {
        case .jailed: return jailPath.string
        case .unjailed:
            return staged.first { $0.jailPath == jailPath }?.hostPath.string
                ?? jail.layout.rootDirectory.string + jailPath.string
        }
    }

    /// Checks the host, applies `policy`, and starts Firecracker jailed or not.
    ///
    /// `required` (the default) throws `JailError.sandboxUnavailable` naming every missing piece
    /// and its fix; `preferred` logs a loud warning per problem and runs unjailed.
    public static func launch(
        policy: SandboxPolicy = .required, configuration: JailerConfiguration, id: VMIdentifier,
        limits: ResourceLimits = .recommended, guest: GuestResources, staging: [StagingRequest] = [],
        logPath: FilePath? = nil, readinessTimeout: Duration = .seconds(5), logger: Logger
    ) async throws(JailError) -> LaunchedVMM {
        var logger = logger
        logger[metadataKey: "vm"] = "\(id.rawValue)"
        let decision = try policy.evaluate(configuration: configuration, limits: limits, logger: logger)
        let jail = try Jail(configuration: configuration, id: id)
        switch decision {
        case .jailed:
            let vm = try await JailedFirecracker.start(
                jail: jail, limits: limits, guest: guest, staging: staging,
                firecrackerArguments: JailerCommand.firecrackerArguments(logPath: logPath),
                readinessTimeout: readinessTimeout, logger: logger)
            return LaunchedVMM(backend: .jailed(vm), decision: decision, jail: jail, staged: vm.staged, logger: logger)
        case .unjailed:
            logger.warning("starting Firecracker UNJAILED", metadata: ["policy": "\(policy.rawValue)"])
            try await jail.prepare(logger: logger)
            do throws(JailError) {
                // Same layout, owned by whoever runs us: there is no VM user without the jailer.
                let staged = try JailStager(layout: jail.layout, uid: getuid(), gid: getgid(), logger: logger)
                    .stage(staging)
                let socket = try jail.apiSocketHostPath().string
                // The jailer would have made run/; here the directory is ours to make.
                let runDirectory = (socket as NSString).deletingLastPathComponent
                if mkdir(runDirectory, 0o700) != 0 && errno != EEXIST {
                    throw .system(id: id.rawValue, SystemCallError(call: "mkdir", subject: runDirectory, errno: errno))
                }
                var arguments: [String] = []
                if let logPath {
                    arguments += ["--log-path", jail.layout.rootDirectory.string + logPath.string]
                }
                let vm: FirecrackerInstance
                do {
                    vm = try await FirecrackerInstance.start(
                        firecracker: configuration.firecrackerBinary, socketPath: socket, arguments: arguments,
                        readinessTimeout: readinessTimeout, logger: logger)
                } catch {
                    throw .vmmExitedEarly(id: id.rawValue, termination: nil, detail: "\(error)")
                }
                return LaunchedVMM(backend: .unjailed(vm), decision: decision, jail: jail, staged: staged, logger: logger)
            } catch {
                _ = await jail.teardown(logger: logger)
                throw error
            }
        }
    }

    /// Writes to the guest's serial input.
    public func write(_ text: String) {
        switch backend {
        case .jailed(let vm): vm.write(text)
        case .unjailed(let vm): vm.process.write(text)
        }
    }

    /// The VMM's exit if it happens within `timeout`.
    public func exit(within timeout: Duration?) async -> VMMExit? {
        switch backend {
        case .jailed(let vm): await vm.exit(within: timeout)
        case .unjailed(let vm): await vm.process.exit(within: timeout)
        }
    }

    /// Ctrl-Alt-Del, `grace`, then kill; the VM's directory (and jail, cgroups) are removed.
    @discardableResult
    public func stop(grace: Duration = .seconds(5)) async -> (exit: VMMExit, teardown: TeardownReport) {
        switch backend {
        case .jailed(let vm):
            return await vm.stop(grace: grace)
        case .unjailed(let vm):
            let exit = await vm.stop(grace: grace)
            return (exit, await jail.teardown(logger: logger))
        }
    }

    /// Kills the VMM at once and removes everything it had.
    @discardableResult
    public func kill() async -> (exit: VMMExit, teardown: TeardownReport) {
        switch backend {
        case .jailed(let vm):
            return await vm.kill()
        case .unjailed(let vm):
            let exit = await vm.kill()
            return (exit, await jail.teardown(logger: logger))
        }
    }
}
