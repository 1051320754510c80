import FirecrackerAPI
import Logging
import MicroVMHost
import NIOPosix
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// The VM handle's use of the host module's `VMNetwork`: its calls run `ip` and `nft` and block,
/// so they go to NIO's thread pool.
enum VMNetworking {
    /// Makes the VM's network: namespace mode for a jailed VM unless the spec says `tap`; the
    /// TAP belongs to a uid leased for the VM unless the spec fixes the jail's uid (or the VM
    /// runs unjailed, as this process's user). `tapIndex`: the lease a TAP-mode network must
    /// take (a restored guest keeps the addresses it was snapshotted with).
    static func setUp(
        _ network: NetworkSpec, for id: VMIdentifier, sandboxed: Bool, jailer: JailerConfiguration,
        configuration: VMNetworkConfiguration, tapIndex: Int? = nil, logger: Logger
    ) async throws(MicroVMError) -> NetworkAttachment {
        let mode: NetworkLease.Mode =
            switch network.mode {
            case .namespace?: .namespace
            case .tap?: .tap
            case nil: sandboxed ? .namespace : .tap
            }
        if mode == .namespace, !sandboxed {
            throw .invalidSpec(
                id: id.rawValue,
                problems: [SpecProblem(field: "network.mode", message: "namespace mode needs the jailer (it joins the namespace with --netns)", hint: "use mode tap for an unjailed VM")])
        }
        let owner: VMNetworkOwner =
            !sandboxed ? .fixed(uid: getuid(), gid: getgid())
            : (jailer.uid != JailerConfiguration.defaultUID || jailer.gid != JailerConfiguration.defaultGID)
                ? .fixed(uid: jailer.uid, gid: jailer.gid) : .leased
        let policy = network.policy().policy
        let index = mode == .tap ? tapIndex : nil
        do {
            return try await NIOThreadPool.singleton.runIfActive {
                do throws(NetworkError) {
                    return try VMNetwork(configuration: configuration, logger: logger).setUp(for: id, policy: policy, mode: mode, owner: owner, index: index)
                } catch {
                    throw error
                }
            }
        } catch let error as NetworkError {
            throw .network(id: id.rawValue, error)
        } catch {
            throw .network(id: id.rawValue, .invalidSetting(name: "network", value: "\(error)", reason: "the thread pool refused the work", fix: "retry"))
        }
    }

    /// Removes the VM's network (idempotent); a failure is logged: `gc` finds what is left.
    static func tearDown(_ id: VMIdentifier, configuration: VMNetworkConfiguration, logger: Logger) async {
        do {
            try await NIOThreadPool.singleton.runIfActive {
                do throws(NetworkError) {
                    try VMNetwork(configuration: configuration, logger: logger).tearDown(id)
                } catch {
                    throw error
                }
            }
        } catch {
            logger.error("network teardown incomplete", metadata: ["vm": "\(id)", "error": "\(error)"])
        }
    }
}
