import FirecrackerAPI
import MicroVMHost
import SystemPackage

/// Where a VM's files live under its root directory (the jail's `root/`, or the same directory
/// for an unjailed VM). Firecracker is given these paths (translated by the executor); the host
/// reaches them under the root.
enum VMFiles {
    // Flat: each directory is an inode made and freed per VM (and an ext4 without a journal
    // skips inodes freed in the last minute or more when it allocates), so a launch makes no
    // directory beyond the jail's own.
    static let kernel: FilePath = "/kernel"
    static let initrd: FilePath = "/initrd"
    /// The driver's own files: Firecracker's log FIFO (a jailed VM's, or one under a monitor),
    /// metrics, vsock socket, config file (a jailed VM's).
    static let log: FilePath = "/firecracker.log"
    static let metrics: FilePath = "/metrics.json"
    static let vsock: FilePath = "/vsock.sock"
    static let configFile: FilePath = "/vm.json"
    /// A custom CPU template, for a config-file boot: Firecracker's config file names a file
    /// holding it (`"cpu-config": "<path>"`), where its API takes the object itself.
    static let cpuTemplate: FilePath = "/cpu-template.json"
    /// Where Firecracker writes a snapshot before the driver moves it to its destination.
    static let snapshots: FilePath = "/snapshots"
    static let snapshotState: FilePath = "/snapshots/state"
    static let snapshotMemory: FilePath = "/snapshots/memory"
    /// A snapshot being restored.
    static let restoreState: FilePath = "/restore.state"
    static let restoreMemory: FilePath = "/restore.memory"
    /// The page-fault server's socket of a lazy restore (``RestoreMemory/lazy``).
    static let lazyMemorySocket: FilePath = FilePath("/" + LazyMemory.socketName)

    static func drive(_ id: String) -> FilePath {
        FilePath("/drives").appending(id)
    }

    /// What to stage for `spec`. `driveSources` replaces drive images (a restore takes the
    /// snapshot's copies of writable drives); `boot` is false for a restore (no kernel needed).
    /// `logFIFO` is false when Firecracker's log is a pipe it opens through the driver's `/proc`.
    static func staging(for spec: VMSpec, driveSources: [String: String] = [:], boot: Bool = true, logFIFO: Bool = true) -> [StagingRequest] {
        // `snapshots` is made when a snapshot is taken: a directory less for every launch.
        var requests: [StagingRequest] = logFIFO ? [.fifo(at: log)] : []
        if boot {
            requests.append(.readOnly(FilePath(spec.boot.kernel), at: kernel))
            if let initrd = spec.boot.initrd { requests.append(.readOnly(FilePath(initrd), at: self.initrd)) }
        }
        if spec.logging?.metrics == true { requests.append(.emptyFile(at: metrics)) }
        for drive in spec.drives {
            let source = FilePath(driveSources[drive.id] ?? drive.path)
            requests.append(drive.isReadOnly ? .readOnly(source, at: self.drive(drive.id)) : .writableCopy(source, at: self.drive(drive.id)))
        }
        return requests
    }

    /// Firecracker's view of `spec`, every path translated by `path`.
    static func configuration(for spec: VMSpec, path: (FilePath) -> String) -> FullVmConfiguration {
        FullVmConfiguration(
            balloon: spec.balloon,
            drives: spec.drives.map { drive in
                Drive(
                    driveId: drive.id, isRootDevice: drive.isRoot, pathOnHost: path(self.drive(drive.id)),
                    isReadOnly: drive.isReadOnly, partuuid: drive.partuuid, cacheType: drive.cacheType,
                    rateLimiter: drive.rateLimiter, ioEngine: drive.ioEngine)
            },
            bootSource: BootSource(
                kernelImagePath: path(kernel), bootArgs: spec.boot.args.joined(separator: " "),
                initrdPath: spec.boot.initrd == nil ? nil : path(initrd)),
            cpuConfig: spec.cpuConfig,
            machineConfig: MachineConfiguration(
                vcpuCount: spec.machine.vcpus, memSizeMiB: spec.machine.memoryMiB, smt: spec.machine.smt,
                trackDirtyPages: spec.machine.trackDirtyPages, hugePages: spec.machine.hugePages,
                cpuTemplate: spec.machine.cpuTemplate),
            mmdsConfig: spec.mmds?.configuration,
            networkInterfaces: spec.networkInterfaces.map { interface in
                NetworkInterface(
                    ifaceId: interface.id, hostDevName: interface.tap, guestMac: interface.mac, mtu: interface.mtu,
                    rxRateLimiter: interface.rxRateLimiter, txRateLimiter: interface.txRateLimiter)
            },
            vsock: spec.vsock.map { Vsock(guestCid: $0.guestCid, udsPath: path(vsock)) },
            entropy: spec.entropy)
    }
}

/// A Unix socket in a VM's directory, as this process can connect to it.
///
/// A socket address holds at most 103 bytes of path here (SwiftNIO's limit), and `<chroot base>/firecracker/<id>/root/run/firecracker.socket`
/// is longer for an id of more than about 50 characters (the jailer allows 64), although the
/// path Firecracker itself binds is short. Such a socket is reached through the VMM's working
/// directory, which is the VM's directory for both executors (the jailer's chroot, or the
/// directory the driver starts an unjailed Firecracker in): `/proc/<pid>/cwd/<path>`.
enum SocketPath {
    /// SwiftNIO's limit on a socket path, stricter than Linux's 107 bytes.
    static let limit = JailLayout.maximumSocketPathLength

    static func connectable(_ socket: String, vmDirectory: String, vmmPID: Int32?) -> String {
        guard socket.utf8.count > limit, let vmmPID, socket.hasPrefix(vmDirectory + "/") else { return socket }
        return "/proc/\(vmmPID)/cwd/" + socket.dropFirst(vmDirectory.count + 1)
    }
}

/// Firecracker's `--config-file` document: its API's full configuration, except that a custom
/// CPU template is a path to a file holding it (`"cpu-config": "/cpu-template.json"`), as
/// Firecracker 1.12's config-file reader takes it ("expected path string" otherwise).
struct ConfigFileDocument: Encodable {
    var configuration: FullVmConfiguration
    var cpuTemplatePath: String?

    init(_ configuration: FullVmConfiguration, cpuTemplatePath: String?) {
        self.configuration = configuration
        self.configuration.cpuConfig = nil
        self.cpuTemplatePath = cpuTemplatePath
    }

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    func encode(to encoder: any Encoder) throws {
        try configuration.encode(to: encoder)
        if let cpuTemplatePath {
            var container = encoder.container(keyedBy: Key.self)
            try container.encode(cpuTemplatePath, forKey: Key(stringValue: "cpu-config"))
        }
    }
}
