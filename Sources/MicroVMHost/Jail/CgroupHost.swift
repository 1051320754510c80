#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys

/// The cgroup interface the jailer is told to use (`--cgroup-version`). The jailer defaults to
/// v1 and fails on a v2-only host, so the library picks the host's version unless told otherwise.
public enum CgroupVersion: Int, Sendable, Hashable, CaseIterable, Codable, CustomStringConvertible {
    case v1 = 1
    case v2 = 2

    public var description: String { "v\(rawValue)" }
}

/// One cgroup filesystem mount.
public struct CgroupMount: Sendable, Hashable {
    public var directory: String
    public var version: CgroupVersion
    /// v1: the mount options (they name the controllers, e.g. `cpu,cpuacct`); v2: the
    /// controllers listed in `cgroup.controllers` of the mount's root.
    public var controllers: Set<String>

    public init(directory: String, version: CgroupVersion, controllers: Set<String>) {
        self.directory = directory
        self.version = version
        self.controllers = controllers
    }
}

/// The host's cgroup layout, read the way the jailer reads it (from `/proc/mounts`): v1
/// controllers are found by mount option, v2 is the FIRST `cgroup2` mount. That matters on hybrid
/// hosts, where a cgroup2 mount at `/sys/fs/cgroup/unified` usually has no controllers at all.
public struct CgroupHost: Sendable, Hashable {
    /// The v1 controller names the kernel knows; named hierarchies (`name=systemd`) are not
    /// controllers and do not make a host "v1".
    public static let knownV1Controllers: Set<String> = [
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio", "perf_event",
        "net_prio", "hugetlb", "pids", "rdma", "misc",
    ]

    public var v1Mounts: [CgroupMount]
    public var v2Mount: CgroupMount?
    /// The version to use when none is configured; nil when the host has no usable cgroups.
    public var defaultVersion: CgroupVersion?

    public init(v1Mounts: [CgroupMount], v2Mount: CgroupMount?, defaultVersion: CgroupVersion?) {
        self.v1Mounts = v1Mounts
        self.v2Mount = v2Mount
        self.defaultVersion = defaultVersion
    }

    /// Builds the layout from `/proc/mounts` text. `v2Controllers` reads `cgroup.controllers` of
    /// a v2 mount directory; `unifiedAtRoot` is what statfs says about `/sys/fs/cgroup` (nil:
    /// decide from the mount table alone).
    public static func parse(
        procMounts: String, unifiedAtRoot: Bool? = nil, v2Controllers: (String) -> Set<String>
    ) -> CgroupHost {
        var v1: [CgroupMount] = []
        var v2: CgroupMount?
        for line in procMounts.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 4 else { continue }
            let directory = unescapeMountField(String(fields[1]))
            switch fields[2] {
            case "cgroup":
                let options = Set(fields[3].split(separator: ",").map(String.init))
                v1.append(CgroupMount(directory: directory, version: .v1, controllers: options))
            case "cgroup2" where v2 == nil:
                v2 = CgroupMount(directory: directory, version: .v2, controllers: v2Controllers(directory))
            default:
                continue
            }
        }
        let hasV1Controllers = v1.contains { !$0.controllers.isDisjoint(with: knownV1Controllers) }
        let v2AtRoot = unifiedAtRoot ?? (v2?.directory == "/sys/fs/cgroup")
        let version: CgroupVersion?
        if v2AtRoot, v2 != nil {
            version = .v2
        } else if hasV1Controllers {
            version = .v1
        } else if let v2, !v2.controllers.isEmpty {
            version = .v2
        } else {
            version = v2 == nil ? nil : .v2
        }
        return CgroupHost(v1Mounts: v1, v2Mount: v2, defaultVersion: version)
    }

    /// Reads this host's layout: statfs magic of `/sys/fs/cgroup` (cgroup2 = pure v2, tmpfs =
    /// v1/hybrid) plus `/proc/mounts` for where each controller lives.
    public static func detect(procMountsPath: String = "/proc/mounts", cgroupRoot: String = "/sys/fs/cgroup")
        throws(JailError) -> CgroupHost
    {
        let mounts: String
        do {
            mounts = try readSmallFile(procMountsPath)
        } catch {
            throw .cgroupUnavailable(version: nil, detail: "cannot read \(procMountsPath): \(error)")
        }
        var magic: UInt = 0
        let unifiedAtRoot: Bool? = cmv_statfs_magic(cgroupRoot, &magic) == 0 ? magic == 0x6367_7270 : nil
        return parse(procMounts: mounts, unifiedAtRoot: unifiedAtRoot) { directory in
            guard let text = try? readSmallFile(directory + "/cgroup.controllers") else { return [] }
            return Set(text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
    }

    /// The v1 mount holding `controller`, found as the jailer finds it (first mount whose options
    /// include the name).
    public func v1Mount(for controller: String) -> CgroupMount? {
        v1Mounts.first { $0.controllers.contains(controller) }
    }

    /// Whether `controller` can be used with `version` on this host.
    public func isAvailable(_ controller: String, version: CgroupVersion) -> Bool {
        switch version {
        case .v1: v1Mount(for: controller) != nil
        case .v2: v2Mount?.controllers.contains(controller) ?? false
        }
    }

    /// The directories the jailer creates for `settings`: one per v1 controller written
    /// (`<mount>/<parent>/<id>`), or the single v2 leaf.
    public func cgroupDirectories(
        version: CgroupVersion, parent: String, id: VMIdentifier, settings: [CgroupSetting]
    ) -> [String] {
        switch version {
        case .v1:
            var seen: Set<String> = []
            return settings.compactMap { setting in
                guard let mount = v1Mount(for: setting.controller) else { return nil }
                let path = "\(mount.directory)/\(parent)/\(id.rawValue)"
                return seen.insert(path).inserted ? path : nil
            }
        case .v2:
            guard let v2Mount, !settings.isEmpty else { return [] }
            return ["\(v2Mount.directory)/\(parent)/\(id.rawValue)"]
        }
    }

    /// `<mount>/<parent>/<id>` in every cgroup hierarchy of the host, v1 and v2, so teardown finds
    /// the VM's cgroups without having to know which limits the launch used.
    public func everyCandidateDirectory(parent: String, id: VMIdentifier) -> [String] {
        var seen: Set<String> = []
        var result: [String] = []
        for mount in v1Mounts + (v2Mount.map { [$0] } ?? []) {
            let path = "\(mount.directory)/\(parent)/\(id.rawValue)"
            if seen.insert(path).inserted { result.append(path) }
        }
        return result
    }

    /// `/proc/mounts` writes space, tab, newline and backslash as octal escapes.
    static func unescapeMountField(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        let source = Array(field.utf8)
        var i = 0
        while i < source.count {
            if source[i] == UInt8(ascii: "\\"), i + 3 < source.count {
                let digits = source[(i + 1)...(i + 3)]
                if digits.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "7") }) {
                    let value = digits.reduce(0) { $0 * 8 + Int($1 - UInt8(ascii: "0")) }
                    bytes.append(UInt8(truncatingIfNeeded: value))
                    i += 4
                    continue
                }
            }
            bytes.append(source[i])
            i += 1
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// CPUs and memory nodes of the host, for cpusets and NUMA pinning. The jailer (v1.12.1) has no
/// NUMA option of its own: pinning is expressed as `cpuset.cpus` + `cpuset.mems`.
public struct HostTopology: Sendable, Hashable {
    public var onlineCPUs: [Int]
    public var memoryNodes: [Int]
    public var nodeCPUs: [Int: [Int]]

    public init(onlineCPUs: [Int], memoryNodes: [Int], nodeCPUs: [Int: [Int]]) {
        self.onlineCPUs = onlineCPUs
        self.memoryNodes = memoryNodes
        self.nodeCPUs = nodeCPUs
    }

    /// Reads `/sys/devices/system/{cpu,node}`; a host without NUMA information is one node 0
    /// holding every online CPU.
    public static func detect(sysfs: String = "/sys/devices/system") -> HostTopology {
        let cpus = (try? readSmallFile("\(sysfs)/cpu/online")).flatMap { try? parseList($0) } ?? []
        let nodes =
            (try? readSmallFile("\(sysfs)/node/has_memory")).flatMap { try? parseList($0) }
            ?? (try? readSmallFile("\(sysfs)/node/online")).flatMap { try? parseList($0) }
            ?? [0]
        var nodeCPUs: [Int: [Int]] = [:]
        for node in (try? readSmallFile("\(sysfs)/node/online")).flatMap({ try? parseList($0) }) ?? nodes {
            if let list = (try? readSmallFile("\(sysfs)/node/node\(node)/cpulist")).flatMap({ try? parseList($0) }) {
                nodeCPUs[node] = list
            }
        }
        if nodeCPUs.isEmpty { nodeCPUs[0] = cpus }
        return HostTopology(onlineCPUs: cpus, memoryNodes: nodes, nodeCPUs: nodeCPUs)
    }

    /// Parses the kernel's list format (`0-3,8,10-11`).
    public static func parseList(_ text: String) throws(JailError) -> [Int] {
        let trimmed = text.trimmingWhitespace()
        if trimmed.isEmpty { return [] }
        var result: Set<Int> = []
        for part in trimmed.split(separator: ",") {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard (1...2).contains(bounds.count), let low = Int(bounds[0]), low >= 0,
                let high = bounds.count == 2 ? Int(bounds[1]) : low, high >= low, high - low < 65536
            else {
                throw .invalidSetting(
                    name: "cpu/node list", value: text, reason: "not in the kernel's list format",
                    fix: "write ranges and numbers separated by commas, e.g. 0-3,8")
            }
            result.formUnion(low...high)
        }
        return result.sorted()
    }

    /// Formats ids in the kernel's list format, collapsing runs into ranges.
    public static func formatList(_ values: [Int]) -> String {
        let sorted = Set(values).sorted()
        var parts: [String] = []
        var index = 0
        while index < sorted.count {
            var end = index
            while end + 1 < sorted.count, sorted[end + 1] == sorted[end] + 1 { end += 1 }
            parts.append(end == index ? "\(sorted[index])" : "\(sorted[index])-\(sorted[end])")
            index = end + 1
        }
        return parts.joined(separator: ",")
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}

/// Reads a small (proc, sys, pid) file whole.
func readSmallFile(_ path: String, limit: Int = 1 << 20) throws(SystemCallError) -> String {
    let fd = try SystemCallError.check("open", path) { open(path, O_RDONLY | O_CLOEXEC) }
    defer { close(fd) }
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while result.count < limit {
        let count = try SystemCallError.check("read", path) {
            buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        }
        if count == 0 { break }
        result.append(contentsOf: buffer[0..<count])
    }
    return String(decoding: result, as: UTF8.self)
}
