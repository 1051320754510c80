#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// How a process ended, independent of the library that spawned it, so the jail code can explain
/// a jailer failure without depending on the driver's process API.
public enum ProcessTermination: Sendable, Hashable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exit status \(code)"
        case .signaled(let signal): "killed by signal \(signal)\(Self.signalName(signal).map { " (\($0))" } ?? "")"
        }
    }

    static func signalName(_ signal: Int32) -> String? {
        switch signal {
        case 1: "SIGHUP"
        case 2: "SIGINT"
        case 6: "SIGABRT"
        case 9: "SIGKILL"
        case 11: "SIGSEGV"
        case 13: "SIGPIPE"
        case 15: "SIGTERM"
        case 31: "SIGSYS"
        default: nil
        }
    }
}

/// Why a jail id was refused. The jailer checks the same rules; refusing here means nothing is
/// created on disk for an id the jailer would reject after we had staged files for it.
public enum IdentifierProblem: Sendable, Hashable, CustomStringConvertible {
    case empty
    case tooLong(length: Int)
    case invalidCharacter(Character, position: Int)

    public var description: String {
        switch self {
        case .empty: "it is empty"
        case .tooLong(let length): "it is \(length) characters long (at most \(VMIdentifier.maximumLength))"
        case .invalidCharacter(let character, let position):
            "character \(String(reflecting: String(character))) at position \(position) is not an ASCII letter, digit or '-'"
        }
    }
}

/// What the jailer's own message says went wrong; picks the hint. The message itself is always
/// kept verbatim next to it.
public enum JailerFailureKind: String, Sendable, Hashable, CaseIterable {
    /// The jailer could not parse its command line.
    case invalidArguments
    /// `--id` was refused.
    case invalidIdentifier
    /// The `--exec-file` (Firecracker) does not exist or is not a file. Guide issue 4.
    case firecrackerMissing
    /// v1.12.x and older want "firecracker" in the exec file name.
    case execFileName
    /// `--chroot-base-dir` does not exist or is not a directory. Guide issue 3.
    case chrootBaseMissing
    /// Creating, copying into or pivoting into the jail was refused. Guide issue 3.
    case chrootPermission
    /// A cgroup hierarchy or controller the arguments need is not there. Guide issue 2.
    case cgroupUnavailable
    /// A cgroup file could not be written (a bad value, or v1 cpuset without mems). Guide issue 7.
    case cgroupWrite
    /// Something of an earlier jail with this id is still there (device nodes, pid file, old_root).
    case staleJail
    /// `--netns` names no network namespace.
    case networkNamespace
    /// `--resource-limit` was refused or could not be applied.
    case resourceLimit
    /// exec of the copied Firecracker failed (noexec mount, wrong architecture).
    case execFailed
    /// Anything the mapping does not know.
    case other
}

/// Everything that can go wrong while preparing, launching, supervising or tearing down a jailed
/// VMM. Each case carries what it was about (VM id, path, the jailer's own message) and `hint`
/// says what the user can do about it.
public enum JailError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A VM id the jailer would refuse; nothing was created.
    case invalidIdentifier(String, IdentifierProblem)
    /// A configuration value (an environment variable or a field) is unusable.
    case invalidSetting(name: String, value: String, reason: String, fix: String)
    /// Resource limits that cannot work, alone or together.
    case invalidResourceLimits(String, fix: String)
    /// A path inside the jail that cannot be used.
    case invalidJailPath(String, reason: String)
    /// A Unix socket's host path is longer than `sun_path` allows; connecting to it would fail.
    case socketPathTooLong(path: String, length: Int, limit: Int)
    /// The jailer must run as root. Guide issue 3.
    case notRoot(effectiveUID: UInt32)
    /// The jailer binary is missing or unusable. Guide issues 1 and 8.
    case jailerMissing(path: String, reason: String)
    /// `jailer --version` did not answer as expected.
    case jailerVersionUnknown(path: String, output: String)
    /// The Firecracker binary is missing or unusable. Guide issue 4.
    case firecrackerMissing(path: String, reason: String)
    /// Jailer v1.12 and older refuse an exec file whose name lacks "firecracker".
    case firecrackerNameRejected(name: String, jailerVersion: String)
    /// The chroot base cannot hold jails. Guide issue 3.
    case chrootBaseUnusable(path: String, reason: String)
    /// The cgroups the limits need are not available. Guide issue 2.
    case cgroupUnavailable(version: CgroupVersion?, detail: String)
    /// `/dev/kvm` cannot be used.
    case kvmUnavailable(String)
    /// `--netns` names nothing.
    case networkNamespaceMissing(path: String)
    /// A NUMA node that the host does not have.
    case numaNodeMissing(Int)
    /// The jail of this id is in use by a live process; it was left alone.
    case jailBusy(id: String, pid: Int32, jailDirectory: String)
    /// A jail path is not what we expect (a symlink, a mount point, a foreign file).
    case unsafeJailPath(path: String, reason: String)
    /// Copying or linking a file into the jail failed.
    case stagingFailed(id: String, source: String, destination: String, SystemCallError)
    /// A read-only image linked into the jail cannot be read by the VM user; it was not changed.
    case stagedFileUnreadable(id: String, path: String, uid: UInt32, gid: UInt32, ownerUID: UInt32, ownerGID: UInt32, mode: UInt32)
    /// The pid file did not appear (or stayed empty) in time.
    case pidFileTimeout(id: String, path: String, waitedMilliseconds: Int64)
    /// The pid file holds something that is not a pid.
    case pidFileInvalid(id: String, path: String, contents: String)
    /// The VMM ended right after the launch. Guide issue 5.
    case vmmExitedEarly(id: String, termination: ProcessTermination?, detail: String)
    /// The API socket never appeared or never answered. Guide issue 6.
    case apiSocketTimeout(id: String, hostPath: String, waitedMilliseconds: Int64)
    /// A limit is not in force on the running VMM. Guide issue 7.
    case limitsNotEnforced(id: String, detail: String)
    /// The jailer exited with an error; `message` is its own text, verbatim. Guide issues 1-7.
    case jailerFailed(id: String, termination: ProcessTermination, kind: JailerFailureKind, message: String)
    /// A system call failed outside the more specific cases.
    case system(id: String?, SystemCallError)
    /// The VMM could not be stopped.
    case vmmStillRunning(id: String, pid: Int32, detail: String)
    /// A cgroup directory could not be removed.
    case cgroupRemovalFailed(path: String, detail: String)
    /// Some teardown steps failed; each failure is listed, the other steps ran.
    case teardownIncomplete(id: String, failures: [JailError])
    /// Sandbox policy `required` and the sandbox cannot work; every missing piece is listed.
    case sandboxUnavailable(problems: [JailError])
    /// The wait was cancelled.
    case cancelled(String)

    public var description: String {
        "\(summary). Hint: \(hint)"
    }

    /// The failure alone, without the hint.
    public var summary: String {
        switch self {
        case .invalidIdentifier(let id, let problem):
            "invalid VM id \(String(reflecting: id)): \(problem)"
        case .invalidSetting(let name, let value, let reason, _):
            "invalid \(name)=\(String(reflecting: value)): \(reason)"
        case .invalidResourceLimits(let reason, _):
            "invalid resource limits: \(reason)"
        case .invalidJailPath(let path, let reason):
            "cannot use \(path) inside the jail: \(reason)"
        case .socketPathTooLong(let path, let length, let limit):
            "socket path \(path) is \(length) bytes; Unix sockets allow at most \(limit)"
        case .notRoot(let euid):
            "the jailer must run as root, but this process has effective uid \(euid)"
        case .jailerMissing(let path, let reason):
            "jailer binary \(path) is unusable: \(reason)"
        case .jailerVersionUnknown(let path, let output):
            "\(path) --version did not report a jailer version (output: \(String(reflecting: output)))"
        case .firecrackerMissing(let path, let reason):
            "Firecracker binary \(path) is unusable: \(reason)"
        case .firecrackerNameRejected(let name, let version):
            "jailer \(version) refuses exec file name \(String(reflecting: name)): it must contain \"firecracker\""
        case .chrootBaseUnusable(let path, let reason):
            "chroot base \(path) cannot hold jails: \(reason)"
        case .cgroupUnavailable(let version, let detail):
            "cgroup\(version.map { " \($0)" } ?? "s") unavailable: \(detail)"
        case .kvmUnavailable(let reason):
            "/dev/kvm is unusable: \(reason)"
        case .networkNamespaceMissing(let path):
            "network namespace \(path) does not exist"
        case .numaNodeMissing(let node):
            "NUMA node \(node) does not exist on this host"
        case .jailBusy(let id, let pid, let dir):
            "jail \(dir) of VM \(id) is in use by live process \(pid)"
        case .unsafeJailPath(let path, let reason):
            "refusing to touch \(path): \(reason)"
        case .stagingFailed(let id, let source, let destination, let error):
            "VM \(id): staging \(source) as \(destination) failed: \(error)"
        case .stagedFileUnreadable(let id, let path, let uid, let gid, let ownerUID, let ownerGID, let mode):
            "VM \(id): \(path) (owner \(ownerUID):\(ownerGID), mode \(String(mode & 0o7777, radix: 8))) is not readable by the VM user \(uid):\(gid)"
        case .pidFileTimeout(let id, let path, let waited):
            "VM \(id): no pid in \(path) after \(waited) ms"
        case .pidFileInvalid(let id, let path, let contents):
            "VM \(id): \(path) holds \(String(reflecting: contents)), not a pid"
        case .vmmExitedEarly(let id, let termination, let detail):
            "VM \(id): the VMM ended right after the launch\(termination.map { " (\($0))" } ?? "")\(detail.isEmpty ? "" : ": \(detail)")"
        case .apiSocketTimeout(let id, let hostPath, let waited):
            "VM \(id): API socket \(hostPath) did not answer within \(waited) ms"
        case .limitsNotEnforced(let id, let detail):
            "VM \(id): resource limits are not in force: \(detail)"
        case .jailerFailed(let id, let termination, _, let message):
            "VM \(id): the jailer failed (\(termination)): \(message)"
        case .system(let id, let error):
            (id.map { "VM \($0): " } ?? "") + error.description
        case .vmmStillRunning(let id, let pid, let detail):
            "VM \(id): VMM process \(pid) is still running: \(detail)"
        case .cgroupRemovalFailed(let path, let detail):
            "cgroup \(path) was not removed: \(detail)"
        case .teardownIncomplete(let id, let failures):
            "VM \(id): teardown incomplete: " + failures.map(\.summary).joined(separator: "; ")
        case .sandboxUnavailable(let problems):
            "the jailer sandbox is required but unavailable: " + problems.map(\.summary).joined(separator: "; ")
        case .cancelled(let what):
            "\(what) was cancelled"
        }
    }

    public var hint: String {
        switch self {
        case .invalidIdentifier:
            "use 1-64 ASCII letters, digits or '-' (the jailer's rule), or VMIdentifier.derive(from:) to make a valid, collision-free id from any name"
        case .invalidSetting(_, _, _, let fix), .invalidResourceLimits(_, let fix):
            fix
        case .invalidJailPath:
            "use an absolute in-jail path without '..' outside /dev and /run (the jailer creates those) and not the Firecracker copy or its pid file"
        case .socketPathTooLong:
            "use a shorter chroot base (MICROVM_JAILER_CHROOT_BASE), VM id or in-jail socket path, or connect through a short symlink to the socket's directory"
        case .notRoot:
            "run as root (the jailer needs to chroot, mknod and write cgroups), or set the sandbox policy to `disabled` for unjailed development runs"
        case .jailerMissing:
            "install the jailer from the Firecracker release tarball matching your Firecracker (e.g. to /usr/local/bin/jailer, chmod 0755) and point MICROVM_JAILER_BIN at it"
        case .jailerVersionUnknown:
            "MICROVM_JAILER_BIN must point at Firecracker's jailer binary; run it with --version to check"
        case .firecrackerMissing:
            "install Firecracker from the same release as the jailer and point MICROVM_FIRECRACKER_BIN at it (an executable regular file; MICROVM_JAILER_FIRECRACKER_BIN, when set, is the jailed VMs' own)"
        case .firecrackerNameRejected:
            "rename or symlink the binary so its file name contains \"firecracker\" (e.g. firecracker-v1.12.1), or use jailer 1.13 or newer"
        case .chrootBaseUnusable:
            "create the directory as root (mkdir -p, mode 0755) on a filesystem mounted without noexec and nodev, or set MICROVM_JAILER_CHROOT_BASE to one"
        case .cgroupUnavailable(let version, _):
            version == .v2
                ? "on a cgroup v2 host enable the controller in /sys/fs/cgroup/cgroup.subtree_control, or drop the limit that needs it; on a v1/hybrid host use cgroup version 1"
                : "mount the v1 controller (e.g. mount -t cgroup -o memory cgroup /sys/fs/cgroup/memory), use cgroup version 2 on a v2 host (MICROVM_JAILER_CGROUP_VERSION=auto), or drop the limit that needs it"
        case .kvmUnavailable:
            "load kvm (modprobe kvm_intel or kvm_amd) and make sure /dev/kvm is a character device root can open read-write; nested hosts need nested virtualization enabled"
        case .networkNamespaceMissing:
            "create it first (ip netns add NAME gives /var/run/netns/NAME) or leave MICROVM_JAILER_NETNS unset"
        case .numaNodeMissing:
            "pick a node listed in /sys/devices/system/node/online, or leave MICROVM_JAILER_NUMA_NODE unset"
        case .jailBusy(_, let pid, _):
            "stop that VM first (its Firecracker is pid \(pid)), or launch under another id"
        case .unsafeJailPath:
            "inspect the path by hand; the library never follows links out of the chroot base and never unmounts what it did not mount"
        case .stagingFailed(_, _, _, let error):
            switch error.errno {
            case ENOSPC: "the filesystem of the chroot base is full; free space or move the chroot base"
            case EACCES, EPERM: "run as root, and check that the source is readable and the chroot base writable"
            case ENOENT: "check that the source file exists"
            default: "check the source file and the chroot base"
            }
        case .stagedFileUnreadable(_, _, let uid, let gid, _, _, _):
            "the library never changes a host file's owner or mode: make it readable by uid \(uid) or gid \(gid) yourself (e.g. chmod o+r, or chgrp \(gid) and chmod g+r), or stage it as a per-VM copy (.readOnlyCopy)"
        case .pidFileTimeout:
            "the jailer did not start Firecracker: read the jailer's exit status and stderr (JailerFailure.classify), and check that the jail was clean before the launch"
        case .pidFileInvalid:
            "another program wrote into the jail; tear the jail down and launch again"
        case .vmmExitedEarly:
            "read Firecracker's log (--log-path inside the jail) and stdout; check that the kernel and drive paths are in-jail paths, that the memory limit leaves headroom above the guest RAM, and that the VM user can read every staged file"
        case .apiSocketTimeout:
            "connect to the host path <jail>/root/<in-jail socket path> (note the root/ part), pass the in-jail path to --api-sock, and check that Firecracker is still alive"
        case .limitsNotEnforced:
            "check that the controller is mounted (v1) or enabled in every ancestor's cgroup.subtree_control (v2), and that the jailer was given the --cgroup arguments"
        case .jailerFailed(_, _, let kind, _):
            Self.hint(for: kind)
        case .system:
            "see the system error above"
        case .vmmStillRunning:
            "kill it by hand (kill -9 PID) and run the teardown again"
        case .cgroupRemovalFailed:
            "a process is still in the cgroup (often a zombie nobody reaped: make the supervisor a child subreaper and reap it); retry the teardown once it is gone"
        case .teardownIncomplete:
            "fix the listed failures and run the teardown again; it is idempotent"
        case .sandboxUnavailable(let problems):
            problems.map(\.hint).joined(separator: "; ")
                + "; or choose sandbox policy `preferred` (falls back to an unjailed VMM with a warning) or `disabled`"
        case .cancelled:
            "nothing to do"
        }
    }

    static func hint(for kind: JailerFailureKind) -> String {
        switch kind {
        case .invalidArguments:
            "the jailer did not accept its command line; check that jailer and Firecracker come from the same release as this library expects (v1.12.1)"
        case .invalidIdentifier:
            "use 1-64 ASCII letters, digits or '-' (VMIdentifier validates this before launch)"
        case .firecrackerMissing:
            "point MICROVM_FIRECRACKER_BIN (or, for jailed VMs only, MICROVM_JAILER_FIRECRACKER_BIN) at an existing Firecracker binary"
        case .execFileName:
            "jailer 1.12 and older want \"firecracker\" in the exec file name: rename the binary (e.g. firecracker-v1.12.1)"
        case .chrootBaseMissing:
            "create the chroot base directory (mkdir -p /srv/jailer) or set MICROVM_JAILER_CHROOT_BASE"
        case .chrootPermission:
            "run as root and keep the chroot base on a local filesystem mounted without noexec/nodev"
        case .cgroupUnavailable:
            "use the host's cgroup version (MICROVM_JAILER_CGROUP_VERSION=auto) and make sure the controllers for the requested limits are mounted (v1) or enabled (v2)"
        case .cgroupWrite:
            "check the value in the message; on cgroup v1 a cpuset needs both cpuset.cpus and cpuset.mems, and quotas must fit the parent cgroup's"
        case .staleJail:
            "a jail of this id is left over from an earlier run: tear it down (JailTeardown) before launching again"
        case .networkNamespace:
            "create the namespace first (ip netns add NAME) or leave MICROVM_JAILER_NETNS unset"
        case .resourceLimit:
            "only fsize and no-file are supported, with unsigned integer values"
        case .execFailed:
            "the chroot base must allow exec (no noexec mount) and the Firecracker binary must match this machine's architecture"
        case .other:
            "read the jailer's message above; run the same command by hand as root to reproduce"
        }
    }
}
