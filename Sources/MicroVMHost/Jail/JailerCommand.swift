public import SystemPackage

/// The jailer invocation for one VM, built but not run: spawning (and stdio, signal masks,
/// sessions) is the driver's business, and keeping the argv a plain value makes it testable and
/// printable.
public struct JailerCommand: Sendable, Hashable, CustomStringConvertible {
    /// Arguments the jailer passes to Firecracker itself; giving them again after `--` makes
    /// Firecracker refuse its command line.
    public static let argumentsReservedByJailer: Set<String> = [
        "--id", "--start-time-us", "--start-time-cpu-us", "--parent-cpu-time-us",
    ]

    public var executable: FilePath
    /// Everything after the executable, `--` and Firecracker's arguments included.
    public var arguments: [String]
    public var layout: JailLayout
    public var cgroupVersion: CgroupVersion
    public var parentCgroup: String
    public var cgroupSettings: [CgroupSetting]

    /// Builds the argv: `--id --exec-file --uid --gid --chroot-base-dir --cgroup-version
    /// --parent-cgroup [--cgroup f=v]... [--resource-limit r=n]... [--netns P] [--new-pid-ns]
    /// [--daemonize] -- <firecrackerArguments>`. The parent cgroup and version are always
    /// explicit, so teardown looks exactly where the jailer wrote.
    public init(
        configuration: JailerConfiguration,
        layout: JailLayout,
        cgroupVersion: CgroupVersion,
        cgroupSettings: [CgroupSetting],
        firecrackerArguments: [String]
    ) throws(JailError) {
        try configuration.validate()
        if let reserved = firecrackerArguments.first(where: { argument in
            Self.argumentsReservedByJailer.contains(argument)
                || Self.argumentsReservedByJailer.contains(where: { argument.hasPrefix($0 + "=") })
        }) {
            throw .invalidSetting(
                name: "Firecracker argument", value: reserved,
                reason: "the jailer passes \(reserved) to Firecracker itself",
                fix: "leave \(reserved) out; the jailer sets it from --id and its own clock")
        }
        for setting in cgroupSettings {
            guard !setting.controller.isEmpty, setting.file.contains("."), !setting.file.contains("/"),
                !setting.file.contains("="), !setting.value.isEmpty
            else {
                throw .invalidSetting(
                    name: "--cgroup", value: setting.argument,
                    reason: "not <controller>.<file>=<value>",
                    fix: "use e.g. memory.max=268435456 (v2) or memory.limit_in_bytes=268435456 (v1)")
            }
        }
        let parent = configuration.parentCgroup ?? layout.execFileName
        var arguments: [String] = [
            "--id", layout.id.rawValue,
            "--exec-file", configuration.firecrackerBinary.string,
            "--uid", "\(configuration.uid)",
            "--gid", "\(configuration.gid)",
            "--chroot-base-dir", layout.chrootBase.string,
            "--cgroup-version", "\(cgroupVersion.rawValue)",
            "--parent-cgroup", parent,
        ]
        for setting in cgroupSettings {
            arguments += ["--cgroup", setting.argument]
        }
        arguments += configuration.processLimits.arguments
        if let netns = configuration.networkNamespace {
            arguments += ["--netns", netns.string]
        }
        if configuration.newPIDNamespace { arguments.append("--new-pid-ns") }
        if configuration.daemonize { arguments.append("--daemonize") }
        arguments.append("--")
        arguments += firecrackerArguments

        self.executable = configuration.jailerBinary
        self.arguments = arguments
        self.layout = layout
        self.cgroupVersion = cgroupVersion
        self.parentCgroup = parent
        self.cgroupSettings = cgroupSettings
    }

    /// Firecracker's arguments for a jailed run, with in-jail paths: the API socket (default
    /// `/run/firecracker.socket`, or none for `--no-api`), and optionally a log file, metrics file,
    /// config file and log level, each given as the in-jail path returned by staging.
    public static func firecrackerArguments(
        apiSocket: FilePath? = JailLayout.defaultAPISocket,
        configFile: FilePath? = nil,
        logPath: FilePath? = nil,
        logLevel: String? = nil,
        metricsPath: FilePath? = nil,
        extra: [String] = []
    ) -> [String] {
        var result: [String] = []
        if let apiSocket { result += ["--api-sock", apiSocket.string] } else { result.append("--no-api") }
        if let configFile { result += ["--config-file", configFile.string] }
        if let logPath { result += ["--log-path", logPath.string] }
        if let logLevel { result += ["--level", logLevel] }
        if let metricsPath { result += ["--metrics-path", metricsPath.string] }
        return result + extra
    }

    /// The directories the jailer will create for this command's cgroup settings on `host`.
    public func cgroupDirectories(on host: CgroupHost) -> [String] {
        host.cgroupDirectories(version: cgroupVersion, parent: parentCgroup, id: layout.id, settings: cgroupSettings)
    }

    /// A shell-quoted rendering, for logs and for reproducing a launch by hand.
    public var description: String {
        ([executable.string] + arguments).map(Self.shellQuoted).joined(separator: " ")
    }

    static func shellQuoted(_ word: String) -> String {
        let safe = word.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_./=:,+@%".contains($0)) }
        if safe, !word.isEmpty { return word }
        return "'" + word.replacingAll("'", with: "'\\''") + "'"
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        for character in self {
            if character == target { result += replacement } else { result.append(character) }
        }
        return result
    }
}
