#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
public import SystemPackage

/// How to run Firecracker under the jailer. Everything the jailer is told comes from here (plus
/// the per-VM id and limits), so one value describes a fleet's sandbox.
public struct JailerConfiguration: Sendable, Hashable {
    public static let defaultJailerBinary: FilePath = "/usr/bin/jailer"
    public static let defaultFirecrackerBinary: FilePath = "/usr/bin/firecracker"
    /// The uid/gid Firecracker's docs use for examples; any unprivileged pair works.
    public static let defaultUID: UInt32 = 123
    public static let defaultGID: UInt32 = 100
    /// The jailer's own default.
    public static let defaultChrootBase: FilePath = "/srv/jailer"

    public var jailerBinary: FilePath
    public var firecrackerBinary: FilePath
    public var uid: UInt32
    public var gid: UInt32
    public var chrootBase: FilePath
    /// nil: the host's version (`CgroupHost.defaultVersion`). The jailer itself defaults to v1,
    /// which fails on a v2-only host.
    public var cgroupVersion: CgroupVersion?
    /// nil: the exec file's name, as the jailer does.
    public var parentCgroup: String?
    /// Pins the VMM's CPUs and memory to one node (as a cpuset: jailer 1.12 has no NUMA flag).
    public var numaNode: Int?
    /// A network namespace file (e.g. `/var/run/netns/vm1`) the VMM joins.
    public var networkNamespace: FilePath?
    /// On by default: the VMM becomes PID 1 of its own namespace and cannot see host processes.
    /// The jailer then exits at once; supervise the pid from the jail's pid file.
    public var newPIDNamespace: Bool
    /// Off by default: the jailer sends the VMM's stdio to /dev/null, which loses the serial
    /// console (guest output is on Firecracker's stdout).
    public var daemonize: Bool
    public var processLimits: ProcessLimits

    public init(
        jailerBinary: FilePath = Self.defaultJailerBinary,
        firecrackerBinary: FilePath = Self.defaultFirecrackerBinary,
        uid: UInt32 = Self.defaultUID,
        gid: UInt32 = Self.defaultGID,
        chrootBase: FilePath = Self.defaultChrootBase,
        cgroupVersion: CgroupVersion? = nil,
        parentCgroup: String? = nil,
        numaNode: Int? = nil,
        networkNamespace: FilePath? = nil,
        newPIDNamespace: Bool = true,
        daemonize: Bool = false,
        processLimits: ProcessLimits = ProcessLimits()
    ) {
        self.jailerBinary = jailerBinary
        self.firecrackerBinary = firecrackerBinary
        self.uid = uid
        self.gid = gid
        self.chrootBase = chrootBase
        self.cgroupVersion = cgroupVersion
        self.parentCgroup = parentCgroup
        self.numaNode = numaNode
        self.networkNamespace = networkNamespace
        self.newPIDNamespace = newPIDNamespace
        self.daemonize = daemonize
        self.processLimits = processLimits
    }

    /// The environment variables `init(environment:)` reads.
    public enum Variable: String, Sendable, CaseIterable {
        case jailerBinary = "MICROVM_JAILER_BIN"
        case firecrackerBinary = "MICROVM_JAILER_FIRECRACKER_BIN"
        case uid = "MICROVM_JAILER_UID"
        case gid = "MICROVM_JAILER_GID"
        case chrootBase = "MICROVM_JAILER_CHROOT_BASE"
        case parentCgroup = "MICROVM_JAILER_CGROUP_PARENT"
        case cgroupVersion = "MICROVM_JAILER_CGROUP_VERSION"
        case numaNode = "MICROVM_JAILER_NUMA_NODE"
        case networkNamespace = "MICROVM_JAILER_NETNS"
        case newPIDNamespace = "MICROVM_JAILER_NEW_PID_NS"
        case daemonize = "MICROVM_JAILER_DAEMONIZE"
        case fileSizeLimit = "MICROVM_JAILER_RLIMIT_FSIZE"
        case openFilesLimit = "MICROVM_JAILER_RLIMIT_NO_FILE"
    }

    /// The project-wide Firecracker path (also used for unjailed runs); read when
    /// `MICROVM_JAILER_FIRECRACKER_BIN` is unset.
    public static let sharedFirecrackerVariable = "MICROVM_FIRECRACKER_BIN"

    /// Reads the `MICROVM_JAILER_*` variables (the seed's names; unset or empty means the
    /// default). Where the seed's defaults were unsound this differs: the cgroup version defaults
    /// to the host's (`auto`) instead of 2, and the parent cgroup to the exec file's name (the
    /// jailer's default) instead of `microvm.slice`. A value that cannot be used is an error
    /// naming the variable, never silently replaced by a default.
    public init(environment: [String: String]) throws(JailError) {
        func value(_ variable: Variable) -> String? {
            guard let raw = environment[variable.rawValue] else { return nil }
            let trimmed = raw.trimmingWhitespace()
            return trimmed.isEmpty ? nil : trimmed
        }
        func path(_ variable: Variable) throws(JailError) -> FilePath? {
            guard let text = value(variable) else { return nil }
            guard text.hasPrefix("/"), !text.contains("\0") else {
                throw .invalidSetting(
                    name: variable.rawValue, value: text, reason: "not an absolute path",
                    fix: "set \(variable.rawValue) to an absolute path, e.g. \(Self.example(variable))")
            }
            return FilePath(text)
        }
        func unsigned(_ variable: Variable, range: ClosedRange<UInt64>) throws(JailError) -> UInt64? {
            guard let text = value(variable) else { return nil }
            guard let number = UInt64(text), range.contains(number) else {
                throw .invalidSetting(
                    name: variable.rawValue, value: text,
                    reason: "not an integer in \(range.lowerBound)...\(range.upperBound)",
                    fix: "set \(variable.rawValue) to a decimal number such as \(Self.example(variable)), or unset it")
            }
            return number
        }
        func flag(_ variable: Variable) throws(JailError) -> Bool? {
            guard let text = value(variable) else { return nil }
            switch text.lowercased() {
            case "1", "true", "yes", "on": return true
            case "0", "false", "no", "off": return false
            default:
                throw .invalidSetting(
                    name: variable.rawValue, value: text, reason: "not a boolean",
                    fix: "set \(variable.rawValue) to 1 or 0 (true/false, yes/no, on/off), or unset it")
            }
        }

        self.init()
        if let jailer = try path(.jailerBinary) { jailerBinary = jailer }
        if let firecracker = try path(.firecrackerBinary) {
            firecrackerBinary = firecracker
        } else if let shared = environment[Self.sharedFirecrackerVariable]?.trimmingWhitespace(), !shared.isEmpty {
            guard shared.hasPrefix("/") else {
                throw .invalidSetting(
                    name: Self.sharedFirecrackerVariable, value: shared, reason: "not an absolute path",
                    fix: "set \(Self.sharedFirecrackerVariable) to an absolute path, e.g. /usr/local/bin/firecracker")
            }
            firecrackerBinary = FilePath(shared)
        }
        if let uid = try unsigned(.uid, range: 0...UInt64(UInt32.max - 1)) { self.uid = UInt32(uid) }
        if let gid = try unsigned(.gid, range: 0...UInt64(UInt32.max - 1)) { self.gid = UInt32(gid) }
        if let base = try path(.chrootBase) { chrootBase = base }
        parentCgroup = value(.parentCgroup)
        if let text = value(.cgroupVersion) {
            switch text.lowercased() {
            case "1", "v1": cgroupVersion = .v1
            case "2", "v2": cgroupVersion = .v2
            case "auto": cgroupVersion = nil
            default:
                throw .invalidSetting(
                    name: Variable.cgroupVersion.rawValue, value: text, reason: "not a cgroup version",
                    fix: "set \(Variable.cgroupVersion.rawValue) to 1, 2 or auto (the host's version; the default)")
            }
        }
        if let node = try unsigned(.numaNode, range: 0...4095) { numaNode = Int(node) }
        networkNamespace = try path(.networkNamespace)
        if let newPID = try flag(.newPIDNamespace) { newPIDNamespace = newPID }
        if let daemon = try flag(.daemonize) { daemonize = daemon }
        processLimits.fileSizeBytes = try unsigned(.fileSizeLimit, range: 1...UInt64.max)
        processLimits.openFiles = try unsigned(.openFilesLimit, range: 16...UInt64(Int32.max))
        try validate(namingVariables: true)
    }

    /// The current process's environment, for `init(environment:)`.
    public static func processEnvironment() -> [String: String] {
        var result: [String: String] = [:]
        var cursor = environ
        while let entry = cursor.pointee {
            let text = String(cString: entry)
            if let equals = text.firstIndex(of: "=") {
                result[String(text[..<equals])] = String(text[text.index(after: equals)...])
            }
            cursor += 1
        }
        return result
    }

    /// Checks what can be checked without touching the host.
    public func validate() throws(JailError) {
        try validate(namingVariables: false)
    }

    private func validate(namingVariables: Bool) throws(JailError) {
        func name(_ variable: Variable, _ field: String) -> String {
            namingVariables ? variable.rawValue : "JailerConfiguration.\(field)"
        }
        for (variable, field, path) in [
            (Variable.jailerBinary, "jailerBinary", jailerBinary),
            (.firecrackerBinary, "firecrackerBinary", firecrackerBinary),
            (.chrootBase, "chrootBase", chrootBase),
        ] where !path.isAbsolute {
            throw .invalidSetting(
                name: name(variable, field), value: path.string, reason: "not an absolute path",
                fix: "use an absolute path, e.g. \(Self.example(variable))")
        }
        if let networkNamespace, !networkNamespace.isAbsolute {
            throw .invalidSetting(
                name: name(.networkNamespace, "networkNamespace"), value: networkNamespace.string,
                reason: "not an absolute path", fix: "use e.g. /var/run/netns/NAME")
        }
        if uid == 0 || gid == 0 {
            let isUID = uid == 0
            throw .invalidSetting(
                name: name(isUID ? .uid : .gid, isUID ? "uid" : "gid"), value: "0",
                reason: "Firecracker would run with root's \(isUID ? "uid" : "gid") inside the jail, which defeats the jail",
                fix: "use an unprivileged id that owns nothing else on the host, e.g. \(isUID ? Self.defaultUID : Self.defaultGID)")
        }
        if let parentCgroup {
            if let reason = Self.parentCgroupProblem(parentCgroup) {
                throw .invalidSetting(
                    name: name(.parentCgroup, "parentCgroup"), value: parentCgroup, reason: reason,
                    fix: "use a relative cgroup path such as firecracker or microvm/vms (no leading '/', no '.' or '..')")
            }
        }
        if let numaNode, numaNode < 0 {
            throw .invalidSetting(
                name: name(.numaNode, "numaNode"), value: "\(numaNode)", reason: "negative",
                fix: "use a node number from /sys/devices/system/node/online")
        }
        if let files = processLimits.openFiles, files < 16 {
            throw .invalidSetting(
                name: name(.openFilesLimit, "processLimits.openFiles"), value: "\(files)",
                reason: "Firecracker cannot start with so few file descriptors",
                fix: "use at least 16, or leave it unset (the jailer uses 2048)")
        }
    }

    /// The jailer refuses absolute parents and `.`/`..`; empty components would name a different
    /// directory than the one teardown looks for.
    public static func parentCgroupProblem(_ parent: String) -> String? {
        if parent.hasPrefix("/") { return "an absolute path" }
        if parent.contains("\0") || parent.contains("\n") { return "contains a NUL or newline" }
        let components = parent.split(separator: "/", omittingEmptySubsequences: false)
        if components.contains(where: { $0.isEmpty }) { return "has an empty path component" }
        if components.contains(where: { $0 == "." || $0 == ".." }) { return "contains '.' or '..'" }
        return nil
    }

    static func example(_ variable: Variable) -> String {
        switch variable {
        case .jailerBinary: "/usr/local/bin/jailer"
        case .firecrackerBinary: "/usr/local/bin/firecracker"
        case .chrootBase: "/srv/jailer"
        case .networkNamespace: "/var/run/netns/vm1"
        case .uid: "123"
        case .gid: "100"
        case .numaNode: "0"
        case .fileSizeLimit: "10737418240"
        case .openFilesLimit: "2048"
        case .parentCgroup: "firecracker"
        case .cgroupVersion: "auto"
        case .newPIDNamespace, .daemonize: "1"
        }
    }

    /// The exec file name the jailer will use: the last component of the binary's canonical path
    /// (the jailer canonicalizes `--exec-file`, so a symlink `firecracker -> firecracker-v1.12.1`
    /// gives `firecracker-v1.12.1`). Falls back to the configured name when the path does not
    /// resolve (preflight reports that).
    public var execFileName: String {
        let resolved = Self.canonicalPath(firecrackerBinary) ?? firecrackerBinary
        return resolved.lastComponent?.string ?? firecrackerBinary.string
    }

    /// The chroot base as the jailer will use it (canonicalized).
    public var canonicalChrootBase: FilePath {
        Self.canonicalPath(chrootBase) ?? chrootBase.lexicallyNormalized()
    }

    /// The parent cgroup the jailer will use.
    public var effectiveParentCgroup: String { parentCgroup ?? execFileName }

    /// The version to pass to `--cgroup-version` on `host`.
    public func effectiveCgroupVersion(on host: CgroupHost) throws(JailError) -> CgroupVersion {
        if let cgroupVersion { return cgroupVersion }
        guard let version = host.defaultVersion else {
            throw .cgroupUnavailable(version: nil, detail: "no cgroup v1 controller or cgroup2 mount in /proc/mounts")
        }
        return version
    }

    /// Paths of the jail of `id` on this host (symlinks in the chroot base and the Firecracker
    /// path resolved, as the jailer resolves them).
    public func layout(for id: VMIdentifier) -> JailLayout {
        JailLayout(chrootBase: canonicalChrootBase, execFileName: execFileName, id: id)
    }

    static func canonicalPath(_ path: FilePath) -> FilePath? {
        guard let resolved = realpath(path.string, nil) else { return nil }
        defer { free(resolved) }
        return FilePath(String(cString: resolved))
    }
}
