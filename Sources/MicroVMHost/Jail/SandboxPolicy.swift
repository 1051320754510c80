#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
public import Logging
import SystemPackage

/// Whether a VM may run without the jailer.
public enum SandboxPolicy: String, Sendable, Hashable, CaseIterable, Codable {
    /// Refuse to start without a working jailer (the default): a VMM escaping an unjailed guest
    /// owns the host, so missing pieces are errors naming each piece and its fix.
    case required
    /// Use the jailer when it works; otherwise run unjailed with a loud warning.
    case preferred
    /// Never jail (development only).
    case disabled

    public static let environmentVariable = "MICROVM_SANDBOX_POLICY"

    /// Reads `MICROVM_SANDBOX_POLICY` (unset or empty: `required`).
    public init(environment: [String: String]) throws(JailError) {
        let raw = (environment[Self.environmentVariable] ?? "").trimmingWhitespace()
        if raw.isEmpty {
            self = .required
            return
        }
        guard let policy = SandboxPolicy(rawValue: raw.lowercased()) else {
            throw .invalidSetting(
                name: Self.environmentVariable, value: raw, reason: "not a sandbox policy",
                fix: "set \(Self.environmentVariable) to required (default), preferred or disabled")
        }
        self = policy
    }

    /// Applies the policy to a preflight result. `required` throws `sandboxUnavailable` listing
    /// every problem; `preferred` falls back with a warning per problem; `disabled` warns once.
    public func decide(_ report: PreflightReport, logger: Logger) throws(JailError) -> SandboxDecision {
        switch self {
        case .disabled:
            logger.warning(
                "SANDBOX DISABLED: Firecracker will run unjailed, as this process's user, with no chroot, cgroup limits or namespaces; do not use this in production",
                metadata: ["policy": "disabled"])
            return .unjailed(reasons: [])
        case .required:
            if report.isReady { return .jailed(report) }
            throw .sandboxUnavailable(problems: report.problems)
        case .preferred:
            if report.isReady { return .jailed(report) }
            logger.warning(
                "SANDBOX UNAVAILABLE: falling back to an UNJAILED Firecracker (policy preferred); a guest escape would compromise the host. Fix the problems below or set the policy to required to refuse instead.",
                metadata: ["policy": "preferred", "problems": "\(report.problems.count)"])
            for problem in report.problems {
                logger.warning("sandbox problem: \(problem.summary)", metadata: ["hint": "\(problem.hint)"])
            }
            return .unjailed(reasons: report.problems)
        }
    }

    /// Runs the preflight unless the policy is `disabled`, then decides.
    public func evaluate(
        configuration: JailerConfiguration, limits: ResourceLimits = .none, logger: Logger
    ) throws(JailError) -> SandboxDecision {
        // Unjailed, Firecracker's binary is the one thing to check: missing, it was found only
        // once the VM's files and directory had been made (then removed again).
        let firecracker = configuration.firecrackerBinary.string
        if self == .disabled {
            if let problem = SandboxPreflight.executableProblem(firecracker) { throw .firecrackerMissing(path: firecracker, reason: problem) }
            return try decide(PreflightReport(problems: []), logger: logger)
        }
        let decision = try decide(SandboxPreflight.check(configuration: configuration, limits: limits), logger: logger)
        if case .unjailed(let reasons) = decision, let missing = reasons.first(where: { if case .firecrackerMissing = $0 { true } else { false } }) {
            throw missing
        }
        return decision
    }
}

/// The outcome of applying a sandbox policy; every VM carries it so it can report whether it
/// is sandboxed.
public enum SandboxDecision: Sendable, Hashable {
    case jailed(PreflightReport)
    /// Unjailed: `reasons` are the preflight problems (`preferred`), empty for `disabled`.
    case unjailed(reasons: [JailError])

    public var isSandboxed: Bool {
        if case .jailed = self { return true }
        return false
    }
}

/// What the preflight found.
public struct PreflightReport: Sendable, Hashable {
    public var problems: [JailError]
    public var jailerVersion: JailerVersion?
    public var cgroupVersion: CgroupVersion?
    public var cgroupHost: CgroupHost?

    public init(
        problems: [JailError], jailerVersion: JailerVersion? = nil, cgroupVersion: CgroupVersion? = nil,
        cgroupHost: CgroupHost? = nil
    ) {
        self.problems = problems
        self.jailerVersion = jailerVersion
        self.cgroupVersion = cgroupVersion
        self.cgroupHost = cgroupHost
    }

    public var isReady: Bool { problems.isEmpty }
}

/// Checks, before any launch, every piece a jailed VMM needs, and names each missing piece.
public enum SandboxPreflight {
    /// `statvfs` flags (Linux ABI values).
    static let mountNoDevice: UInt = 4
    static let mountNoExec: UInt = 8

    /// Checks: configuration values; running as root; the jailer binary (exists, executable,
    /// answers `--version`); the Firecracker binary (exists, executable, a name the jailer
    /// accepts); the chroot base (a directory, created if `createChrootBase`, on a mount without
    /// noexec — the jailer execs its copy of Firecracker from it — and without nodev — the jail's
    /// /dev/kvm lives on it); the cgroup version and the controllers `limits` need; /dev/kvm;
    /// the network namespace; the NUMA node.
    public static func check(
        configuration: JailerConfiguration, limits: ResourceLimits = .none, cgroupHost: CgroupHost? = nil,
        topology: HostTopology? = nil, kvmDevice: String = "/dev/kvm", createChrootBase: Bool = true
    ) -> PreflightReport {
        var problems: [JailError] = []
        do {
            try configuration.validate()
        } catch {
            problems.append(error)
        }
        let euid = geteuid()
        if euid != 0 { problems.append(.notRoot(effectiveUID: euid)) }

        // Jailer binary.
        var jailerVersion: JailerVersion?
        let jailer = configuration.jailerBinary.string
        if let problem = executableProblem(jailer) {
            problems.append(.jailerMissing(path: jailer, reason: problem))
        } else {
            do {
                let output = try HostCommand.run(jailer, ["--version"])
                let text = output.standardOutput + output.standardError
                if text.contains("Jailer"), let version = JailerVersion(parsing: text) {
                    jailerVersion = version
                } else {
                    problems.append(.jailerVersionUnknown(path: jailer, output: String(text.trimmingWhitespace().prefix(200))))
                }
            } catch {
                problems.append(.jailerMissing(path: jailer, reason: error.description))
            }
        }

        // Firecracker binary.
        let firecracker = configuration.firecrackerBinary.string
        if let problem = executableProblem(firecracker) {
            problems.append(.firecrackerMissing(path: firecracker, reason: problem))
        } else if jailerVersion?.requiresFirecrackerInExecName ?? true, !configuration.execFileName.contains("firecracker") {
            problems.append(
                .firecrackerNameRejected(name: configuration.execFileName, jailerVersion: jailerVersion?.description ?? "<1.13"))
        }

        // Chroot base.
        if let problem = chrootBaseProblem(configuration.chrootBase.string, create: createChrootBase && euid == 0) {
            problems.append(.chrootBaseUnusable(path: configuration.chrootBase.string, reason: problem))
        }

        // Cgroups.
        var version: CgroupVersion?
        var host = cgroupHost
        if host == nil {
            do {
                host = try CgroupHost.detect()
            } catch {
                problems.append(error)
            }
        }
        if let host {
            do {
                let resolved = try configuration.effectiveCgroupVersion(on: host)
                version = resolved
                switch resolved {
                case .v1 where !host.v1Mounts.contains(where: { !$0.controllers.isDisjoint(with: CgroupHost.knownV1Controllers) }):
                    problems.append(
                        .cgroupUnavailable(version: .v1, detail: "this host has no cgroup v1 controllers (pure v2); the jailer's v1 mode fails here"))
                case .v2 where host.v2Mount == nil:
                    problems.append(.cgroupUnavailable(version: .v2, detail: "no cgroup2 filesystem is mounted"))
                default:
                    let missing = limits.requiredControllers(numaNode: configuration.numaNode)
                        .filter { !host.isAvailable($0, version: resolved) }.sorted()
                    if !missing.isEmpty {
                        let place = resolved == .v1
                            ? "mounted as v1 hierarchies"
                            : "listed in \(host.v2Mount?.directory ?? "/sys/fs/cgroup")/cgroup.controllers"
                        problems.append(
                            .cgroupUnavailable(
                                version: resolved,
                                detail: "the requested limits need controller(s) \(missing.joined(separator: ", ")), which are not \(place)"))
                    }
                }
            } catch {
                problems.append(error)
            }
        }

        // KVM.
        if let problem = kvmProblem(kvmDevice) { problems.append(.kvmUnavailable(problem)) }

        // Network namespace and NUMA node.
        if let netns = configuration.networkNamespace, access(netns.string, F_OK) != 0 {
            problems.append(.networkNamespaceMissing(path: netns.string))
        }
        if let node = configuration.numaNode {
            let topology = topology ?? HostTopology.detect()
            if topology.nodeCPUs[node] == nil { problems.append(.numaNodeMissing(node)) }
        }
        return PreflightReport(problems: problems, jailerVersion: jailerVersion, cgroupVersion: version, cgroupHost: host)
    }

    static func executableProblem(_ path: String) -> String? {
        guard let status = try? JailFileSystem.statPath(path) else {
            return access(path, F_OK) == 0 ? "cannot be examined" : "no such file"
        }
        if !JailFileSystem.isRegular(status) { return "not a regular file" }
        if status.st_mode & 0o111 == 0 || access(path, X_OK) != 0 { return "not executable" }
        return nil
    }

    /// `mkdir -p` (mode 0755, what a chroot base wants): nil once `path` is a directory.
    public static func makeDirectories(_ path: String) -> SystemCallError? {
        var current = ""
        for component in path.split(separator: "/") {
            current += "/" + component
            if mkdir(current, 0o755) != 0, errno != EEXIST {
                return SystemCallError(call: "mkdir", subject: current, errno: errno)
            }
        }
        return nil
    }

    static func chrootBaseProblem(_ path: String, create: Bool) -> String? {
        var status = stat()
        if stat(path, &status) != 0 {
            guard errno == ENOENT else {
                return SystemCallError(call: "stat", subject: path, errno: errno).description
            }
            guard create else { return "it does not exist (the jailer needs it to exist)" }
            if let error = makeDirectories(path) { return "it does not exist and could not be created: \(error)" }
            guard stat(path, &status) == 0 else { return "it could not be created" }
        }
        guard JailFileSystem.isDirectory(status) else { return "not a directory" }
        var fs = statvfs()
        guard statvfs(path, &fs) == 0 else { return SystemCallError(call: "statvfs", subject: path, errno: errno).description }
        if fs.f_flag & mountNoExec != 0 {
            return "its filesystem is mounted noexec, so the jailer cannot exec its copy of Firecracker"
        }
        if fs.f_flag & mountNoDevice != 0 {
            return "its filesystem is mounted nodev, so the jail's /dev/kvm would not open"
        }
        return nil
    }

    static func kvmProblem(_ path: String) -> String? {
        var status = stat()
        guard stat(path, &status) == 0 else { return "\(path) does not exist" }
        guard status.st_mode & S_IFMT == S_IFCHR else { return "\(path) is not a character device" }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 { return SystemCallError(call: "open", subject: path, errno: errno).description }
        close(fd)
        return nil
    }
}

/// Checks that a running VMM really sits in its cgroups with the values written (guide issue 7:
/// limits that silently do not apply).
public enum CgroupVerifier {
    /// Compares `/proc/PID/cgroup` and each setting's file with what `command` asked for.
    /// Throws `limitsNotEnforced` listing every mismatch.
    public static func verify(pid: Int32, command: JailerCommand, host: CgroupHost) throws(JailError) {
        let id = command.layout.id.rawValue
        guard !command.cgroupSettings.isEmpty else { return }
        let membership: String
        do {
            membership = try readSmallFile("/proc/\(pid)/cgroup")
        } catch {
            throw .limitsNotEnforced(id: id, detail: "cannot read /proc/\(pid)/cgroup: \(error)")
        }
        let expected = "/\(command.parentCgroup)/\(id)"
        var mismatches: [String] = []
        // "hierarchy-id:controllers:path"; v2's line is "0::path".
        let entries: [(controllers: Set<String>, path: String)] = membership.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { return nil }
            return (Set(fields[1].split(separator: ",").map(String.init)), String(fields[2]))
        }
        switch command.cgroupVersion {
        case .v1:
            for controller in Set(command.cgroupSettings.map(\.controller)).sorted() {
                let path = entries.first { $0.controllers.contains(controller) }?.path
                if path != expected {
                    mismatches.append("\(controller): process is in \(path ?? "no cgroup"), expected \(expected)")
                }
            }
        case .v2:
            let path = entries.first { $0.controllers.isEmpty || $0.controllers == [""] }?.path
            if path != expected { mismatches.append("process is in \(path ?? "no v2 cgroup"), expected \(expected)") }
        }
        let directories = command.cgroupDirectories(on: host)
        for setting in command.cgroupSettings {
            let directory: String?
            switch command.cgroupVersion {
            case .v1:
                directory = host.v1Mount(for: setting.controller).map { "\($0.directory)/\(command.parentCgroup)/\(id)" }
            case .v2:
                directory = directories.first
            }
            guard let directory else {
                mismatches.append("\(setting.file): controller \(setting.controller) is not mounted")
                continue
            }
            guard let actual = try? readSmallFile("\(directory)/\(setting.file)").trimmingWhitespace() else {
                mismatches.append("\(setting.file): cannot read \(directory)/\(setting.file)")
                continue
            }
            if !matches(file: setting.file, expected: setting.value, actual: actual) {
                mismatches.append("\(setting.file) is \(String(reflecting: actual)), expected \(String(reflecting: setting.value))")
            }
        }
        if !mismatches.isEmpty { throw .limitsNotEnforced(id: id, detail: mismatches.joined(separator: "; ")) }
    }

    /// Values as the kernel shows them: memory limits rounded down to pages, cpu lists
    /// reformatted.
    static func matches(file: String, expected: String, actual: String) -> Bool {
        if expected == actual { return true }
        if file.hasPrefix("memory."), let want = UInt64(expected), let got = UInt64(actual) {
            let page = UInt64(max(sysconf(Int32(_SC_PAGESIZE)), 4096))
            return want / page * page == got
        }
        if file == "cpuset.cpus" || file == "cpuset.mems" {
            return (try? HostTopology.parseList(expected)) == (try? HostTopology.parseList(actual))
        }
        return false
    }
}
