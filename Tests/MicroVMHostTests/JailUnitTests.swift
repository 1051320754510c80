import Foundation
import Logging
import SystemPackage
import Testing

@testable import MicroVMHost

/// A four-CPU, two-node host.
let testTopology = HostTopology(onlineCPUs: [0, 1, 2, 3], memoryNodes: [0, 1], nodeCPUs: [0: [0, 1], 1: [2, 3]])
let smallGuest = GuestResources(memoryMiB: 128, vcpuCount: 2)

func testConfiguration() -> JailerConfiguration {
    JailerConfiguration(
        jailerBinary: "/opt/fc/jailer", firecrackerBinary: "/opt/fc/does-not-exist/firecracker-v1.12.1", uid: 123,
        gid: 100, chrootBase: "/srv/jailer")
}

@Suite("Jail: VM identifiers")
struct VMIdentifierTests {
    @Test("valid ids are kept verbatim", arguments: ["a", "vm-1", "ABC-def-123", String(repeating: "x", count: 64)])
    func valid(_ raw: String) throws {
        #expect(try VMIdentifier(raw).rawValue == raw)
    }

    @Test("ids the jailer rejects are refused with the reason")
    func invalid() {
        #expect(throws: JailError.invalidIdentifier("a_b", .invalidCharacter("_", position: 1))) { try VMIdentifier("a_b") }
        #expect(throws: JailError.invalidIdentifier("../x", .invalidCharacter(".", position: 0))) { try VMIdentifier("../x") }
        #expect(throws: JailError.invalidIdentifier("", .empty)) { try VMIdentifier("") }
        let long = String(repeating: "a", count: 65)
        #expect(throws: JailError.invalidIdentifier(long, .tooLong(length: 65))) { try VMIdentifier(long) }
        #expect(throws: JailError.invalidIdentifier("/", .invalidCharacter("/", position: 0))) { try VMIdentifier("/") }
        #expect(throws: JailError.invalidIdentifier("a/b", .invalidCharacter("/", position: 1))) { try VMIdentifier("a/b") }
        #expect(throws: JailError.invalidIdentifier("vm 1", .invalidCharacter(" ", position: 2))) { try VMIdentifier("vm 1") }
        // The jailer would accept Unicode letters; we keep to ASCII.
        #expect(throws: JailError.invalidIdentifier("ünicode", .invalidCharacter("ü", position: 0))) {
            try VMIdentifier("ünicode")
        }
    }

    @Test("the error names the id and says what to do")
    func errorText() {
        let error = JailError.invalidIdentifier("a_b", .invalidCharacter("_", position: 1))
        #expect(error.description.contains("\"a_b\""))
        #expect(error.description.contains("position 1"))
        #expect(error.hint.contains("derive(from:)"))
    }

    @Test("derived ids are valid, stable and distinct for distinct names")
    func derive() throws {
        let names = [
            "a/b", "a_b", "a-b", "a b", "A/B", "", "///", "ünicode", "../etc/passwd", "vm-1",
            String(repeating: "long-name/", count: 20), String(repeating: "long-name_", count: 20),
        ]
        var seen: [String: String] = [:]
        for name in names {
            let id = VMIdentifier.derive(from: name)
            #expect(VMIdentifier.problem(with: id.rawValue) == nil, "\(id) from \(name)")
            #expect(id.rawValue.count <= 64)
            #expect(try VMIdentifier(id.rawValue) == id)
            #expect(VMIdentifier.derive(from: name) == id, "stable")
            #expect(seen[id.rawValue] == nil, "\(name) and \(seen[id.rawValue] ?? "") collide on \(id)")
            seen[id.rawValue] = name
        }
        #expect(VMIdentifier.derive(from: "a/b") != VMIdentifier.derive(from: "a_b"))
        #expect(VMIdentifier.derive(from: "a/b").rawValue.hasPrefix("a-b-"))
        #expect(VMIdentifier.derive(from: "///").rawValue.hasPrefix("vm-"))
        // Known value: SHA-256("a/b") starts with 0xb9 0xd8 ...; pinned so ids survive upgrades.
        #expect(VMIdentifier.derive(from: "a/b").rawValue == "a-b-" + sha256Hex("a/b").prefix(16))
    }

    @Test("SHA-256 matches the FIPS test vectors")
    func sha256() {
        #expect(sha256Hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(sha256Hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(
            sha256Hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    func sha256Hex(_ text: String) -> String {
        SHA256.hash(Array(text.utf8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }
}

@Suite("Jail: resource limits")
struct ResourceLimitTests {
    @Test("v1 translation: cpuset with mems, period before quota, memory, pids")
    func v1() throws {
        let limits = ResourceLimits(
            cpu: CPUQuota(cpus: 1.5), memory: .bytes(256 << 20), pids: 64, cpuset: CPUSet(cpus: [0, 1]))
        let settings = try limits.cgroupSettings(version: .v1, guest: smallGuest, topology: testTopology)
        #expect(
            settings.map(\.argument) == [
                "cpuset.cpus=0-1", "cpuset.mems=0-1", "cpu.cfs_period_us=100000", "cpu.cfs_quota_us=150000",
                "memory.limit_in_bytes=268435456", "pids.max=64",
            ])
    }

    @Test("v2 translation: cpu.max, memory.max, no mems unless given")
    func v2() throws {
        let limits = ResourceLimits(
            cpu: CPUQuota(cpus: 0.5, periodMicroseconds: 50_000), memory: .automatic, pids: 32,
            cpuset: CPUSet(cpus: [1, 2, 3]))
        let settings = try limits.cgroupSettings(version: .v2, guest: smallGuest, topology: testTopology)
        // 128 MiB guest + 64 MiB + 128/64 = 2 MiB -> 194 MiB.
        #expect(
            settings.map(\.argument) == [
                "cpuset.cpus=1-3", "cpu.max=25000 50000", "memory.max=\(194 << 20)", "pids.max=32",
            ])
    }

    @Test("automatic memory always leaves headroom above the guest RAM", arguments: [1, 64, 128, 1024, 16384])
    func headroom(_ guestMiB: Int) throws {
        let bytes = try MemoryLimit.automatic.bytes(guestMemoryMiB: guestMiB)
        #expect(bytes > UInt64(guestMiB) << 20)
        #expect(bytes - (UInt64(guestMiB) << 20) >= UInt64(MemoryLimit.defaultOverheadMiB) << 20)
        #expect(try MemoryLimit.headroom(mebibytes: 32).bytes(guestMemoryMiB: guestMiB) == UInt64(guestMiB + 32) << 20)
    }

    @Test("an explicit memory limit at or just above the guest RAM is refused")
    func memoryTooSmall() throws {
        for limit: UInt64 in [128 << 20, 100 << 20, (128 << 20) + 4096] {
            #expect {
                _ = try ResourceLimits(memory: .bytes(limit)).cgroupSettings(
                    version: .v1, guest: smallGuest, topology: testTopology)
            } throws: { error in
                guard case JailError.invalidResourceLimits(let reason, let fix) = error else { return false }
                return reason.contains("128 MiB") && fix.contains("MemoryLimit.automatic")
            }
        }
        #expect(throws: JailError.self) { try MemoryLimit.headroom(mebibytes: 1).bytes(guestMemoryMiB: 128) }
        #expect(try MemoryLimit.bytes((128 + 16) << 20).bytes(guestMemoryMiB: 128) == (128 + 16) << 20)
    }

    @Test(
        "invalid combinations are errors",
        arguments: [
            ResourceLimits(cpu: CPUQuota(cpus: 0)),
            ResourceLimits(cpu: CPUQuota(cpus: -1)),
            ResourceLimits(cpu: CPUQuota(cpus: .nan)),
            ResourceLimits(cpu: CPUQuota(cpus: 0.001)),  // 100 µs < 1 ms
            ResourceLimits(cpu: CPUQuota(cpus: 1, periodMicroseconds: 500)),
            ResourceLimits(cpu: CPUQuota(cpus: 1, periodMicroseconds: 2_000_000)),
            ResourceLimits(cpu: CPUQuota(cpus: 8)),  // more than the host's 4 CPUs
            ResourceLimits(cpu: CPUQuota(cpus: 2), cpuset: CPUSet(cpus: [0])),  // quota > cpuset
            ResourceLimits(pids: 4),  // 2 vCPUs + 3 other tasks = 5
            ResourceLimits(cpuset: CPUSet(cpus: [])),
            ResourceLimits(cpuset: CPUSet(cpus: [9])),
            ResourceLimits(cpuset: CPUSet(cpus: [0], memoryNodes: [5])),
            ResourceLimits(cpuset: CPUSet(cpus: [0], memoryNodes: [])),
        ])
    func invalid(_ limits: ResourceLimits) {
        #expect(throws: JailError.self) {
            _ = try limits.cgroupSettings(version: .v1, guest: smallGuest, topology: testTopology)
        }
        #expect(throws: JailError.self) {
            _ = try limits.cgroupSettings(version: .v2, guest: smallGuest, topology: testTopology)
        }
    }

    @Test("a NUMA node becomes a cpuset of its CPUs and memory")
    func numa() throws {
        let settings = try ResourceLimits.none.cgroupSettings(
            version: .v2, guest: smallGuest, topology: testTopology, numaNode: 1)
        #expect(settings.map(\.argument) == ["cpuset.cpus=2-3", "cpuset.mems=1"])
        #expect(throws: JailError.numaNodeMissing(7)) {
            _ = try ResourceLimits.none.cgroupSettings(version: .v1, guest: smallGuest, topology: testTopology, numaNode: 7)
        }
        #expect(throws: JailError.self) {  // CPU 0 is on node 0
            _ = try ResourceLimits(cpuset: CPUSet(cpus: [0])).cgroupSettings(
                version: .v1, guest: smallGuest, topology: testTopology, numaNode: 1)
        }
        #expect(throws: JailError.self) {  // contradicting mems
            _ = try ResourceLimits(cpuset: CPUSet(cpus: [2], memoryNodes: [0])).cgroupSettings(
                version: .v1, guest: smallGuest, topology: testTopology, numaNode: 1)
        }
    }

    @Test("required controllers")
    func controllers() {
        #expect(ResourceLimits.none.requiredControllers().isEmpty)
        #expect(
            ResourceLimits(cpu: CPUQuota(cpus: 1), memory: .automatic, pids: 8).requiredControllers()
                == ["cpu", "memory", "pids"])
        #expect(ResourceLimits.none.requiredControllers(numaNode: 0) == ["cpuset"])
    }

    @Test("kernel list format round trip")
    func lists() throws {
        #expect(try HostTopology.parseList("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11])
        #expect(HostTopology.formatList([11, 0, 1, 2, 3, 8, 10]) == "0-3,8,10-11")
        #expect(try HostTopology.parseList("") == [])
        #expect(throws: JailError.self) { try HostTopology.parseList("3-1") }
        #expect(throws: JailError.self) { try HostTopology.parseList("a") }
    }
}

@Suite("Jail: layout and paths")
struct JailLayoutTests {
    let layout = JailLayout(chrootBase: "/srv/jailer", execFileName: "firecracker-v1.12.1", id: try! VMIdentifier("vm-1"))

    @Test("paths derive from the exec file name")
    func paths() {
        #expect(layout.jailDirectory == "/srv/jailer/firecracker-v1.12.1/vm-1")
        #expect(layout.rootDirectory == "/srv/jailer/firecracker-v1.12.1/vm-1/root")
        #expect(layout.pidFile == "/srv/jailer/firecracker-v1.12.1/vm-1/root/firecracker-v1.12.1.pid")
        #expect(layout.executableCopy == "/srv/jailer/firecracker-v1.12.1/vm-1/root/firecracker-v1.12.1")
        #expect(layout.apiSocketHostPath == "/srv/jailer/firecracker-v1.12.1/vm-1/root/run/firecracker.socket")
    }

    @Test("an unjailed VM's directory has no root/ inside")
    func unjailedDirectory() throws {
        let directory = layout.with(kind: .directory)
        #expect(directory.jailDirectory == layout.jailDirectory)
        #expect(directory.rootDirectory == "/srv/jailer/firecracker-v1.12.1/vm-1")
        #expect(try directory.hostPath(forJailPath: "/drives/rootfs") == "/srv/jailer/firecracker-v1.12.1/vm-1/drives/rootfs")
        #expect(try directory.jailPath(forHostPath: "/srv/jailer/firecracker-v1.12.1/vm-1/kernel") == "/kernel")
        #expect(directory != layout)
    }

    @Test("what is on disk says whether a VM's directory is a jail")
    func kindOnDisk() throws {
        let base = FilePath(NSTemporaryDirectory()).appending("layout-kind-\(getpid())")
        defer { _ = try? FileManager.default.removeItem(atPath: base.string) }
        let layout = JailLayout(chrootBase: base, execFileName: "firecracker", id: try VMIdentifier("vm-1"))
        #expect(layout.matchingDisk() == layout)  // nothing there: as given
        try FileManager.default.createDirectory(atPath: layout.jailDirectory.string, withIntermediateDirectories: true)
        #expect(layout.matchingDisk().kind == .directory)
        #expect(layout.with(kind: .directory).matchingDisk().rootDirectory == layout.jailDirectory)
        try FileManager.default.createDirectory(atPath: layout.jailDirectory.appending("root").string, withIntermediateDirectories: true)
        #expect(layout.with(kind: .directory).matchingDisk().kind == .jail)
    }

    @Test("in-jail and host paths translate both ways")
    func translation() throws {
        #expect(try layout.hostPath(forJailPath: "/images/rootfs.ext4") == "/srv/jailer/firecracker-v1.12.1/vm-1/root/images/rootfs.ext4")
        #expect(try layout.hostPath(forJailPath: "/run/firecracker.socket") == layout.apiSocketHostPath)
        #expect(try layout.jailPath(forHostPath: layout.apiSocketHostPath) == "/run/firecracker.socket")
        #expect(throws: JailError.self) { try layout.jailPath(forHostPath: "/srv/jailer/firecracker-v1.12.1/vm-1/x") }
        #expect(throws: JailError.self) { try layout.hostPath(forJailPath: "relative") }
        #expect(throws: JailError.self) { try layout.hostPath(forJailPath: "/a/../../etc") }
    }

    @Test("paths the jailer creates cannot be staged", arguments: ["/dev/kvm", "/run/x.sock", "/old_root", "/firecracker-v1.12.1", "/firecracker-v1.12.1.pid", "/", "/a/../b", "x"])
    func reserved(_ path: String) {
        #expect(throws: JailError.self) { try layout.validatedJailPath(FilePath(path)) }
    }

    @Test("allowed staging paths are normalized")
    func allowed() throws {
        #expect(try layout.validatedJailPath("/images//rootfs.ext4") == "/images/rootfs.ext4")
        #expect(try layout.validatedJailPath("/firecracker") == "/firecracker")  // another binary's name is fine
    }

    @Test("a socket host path longer than sun_path is refused")
    func socketLength() throws {
        _ = try layout.socketHostPath()
        let long = JailLayout(
            chrootBase: "/srv/jailer", execFileName: "firecracker-v1.12.1",
            id: try VMIdentifier(String(repeating: "a", count: 64)))
        #expect(throws: JailError.self) { try long.socketHostPath() }
    }

    @Test("the configuration's layout uses the exec file name, the jailer's default parent cgroup too")
    func fromConfiguration() throws {
        let configuration = testConfiguration()
        let layout = configuration.layout(for: try VMIdentifier("vm-1"))
        #expect(layout.execFileName == "firecracker-v1.12.1")
        #expect(layout.jailDirectory == "/srv/jailer/firecracker-v1.12.1/vm-1")
        #expect(configuration.effectiveParentCgroup == "firecracker-v1.12.1")
    }
}

@Suite("Jail: jailer command")
struct JailerCommandTests {
    @Test("exact argv for cgroup v1")
    func v1() throws {
        let configuration = testConfiguration()
        let layout = configuration.layout(for: try VMIdentifier("vm-1"))
        let limits = ResourceLimits(cpu: CPUQuota(cpus: 1), memory: .bytes(256 << 20), pids: 16)
        let command = try JailerCommand(
            configuration: configuration, layout: layout, cgroupVersion: .v1,
            cgroupSettings: limits.cgroupSettings(version: .v1, guest: smallGuest, topology: testTopology),
            firecrackerArguments: JailerCommand.firecrackerArguments(logPath: "/logs/firecracker.log", logLevel: "Info"))
        #expect(command.executable == "/opt/fc/jailer")
        #expect(
            command.arguments == [
                "--id", "vm-1",
                "--exec-file", "/opt/fc/does-not-exist/firecracker-v1.12.1",
                "--uid", "123", "--gid", "100",
                "--chroot-base-dir", "/srv/jailer",
                "--cgroup-version", "1",
                "--parent-cgroup", "firecracker-v1.12.1",
                "--cgroup", "cpu.cfs_period_us=100000",
                "--cgroup", "cpu.cfs_quota_us=100000",
                "--cgroup", "memory.limit_in_bytes=268435456",
                "--cgroup", "pids.max=16",
                "--new-pid-ns",
                "--",
                "--api-sock", "/run/firecracker.socket",
                "--log-path", "/logs/firecracker.log",
                "--level", "Info",
            ])
    }

    @Test("exact argv for cgroup v2 with every option")
    func v2() throws {
        var configuration = testConfiguration()
        configuration.parentCgroup = "microvm/tenants"
        configuration.networkNamespace = "/var/run/netns/vm2"
        configuration.daemonize = true
        configuration.newPIDNamespace = false
        configuration.processLimits = ProcessLimits(fileSizeBytes: 1 << 30, openFiles: 4096)
        let layout = configuration.layout(for: try VMIdentifier("vm-2"))
        let limits = ResourceLimits(cpu: CPUQuota(cpus: 0.5), memory: .bytes(512 << 20), pids: 64)
        let command = try JailerCommand(
            configuration: configuration, layout: layout, cgroupVersion: .v2,
            cgroupSettings: limits.cgroupSettings(version: .v2, guest: smallGuest, topology: testTopology),
            firecrackerArguments: JailerCommand.firecrackerArguments(apiSocket: nil, configFile: "/vm.json"))
        #expect(
            command.arguments == [
                "--id", "vm-2",
                "--exec-file", "/opt/fc/does-not-exist/firecracker-v1.12.1",
                "--uid", "123", "--gid", "100",
                "--chroot-base-dir", "/srv/jailer",
                "--cgroup-version", "2",
                "--parent-cgroup", "microvm/tenants",
                "--cgroup", "cpu.max=50000 100000",
                "--cgroup", "memory.max=536870912",
                "--cgroup", "pids.max=64",
                "--resource-limit", "fsize=1073741824",
                "--resource-limit", "no-file=4096",
                "--netns", "/var/run/netns/vm2",
                "--daemonize",
                "--",
                "--no-api", "--config-file", "/vm.json",
            ])
        #expect(command.description.contains("'cpu.max=50000 100000'"))
    }

    @Test("cgroup directories the jailer will create")
    func directories() throws {
        let host = CgroupHost.parse(procMounts: hybridMounts) { _ in [] }
        let configuration = testConfiguration()
        let layout = configuration.layout(for: try VMIdentifier("vm-1"))
        let command = try JailerCommand(
            configuration: configuration, layout: layout, cgroupVersion: .v1,
            cgroupSettings: [CgroupSetting("cpu.cfs_quota_us", "1000"), CgroupSetting("cpu.cfs_period_us", "1000"), CgroupSetting("pids.max", "9")],
            firecrackerArguments: [])
        #expect(
            command.cgroupDirectories(on: host) == [
                "/sys/fs/cgroup/cpu/firecracker-v1.12.1/vm-1", "/sys/fs/cgroup/pids/firecracker-v1.12.1/vm-1",
            ])
    }

    @Test("arguments the jailer sets itself and malformed settings are refused")
    func refused() throws {
        let configuration = testConfiguration()
        let layout = configuration.layout(for: try VMIdentifier("vm-1"))
        #expect(throws: JailError.self) {
            try JailerCommand(
                configuration: configuration, layout: layout, cgroupVersion: .v1, cgroupSettings: [],
                firecrackerArguments: ["--id", "other"])
        }
        #expect(throws: JailError.self) {
            try JailerCommand(
                configuration: configuration, layout: layout, cgroupVersion: .v1,
                cgroupSettings: [CgroupSetting("memory", "256")], firecrackerArguments: [])
        }
        var root = configuration
        root.uid = 0
        #expect(throws: JailError.self) {
            try JailerCommand(configuration: root, layout: layout, cgroupVersion: .v1, cgroupSettings: [], firecrackerArguments: [])
        }
    }
}

let hybridMounts = """
    sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
    tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
    cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
    cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
    cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
    cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
    cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
    cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
    cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
    """

@Suite("Jail: cgroup host detection")
struct CgroupHostTests {
    @Test("hybrid host: v1, controllers found by mount option, first cgroup2 mount kept")
    func hybrid() {
        let host = CgroupHost.parse(procMounts: hybridMounts) { directory in
            directory == "/sys/fs/cgroup/unified" ? [] : ["bogus"]
        }
        #expect(host.defaultVersion == .v1)
        #expect(host.v1Mount(for: "cpu")?.directory == "/sys/fs/cgroup/cpu")
        #expect(host.v1Mount(for: "cpuacct")?.directory == "/sys/fs/cgroup/cpuacct")
        #expect(host.v1Mount(for: "hugetlb") == nil)
        #expect(host.v2Mount?.directory == "/sys/fs/cgroup/unified")
        #expect(!host.isAvailable("memory", version: .v2))
        #expect(host.isAvailable("memory", version: .v1))
        #expect(host.everyCandidateDirectory(parent: "p", id: try! VMIdentifier("x")).count == 7)
    }

    @Test("pure v2 host")
    func pureV2() {
        let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
        let host = CgroupHost.parse(procMounts: mounts) { _ in ["cpuset", "cpu", "io", "memory", "pids"] }
        #expect(host.defaultVersion == .v2)
        #expect(host.isAvailable("pids", version: .v2))
        #expect(!host.isAvailable("pids", version: .v1))
        #expect(
            host.cgroupDirectories(version: .v2, parent: "firecracker", id: try! VMIdentifier("a"), settings: [CgroupSetting("pids.max", "5")])
                == ["/sys/fs/cgroup/firecracker/a"])
    }

    @Test("combined v1 controllers and escaped mount points")
    func combined() {
        let mounts = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup /mnt/with\\040space cgroup rw,pids 0 0\n"
        let host = CgroupHost.parse(procMounts: mounts) { _ in [] }
        #expect(host.v1Mount(for: "cpuacct")?.directory == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(host.v1Mount(for: "pids")?.directory == "/mnt/with space")
        #expect(CgroupHost.parse(procMounts: "") { _ in [] }.defaultVersion == nil)
    }

    @Test("configured version wins, auto uses the host's")
    func versionChoice() throws {
        let host = CgroupHost.parse(procMounts: hybridMounts) { _ in [] }
        var configuration = testConfiguration()
        #expect(try configuration.effectiveCgroupVersion(on: host) == .v1)
        configuration.cgroupVersion = .v2
        #expect(try configuration.effectiveCgroupVersion(on: host) == .v2)
        #expect(throws: JailError.self) {
            try JailerConfiguration().effectiveCgroupVersion(on: CgroupHost(v1Mounts: [], v2Mount: nil, defaultVersion: nil))
        }
    }
}

@Suite("Jail: configuration from the environment")
struct JailerEnvironmentTests {
    @Test("defaults when nothing is set")
    func defaults() throws {
        let configuration = try JailerConfiguration(environment: [:])
        #expect(configuration == JailerConfiguration())
        #expect(configuration.jailerBinary == "/usr/bin/jailer")
        #expect(configuration.uid == 123 && configuration.gid == 100)
        #expect(configuration.chrootBase == "/srv/jailer")
        #expect(configuration.cgroupVersion == nil)
        #expect(configuration.parentCgroup == nil)
        #expect(configuration.newPIDNamespace && !configuration.daemonize)
    }

    @Test("every variable is read")
    func all() throws {
        let configuration = try JailerConfiguration(environment: [
            "MICROVM_JAILER_BIN": "/opt/fc/jailer",
            "MICROVM_JAILER_FIRECRACKER_BIN": "/opt/fc/firecracker-v1.12.1",
            "MICROVM_JAILER_UID": "1000",
            "MICROVM_JAILER_GID": " 1001 ",
            "MICROVM_JAILER_CHROOT_BASE": "/var/lib/jails",
            "MICROVM_JAILER_CGROUP_PARENT": "microvm.slice",
            "MICROVM_JAILER_CGROUP_VERSION": "2",
            "MICROVM_JAILER_NUMA_NODE": "0",
            "MICROVM_JAILER_NETNS": "/var/run/netns/x",
            "MICROVM_JAILER_NEW_PID_NS": "false",
            "MICROVM_JAILER_DAEMONIZE": "yes",
            "MICROVM_JAILER_RLIMIT_FSIZE": "1073741824",
            "MICROVM_JAILER_RLIMIT_NO_FILE": "4096",
        ])
        #expect(
            configuration
                == JailerConfiguration(
                    jailerBinary: "/opt/fc/jailer", firecrackerBinary: "/opt/fc/firecracker-v1.12.1", uid: 1000, gid: 1001,
                    chrootBase: "/var/lib/jails", cgroupVersion: .v2, parentCgroup: "microvm.slice", numaNode: 0,
                    networkNamespace: "/var/run/netns/x", newPIDNamespace: false, daemonize: true,
                    processLimits: ProcessLimits(fileSizeBytes: 1 << 30, openFiles: 4096)))
    }

    @Test("MICROVM_FIRECRACKER_BIN is used when the jailer-specific variable is unset")
    func sharedFirecracker() throws {
        #expect(try JailerConfiguration(environment: ["MICROVM_FIRECRACKER_BIN": "/a/firecracker"]).firecrackerBinary == "/a/firecracker")
        #expect(
            try JailerConfiguration(environment: [
                "MICROVM_FIRECRACKER_BIN": "/a/firecracker", "MICROVM_JAILER_FIRECRACKER_BIN": "/b/firecracker",
            ]).firecrackerBinary == "/b/firecracker")
    }

    @Test(
        "bad values are errors naming the variable",
        arguments: [
            ("MICROVM_JAILER_UID", "abc"), ("MICROVM_JAILER_UID", "-1"), ("MICROVM_JAILER_UID", "0"),
            ("MICROVM_JAILER_UID", "4294967295"), ("MICROVM_JAILER_GID", "0"), ("MICROVM_JAILER_BIN", "jailer"),
            ("MICROVM_JAILER_CHROOT_BASE", "srv/jailer"), ("MICROVM_JAILER_CGROUP_VERSION", "3"),
            ("MICROVM_JAILER_CGROUP_PARENT", "/abs"), ("MICROVM_JAILER_CGROUP_PARENT", "a/../b"),
            ("MICROVM_JAILER_CGROUP_PARENT", "a//b"), ("MICROVM_JAILER_NUMA_NODE", "x"),
            ("MICROVM_JAILER_NEW_PID_NS", "maybe"), ("MICROVM_JAILER_RLIMIT_NO_FILE", "3"),
            ("MICROVM_JAILER_RLIMIT_FSIZE", "0"), ("MICROVM_JAILER_NETNS", "netns"),
            ("MICROVM_FIRECRACKER_BIN", "firecracker"),
        ])
    func bad(_ variable: String, _ value: String) {
        #expect {
            _ = try JailerConfiguration(environment: [variable: value])
        } throws: { error in
            guard case JailError.invalidSetting(let name, let got, _, let fix) = error else { return false }
            return name == variable && got == value.trimmingWhitespace() && !fix.isEmpty
        }
    }

    @Test("cgroup version auto and empty values mean the default")
    func auto() throws {
        #expect(try JailerConfiguration(environment: ["MICROVM_JAILER_CGROUP_VERSION": "auto"]).cgroupVersion == nil)
        #expect(try JailerConfiguration(environment: ["MICROVM_JAILER_UID": ""]).uid == 123)
    }

    @Test("sandbox policy")
    func policy() throws {
        #expect(try SandboxPolicy(environment: [:]) == .required)
        #expect(try SandboxPolicy(environment: ["MICROVM_SANDBOX_POLICY": "Preferred"]) == .preferred)
        #expect(try SandboxPolicy(environment: ["MICROVM_SANDBOX_POLICY": "disabled"]) == .disabled)
        #expect(throws: JailError.self) { try SandboxPolicy(environment: ["MICROVM_SANDBOX_POLICY": "off"]) }
    }
}

@Suite("Jail: jailer failures")
struct JailerFailureTests {
    /// stderr of the real jailer v1.12.1 (captured on this host), message -> kind.
    static let captured: [(String, JailerFailureKind)] = [
        ("Invalid instance ID: Invalid char (_) at position 1", .invalidIdentifier),
        ("Failed to canonicalize path /tmp/nope/firecracker: No such file or directory (os error 2)", .firecrackerMissing),
        ("Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": vmm", .execFileName),
        ("Failed to canonicalize path /tmp/jx/nobase: No such file or directory (os error 2)", .chrootBaseMissing),
        ("Controller memory is unavailable", .cgroupUnavailable),
        ("Invalid format for cgroups: memory:256", .cgroupWrite),
        ("Invalid resource argument: cpu", .resourceLimit),
        ("Parent cgroup path is invalid. Path should not be absolute or contain '..' or '.'", .cgroupWrite),
        ("Failed to open file /var/run/netns/none: No such file or directory (os error 2)", .networkNamespace),
        ("Failed to copy /tmp/fc-bin/firecracker to /tmp/jx/base/firecracker/ok1/root/firecracker: Permission denied (os error 13)", .chrootPermission),
        ("Failed to write to /sys/fs/cgroup/cpuset/jx-test2/ok1/tasks: No space left on device (os error 28)", .cgroupWrite),
        ("Failed to create /dev/net/tun via mknod inside the jail: File exists (os error 17)", .staleJail),
        ("Failed to open file /firecracker.pid: File exists (os error 17)", .staleJail),
    ]

    @Test("messages of the real jailer map to kinds; the message is kept verbatim")
    func mapping() {
        for (message, kind) in Self.captured {
            let stderr = "\nthread 'main' panicked at src/jailer/src/main.rs:355:27:\nJailer error: \(message)\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n"
            let error = JailerFailure.classify(id: "vm-1", termination: .signaled(6), standardError: stderr)
            #expect(error == .jailerFailed(id: "vm-1", termination: .signaled(6), kind: kind, message: message), "\(message)")
            #expect(error.description.contains(message))
            #expect(error.description.contains("SIGABRT"))
            #expect(!error.hint.isEmpty)
        }
    }

    @Test("argument errors exit 1 without a panic")
    func arguments() {
        let stderr = "Failed to parse arguments: Argument 'uid' required, but not found.\nError: ArgumentParsing(MissingArgument(\"uid\"))\n"
        let error = JailerFailure.classify(id: "vm-1", termination: .exited(1), standardError: stderr)
        #expect(
            error == .jailerFailed(
                id: "vm-1", termination: .exited(1), kind: .invalidArguments,
                message: "Failed to parse arguments: Argument 'uid' required, but not found."))
    }

    @Test("the configuration tells a missing chroot base from a missing Firecracker")
    func configurationAware() {
        var configuration = testConfiguration()
        configuration.chrootBase = "/srv/firecracker-jails"
        let stderr = "Jailer error: Failed to canonicalize path /srv/firecracker-jails: No such file or directory (os error 2)"
        guard case .jailerFailed(_, _, let kind, _) = JailerFailure.classify(
            id: "a", termination: .signaled(6), standardError: stderr, configuration: configuration)
        else {
            Issue.record("wrong case")
            return
        }
        #expect(kind == .chrootBaseMissing)
        #expect(JailerFailure.jailerMessage(in: "") == "(no message on stderr)")
    }

    @Test("jailer versions")
    func versions() {
        #expect(JailerVersion(parsing: "Jailer v1.12.1\n\n") == JailerVersion(major: 1, minor: 12, patch: 1))
        #expect(JailerVersion(parsing: "Jailer v1.12.1\n")!.requiresFirecrackerInExecName)
        #expect(!JailerVersion(parsing: "Jailer v1.13.0-dev")!.requiresFirecrackerInExecName)
        #expect(JailerVersion(parsing: "nothing") == nil)
    }

    @Test("policy decisions")
    func policy() throws {
        let logger = Logger(label: "test")
        let ready = PreflightReport(problems: [])
        let broken = PreflightReport(problems: [.jailerMissing(path: "/usr/bin/jailer", reason: "no such file")])
        #expect(try SandboxPolicy.required.decide(ready, logger: logger).isSandboxed)
        #expect {
            _ = try SandboxPolicy.required.decide(broken, logger: logger)
        } throws: { error in
            guard let error = error as? JailError, case .sandboxUnavailable(let problems) = error else { return false }
            return problems.count == 1 && error.description.contains("/usr/bin/jailer") && error.hint.contains("preferred")
        }
        #expect(try SandboxPolicy.preferred.decide(broken, logger: logger) == .unjailed(reasons: broken.problems))
        #expect(try !SandboxPolicy.disabled.decide(ready, logger: logger).isSandboxed)
    }
}


@Suite("ProcFS")
struct ProcFSTests {
    /// The byte parser against the fields as `split` gives them (a command with spaces and a
    /// parenthesis in it included: the start time is counted from the last `)`).
    @Test func startTimeIsField22() throws {
        let text = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let fields = text[text.index(after: text.lastIndex(of: ")")!)...].split(separator: " ")
        #expect(ProcFS.startTime(of: getpid()) == UInt64(fields[19]))
        #expect(ProcFS.startTime(of: 1) != nil)
        #expect(ProcFS.startTime(of: Int32.max) == nil)
    }

    /// Fields 14 and 15 (user and system time, in clock ticks), for the whole process.
    @Test func cpuTimeIsFields14And15() throws {
        // Burn some CPU first, so that the figure is not 0 ticks.
        var spin: UInt64 = 0
        let until = ContinuousClock.now + .milliseconds(50)
        while ContinuousClock.now < until { spin &+= 1 }
        let text = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let fields = text[text.index(after: text.lastIndex(of: ")")!)...].split(separator: " ")
        let ticks = UInt64(fields[11])! + UInt64(fields[12])!
        let time = try #require(ProcFS.cpuTime(of: getpid()))
        let tick = Duration.nanoseconds(1_000_000_000 / sysconf(Int32(_SC_CLK_TCK)))
        #expect(time >= tick * Int(ticks) && time <= tick * Int(ticks + 2), "\(time) for \(ticks) ticks (spun \(spin))")
        #expect(time > .zero)
        #expect(ProcFS.cpuTime(of: Int32.max) == nil)
    }
}
