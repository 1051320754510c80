import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

@Suite("VM spec: strict decoding and validation")
struct VMSpecTests {
    static let kernel = "/proc/self/exe"  // any existing regular file will do for validation

    static let json = """
        {
          "id": "vm-1",
          "machine": {"vcpus": 2, "memory_mib": 256, "smt": false, "track_dirty_pages": true},
          "boot": {"kernel": "\(kernel)", "args": ["console=ttyS0", "reboot=k", "panic=1"]},
          "drives": [{"id": "rootfs", "path": "\(kernel)", "root": true,
                      "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}],
          "network_interfaces": [{"id": "eth0", "tap": "tap0", "mac": "06:00:ac:10:00:02"}],
          "vsock": {"guest_cid": 3},
          "mmds": {"version": "V2", "network_interfaces": ["eth0"], "metadata": {"latest": {"token": "x"}}},
          "balloon": {"amount_mib": 16, "deflate_on_oom": true},
          "logging": {"level": "Warning", "vmm_level": "Warning", "metrics": true},
          "console": {"ring_lines": 100, "file": "/var/log/vm-1.console"},
          "jail": {"uid": 1000, "gid": 1000, "chroot_base": "/srv/jailer"},
          "limits": {"cpus": 1.5, "pids": 64},
          "sandbox": "preferred"
        }
        """

    @Test("A complete JSON spec decodes, keeps the argument order, and validates")
    func completeJSON() throws {
        let spec = try VMSpec.decode(json: Data(Self.json.utf8))
        #expect(spec.boot.args == ["console=ttyS0", "reboot=k", "panic=1"])
        #expect(spec.drives.first?.rateLimiter?.bandwidth?.size == 1_048_576)
        #expect(spec.mmds?.metadata == .object(["latest": .object(["token": .string("x")])]))
        #expect(spec.sandbox == .preferred)
        #expect(spec.logging?.level == .warning)
        #expect(spec.logging?.vmmLevel == .warning)
        #expect(spec.validate().isEmpty, "\(spec.validate())")
        // It survives a round trip.
        #expect(try VMSpec.decode(json: JSONEncoder().encode(spec)) == spec)
    }

    @Test("An unknown key is an error naming its path, however deep")
    func unknownKeys() throws {
        let typo = Self.json.replacingOccurrences(of: "\"bandwidth\"", with: "\"bandwith\"")
            .replacingOccurrences(of: "\"sandbox\"", with: "\"sandbx\"")
        #expect {
            try VMSpec.decode(json: Data(typo.utf8))
        } throws: { error in
            guard case .invalidSpec(let id, let problems) = error as? MicroVMError else { return false }
            return id == "vm-1" && Set(problems.map(\.field)) == ["drives[0].rate_limiter.bandwith", "sandbx"]
                && problems.allSatisfy { $0.message == "unknown key" }
        }
    }

    @Test("Missing and mistyped values name their field")
    func shapeErrors() {
        #expect {
            try VMSpec.decode(json: Data(#"{"id": "a", "machine": {"vcpus": 1, "memory_mib": 64}, "boot": {}}"#.utf8))
        } throws: { error in
            guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
            return problems.map(\.field) == ["boot.kernel"] && problems.first?.message == "missing"
        }
        #expect {
            try VMSpec.decode(json: Data(#"{"id": "a", "machine": {"vcpus": "two", "memory_mib": 64}, "boot": {"kernel": "/k"}}"#.utf8))
        } throws: { error in
            guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
            return problems.map(\.field) == ["machine.vcpus"] && problems.first?.message == "expected an integer"
        }
        #expect(throws: MicroVMError.self) { try VMSpec.decode(json: Data("{not json".utf8)) }
    }

    /// The one problem of a minimal spec with `yaml` added; nil when it decodes or has several.
    static func onlyProblem(_ yaml: String) -> SpecProblem? {
        do {
            _ = try VMSpec.decode(yaml: "id: a\nmachine: {vcpus: 1, memory_mib: 64}\nboot: {kernel: /k}\n" + yaml)
            return nil
        } catch {
            guard case .invalidSpec(_, let problems) = error, problems.count == 1 else { return nil }
            return problems[0]
        }
    }

    @Test("A number its field cannot hold is named with the field and the range (Foundation's decoder gives no path)")
    func numbersOutOfRange() {
        let cid = Self.onlyProblem("vsock: {guest_cid: -3}")
        #expect(cid?.field == "vsock.guest_cid" && cid?.message == "-3 does not fit this field", "\(String(describing: cid))")
        #expect(cid?.hint == "give a whole number from 0 to 4294967295")
        let uid = Self.onlyProblem("jail: {uid: 5000000000}")
        #expect(uid?.field == "jail.uid", "\(String(describing: uid))")
        let size = Self.onlyProblem("drives: [{id: d, path: /d, rate_limiter: {bandwidth: {size: -5, refill_time: 100}}}]")
        #expect(size?.field == "drives[0].rate_limiter.bandwidth.size" && size?.hint == "give a whole number from 0 to \(Int64.max)")
        let fraction = Self.onlyProblem("balloon: {amount_mib: 1.5}")
        #expect(fraction?.field == "balloon.amount_mib" && fraction?.hint == "give a whole number", "\(String(describing: fraction))")
        let huge = Self.onlyProblem("console: {ring_lines: 99999999999999999999}")
        #expect(huge?.field == "console.ring_lines", "\(String(describing: huge))")
        let text = Self.onlyProblem("drives: [{id: d, path: /d, rate_limiter: {bandwidth: {size: 5, refill_time: '1s'}}}]")
        #expect(text?.field == "drives[0].rate_limiter.bandwidth.refill_time" && text?.message == "expected an integer")
    }

    @Test("Huge pages the host has not reserved are named before the launch (Firecracker would blame the kernel image)")
    func hugePagesNotReserved() {
        var spec = VMSpec(id: "hp", machine: .init(vcpus: 1, memoryMiB: 1 << 20, hugePages: .hugetlbfs2M), boot: .init(kernel: Self.kernel))
        let problem = spec.validate().first { $0.field == "machine.huge_pages" }
        #expect(problem?.message.contains("need 524288 free 2 MiB huge pages") == true, "\(spec.validate())")
        #expect(problem?.hint?.contains("nr_hugepages") == true)
        spec.machine.hugePages = HugePages.none
        #expect(!spec.validate().contains { $0.field == "machine.huge_pages" })
    }

    @Test("MMDS's address must be an IPv4 link-local one, as Firecracker requires")
    func mmdsAddress() throws {
        var spec = try VMSpec.decode(json: Data(Self.json.utf8))
        for (address, expected) in [("169.254.170.2", nil), ("8.8.8.8", "not link-local"), ("not-an-ip", "not an IPv4 address")] {
            spec.mmds?.ipv4Address = address
            let problem = spec.validate().first { $0.field == "mmds.ipv4_address" }
            #expect(problem?.message.contains(expected ?? "") ?? (expected == nil), "\(address): \(String(describing: problem))")
            #expect((problem == nil) == (expected == nil), "\(address)")
        }
    }

    @Test("A value an enumeration does not have is named with the values it has")
    func enumerationChoices() {
        let version = Self.onlyProblem("mmds: {version: V3}")
        #expect(version?.field == "mmds.version" && version?.message == "'V3' is not one of V1, V2", "\(String(describing: version))")
        let cache = Self.onlyProblem("drives: [{id: d, path: /d, cache_type: Writeback2}]")
        #expect(cache?.field == "drives[0].cache_type" && cache?.message.contains("Unsafe, Writeback") == true, "\(String(describing: cache))")
        let policy = Self.onlyProblem("sandbox: maybe")
        #expect(policy?.message == "'maybe' is not one of required, preferred, disabled", "\(String(describing: policy))")
        let level = Self.onlyProblem("logging: {level: Verbose}")
        #expect(level?.message.contains("Error, Warning, Info, Debug, Trace, Off") == true, "\(String(describing: level))")
    }

    @Test("A file may leave the id to its caller (the CLI's --id); validation names it if nobody gives one")
    func idLeftToTheCaller() throws {
        var spec = try VMSpec.decode(yaml: "machine: {vcpus: 1, memory_mib: 64}\nboot: {kernel: \(Self.kernel)}\n")
        #expect(spec.id == "")
        #expect(spec.validate().map(\.field) == ["id"], "\(spec.validate())")
        spec.id = "given"
        #expect(spec.validate().isEmpty, "\(spec.validate())")
    }

    @Test("A spec without boot.args boots with the serial console, reboot=k and panic=1 (as --kernel alone does)")
    func defaultBootArguments() throws {
        let spec = try VMSpec.decode(yaml: "id: a\nmachine: {vcpus: 1, memory_mib: 64}\nboot: {kernel: /k}\n")
        #expect(spec.boot.args == ["console=ttyS0", "reboot=k", "panic=1"])
        #expect(try VMSpec.decode(yaml: "id: a\nmachine: {vcpus: 1, memory_mib: 64}\nboot: {kernel: /k, args: []}\n").boot.args == [])
    }

    @Test("JSON: a key given twice is an error naming it, as in YAML (JSON's decoder would keep one silently)")
    func duplicateJSONKeys() {
        let json = #"{"id": "a", "machine": {"vcpus": 1, "memory_mib": 64, "vcpus": 2}, "boot": {"kernel": "/k\"x"}, "drives": [{"id": "d", "path": "/d"}, {"id": "e", "path": "/e", "path": "/f"}], "machine": {"vcpus": 1, "memory_mib": 128}}"#
        do {
            _ = try VMSpec.decode(json: Data(json.utf8))
            Issue.record("decoded")
        } catch {
            guard case .invalidSpec(_, let problems) = error else {
                Issue.record("\(error)")
                return
            }
            #expect(problems.map(\.field) == ["machine.vcpus", "drives[1].path", "machine"], "\(problems)")
            #expect(problems.allSatisfy { $0.message == "given twice" })
        }
        #expect((try? VMSpec.decode(json: Data(Self.json.utf8))) != nil)
    }

    @Test("YAML: the same spec; unquoted Off and no stay strings; duplicate keys are errors")
    func yaml() throws {
        let yaml = """
            id: vm-2
            machine:
              vcpus: 1
              memory_mib: 128
            boot:
              kernel: \(Self.kernel)
              args: [console=ttyS0, "quiet"]
            logging:
              level: Off
            """
        let spec = try VMSpec.decode(yaml: yaml)
        #expect(spec.logging?.level == .off)
        #expect(spec.boot.args == ["console=ttyS0", "quiet"])
        #expect(spec.validate().isEmpty)
        #expect {
            try VMSpec.decode(yaml: yaml + "\nid: again\n")
        } throws: { error in
            guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
            return problems.first?.message.contains("duplicated key(s): 'id'") == true
        }
        #expect {
            try VMSpec.decode(yaml: yaml + "\nmachine_typo: 1\n")
        } throws: { error in
            guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
            return problems.map(\.field) == ["machine_typo"]
        }
    }

    @Test("load(from:) picks the format by extension")
    func loadFromFile() throws {
        let directory = NSTemporaryDirectory() + "microvm-spec-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try Data(Self.json.utf8).write(to: URL(fileURLWithPath: directory + "/vm.json"))
        #expect(try VMSpec.load(from: .init(directory + "/vm.json")).id == "vm-1")
        try Data("id: y\nmachine: {vcpus: 1, memory_mib: 8}\nboot: {kernel: /k}\n".utf8).write(to: URL(fileURLWithPath: directory + "/vm.yaml"))
        #expect(try VMSpec.load(from: .init(directory + "/vm.yaml")).id == "y")
        #expect(throws: MicroVMError.self) { try VMSpec.load(from: .init(directory + "/missing.json")) }
    }

    @Test("A file that cannot be read, an empty one and broken JSON are each said plainly, with where it broke")
    func unreadableAndBroken() throws {
        let directory = FilePath(NSTemporaryDirectory()).appending("microvm-spec-broken-\(getpid())").string
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func failure(_ body: () throws -> VMSpec) -> MicroVMError? {
            do {
                _ = try body()
                return nil
            } catch {
                return error as? MicroVMError
            }
        }
        let missing = failure { try VMSpec.load(from: .init(directory + "/missing.json")) }
        #expect(missing?.description == "invalid spec: cannot read the spec file \(directory)/missing.json: no such file or directory")
        #expect(missing?.hint == "check the path")
        #expect(failure { try VMSpec.load(from: .init(directory)) }?.description.hasSuffix("it is a directory") == true)

        try Data("  \n".utf8).write(to: URL(fileURLWithPath: directory + "/empty.json"))
        #expect(failure { try VMSpec.load(from: .init(directory + "/empty.json")) }?.description == "invalid spec: the document is empty")

        try Data("{\n  \"id\": \"x\",\n  \"machine\": {\"vcpus\": 1 \"memory_mib\": 64}\n}\n".utf8).write(to: URL(fileURLWithPath: directory + "/broken.json"))
        let broken = failure { try VMSpec.load(from: .init(directory + "/broken.json")) }
        #expect(broken?.description.contains("not valid JSON") == true && broken?.description.contains("line 3, column 26") == true, "\(String(describing: broken))")
        #expect(broken?.hint == "correct the spec file")
    }

    @Test("Validation names every problem's field")
    func validation() {
        var spec = VMSpec(id: "bad_id", machine: .init(vcpus: 3, memoryMiB: 0, smt: true), boot: .init(kernel: "/no/such/kernel", args: ["console=ttyS0 quiet"]))
        spec.drives = [DriveSpec(id: "a", path: "relative.img"), DriveSpec(id: "a", path: Self.kernel, root: true), DriveSpec(id: "b-c", path: "/proc", root: true)]
        spec.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: "a-name-longer-than-15", mac: "zz:00:00:00:00:00", mtu: 10)]
        spec.vsock = VsockSpec(guestCid: 2)
        spec.mmds = MMDSSpec(networkInterfaces: ["eth9"], metadata: .array([]))
        spec.balloon = Balloon(amountMiB: 512, deflateOnOom: false)
        spec.limits = .init(cpus: 0, memoryMiB: 8, pids: 1)
        spec.jail = .init(chrootBase: "srv", parentCgroup: "/abs")
        let fields = Set(spec.validate().map(\.field))
        #expect(
            fields == [
                "id", "machine.vcpus", "machine.memory_mib", "boot.kernel", "boot.args[0]", "drives[0].path", "drives[1].id",
                "drives[2].id", "drives[2].path", "drives", "network_interfaces[0].tap", "network_interfaces[0].mac",
                "network_interfaces[0].mtu", "vsock.guest_cid", "mmds.network_interfaces[0]",
                "balloon.amount_mib", "jail.chroot_base", "jail.parent_cgroup", "limits.cpus", "limits.memory_mib", "limits.pids",
            ], "\(fields)")
        #expect(throws: MicroVMError.self) { try spec.check() }
    }
    @Test("cpu_config: decoded strictly (a misspelt key inside it is named), checked against machine.cpu_template and the host's architecture")
    func customCPUTemplate() throws {
        let base = VMSpec(id: "cpu", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: Self.kernel))
        var spec = base
        spec.cpuConfig = CpuConfig(
            cpuidModifiers: [
                CpuidLeafModifier(leaf: "0x1", subleaf: "0x0", flags: 0, modifiers: [CpuidRegisterModifier(register: .ecx, bitmap: "0b1" + String(repeating: "x", count: 31))])
            ])
        #expect(spec.validate().isEmpty, "\(spec.validate())")
        let encoded = try JSONEncoder().encode(spec)
        #expect(try VMSpec.decode(json: encoded) == spec)
        // A misspelt key deep inside the template.
        var tree = try JSONDecoder().decode(JSONValue.self, from: encoded)
        let typo = String(decoding: try JSONEncoder().encode(tree), as: UTF8.self).replacingOccurrences(of: "\"bitmap\"", with: "\"bitmapp\"")
        tree = try JSONDecoder().decode(JSONValue.self, from: Data(typo.utf8))
        #expect {
            _ = try VMSpec.decode(tree: tree)
        } throws: { error in
            guard case .invalidSpec(_, let problems)? = error as? MicroVMError else { return false }
            return problems.map(\.field).contains { $0.hasPrefix("cpu_config.cpuid_modifiers[0].modifiers[0]") }
        }
        var both = spec
        both.machine.cpuTemplate = .t2
        #expect(both.validate().map(\.field) == ["cpu_config"])
        var arm = base
        arm.cpuConfig = CpuConfig(vcpuFeatures: [VcpuFeatures(index: 0, bitmap: "0b1")])
        #expect(arm.validate().first?.message.contains("aarch64") == true, "\(arm.validate())")
    }

    @Test("A kernel that Firecracker cannot boot is named from its first bytes, before anything is made")
    func kernelImages() throws {
        let directory = NSTemporaryDirectory() + "microvm-kernels-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func file(_ name: String, _ bytes: [UInt8]) throws -> String {
            let path = directory + "/" + name
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            return path
        }
        var elf = [UInt8](repeating: 0, count: 64)
        elf[0...3] = [0x7F, 0x45, 0x4C, 0x46]
        elf[4] = 2
        elf[18] = 0x3E
        var bzImage = [UInt8](repeating: 0, count: 0x400)
        bzImage[0x202..<0x206] = [0x48, 0x64, 0x72, 0x53]
        var elf32 = elf
        elf32[4] = 1
        var arm64 = elf
        arm64[18] = 0xB7
        let cases: [(String, [UInt8], String?)] = [
            ("vmlinux", elf, nil),
            ("bzImage", bzImage, "is a bzImage"),
            ("vmlinux.gz", [0x1F, 0x8B, 8, 0], "is gzip-compressed"),
            ("script", Array("#!/bin/sh\n".utf8), "is not an ELF file (it starts with 23 21 2f 62 69 6e 2f 73)"),
            ("empty", [], "is empty"),
            ("elf32", elf32, "is a 32-bit ELF file"),
            ("arm64", arm64, "machine 0xb7, not x86-64"),
        ]
        for (name, bytes, defect) in cases {
            let path = try file(name, bytes)
            #expect(KernelImage.defect(at: path).map { $0.contains(defect ?? "-") } ?? (defect == nil), "\(name): \(String(describing: KernelImage.defect(at: path)))")
            let problems = VMSpec(id: "k", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: path)).validate()
            let kernel = problems.filter { $0.field == "boot.kernel" }
            if defect == nil {
                #expect(kernel.isEmpty, "\(name): \(kernel)")
            } else {
                #expect(kernel.count == 1 && kernel[0].message.hasPrefix("\(path) ") && kernel[0].hint?.contains("extract-vmlinux") == true, "\(name): \(kernel)")
            }
        }
        // Unreadable or missing: left to the existence check and to Firecracker.
        #expect(KernelImage.defect(at: directory + "/missing") == nil)
    }

    @Test("A drive in a container format (qcow2, VMDK, VHDX, VDI) is named with the conversion; raw images pass")
    func diskImages() throws {
        let directory = NSTemporaryDirectory() + "microvm-disks-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var vdi = [UInt8](repeating: 0, count: 0x200)
        vdi[0x40..<0x44] = [0x7F, 0x10, 0xDA, 0xBE]
        let cases: [(String, [UInt8], String?)] = [
            ("raw", [UInt8](repeating: 0, count: 4096), nil),
            ("cloud.img", [0x51, 0x46, 0x49, 0xFB, 0, 0, 0, 3], "qcow2"),
            ("disk.vmdk", Array("KDMV".utf8) + [1, 0, 0, 0], "VMDK"),
            ("disk.vhdx", Array("vhdxfile".utf8), "VHDX"),
            ("disk.vdi", vdi, "VDI"),
        ]
        for (name, bytes, format) in cases {
            let path = directory + "/" + name
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(DiskImage.containerFormat(at: path) == format, "\(name)")
            var spec = VMSpec(id: "d", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: VMSpecTests.kernel))
            spec.drives = [DriveSpec(id: "rootfs", path: path, root: true)]
            let problems = spec.validate().filter { $0.field == "drives[0].path" }
            if let format {
                #expect(problems.count == 1 && problems[0].message.contains("is a \(format) image") && problems[0].hint?.contains("qemu-img convert -O raw") == true, "\(problems)")
            } else {
                #expect(problems.isEmpty, "\(problems)")
            }
        }
    }
}

@Suite("Firecracker's own config file, read as a spec")
struct FirecrackerConfigFileTests {
    /// The shape of Firecracker's documented example (nulls included), with every section.
    static let file = """
        {
          "boot-source": {"kernel_image_path": "/images/vmlinux", "boot_args": "console=ttyS0  reboot=k panic=1\\tpci=off", "initrd_path": null},
          "drives": [
            {"drive_id": "rootfs", "partuuid": null, "is_root_device": true, "cache_type": "Unsafe", "is_read_only": false,
             "path_on_host": "/images/rootfs.ext4", "io_engine": "Sync", "rate_limiter": null, "socket": null},
            {"drive_id": "data", "is_root_device": false, "is_read_only": true, "path_on_host": "/images/data.ext4",
             "rate_limiter": {"bandwidth": {"size": 1048576, "refill_time": 100}}}
          ],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false, "track_dirty_pages": true, "huge_pages": "None"},
          "cpu-config": null,
          "balloon": {"amount_mib": 16, "deflate_on_oom": true, "stats_polling_interval_s": 1},
          "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}],
          "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
          "logger": {"log_path": "/tmp/fc.log", "level": "Debug", "show_level": true, "show_log_origin": false},
          "metrics": {"metrics_path": "/tmp/fc-metrics"},
          "mmds-config": {"version": "V2", "network_interfaces": ["eth0"]},
          "entropy": {}
        }
        """

    @Test("Every section becomes the spec's equivalent; the driver's own paths are not taken; the id is the caller's")
    func convertsEverySection() throws {
        let spec = try VMSpec.decode(json: Data(Self.file.utf8))
        #expect(spec.id == "")
        #expect(spec.boot.kernel == "/images/vmlinux" && spec.boot.initrd == nil)
        #expect(spec.boot.args == ["console=ttyS0", "reboot=k", "panic=1", "pci=off"])
        #expect(spec.machine.vcpus == 2 && spec.machine.memoryMiB == 256 && spec.machine.smt == false && spec.machine.trackDirtyPages == true)
        #expect(spec.drives.map(\.id) == ["rootfs", "data"])
        #expect(spec.drives[0].root == true && spec.drives[0].readOnly == false && spec.drives[0].path == "/images/rootfs.ext4")
        #expect(spec.drives[0].cacheType == .unsafe && spec.drives[0].ioEngine == .sync)
        #expect(spec.drives[1].readOnly == true && spec.drives[1].rateLimiter?.bandwidth?.size == 1_048_576)
        #expect(spec.networkInterfaces == [NetworkInterfaceSpec(id: "eth0", tap: "tap0", mac: "06:00:ac:10:00:02")])
        #expect(spec.vsock?.guestCid == 3)
        #expect(spec.mmds?.version == .v2 && spec.mmds?.networkInterfaces == ["eth0"])
        #expect(spec.balloon?.amountMiB == 16 && spec.entropy != nil)
        #expect(spec.logging?.vmmLevel == .debug && spec.logging?.metrics == true)
    }

    @Test("What a spec cannot honour, and typos, are reported together, in the file's own terms")
    func reportsEveryProblem() {
        let file = """
            {"boot-source": {"kernel_image_path": "/k", "boot_arg": "x"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
             "drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": false, "is_read_only": true, "socket": "/vhost.sock"}],
             "cpu-config": {"cpuid_modifiers": [], "msr_modifer": []}, "memory-hotplug": {"total_size_mib": 1024}}
            """
        let problems = Self.problems(file)
        #expect(problems.map(\.field) == ["boot-source.boot_arg", "cpu-config.msr_modifer", "drives[0].socket", "memory-hotplug"], "\(problems)")
        #expect(problems.allSatisfy { $0.hint != nil })
    }

    /// The problems decoding `file` reports (none recorded as an issue: it must fail).
    static func problems(_ file: String) -> [SpecProblem] {
        do {
            _ = try VMSpec.decode(json: Data(file.utf8))
            Issue.record("decoded a file that has keys Firecracker 1.12 or this driver does not take")
        } catch {
            guard case .invalidSpec(_, let problems) = error else {
                Issue.record("\(error)")
                return []
            }
            return problems
        }
        return []
    }

    @Test("Keys of Firecracker before 1.0 and sections of later releases are named with what to write instead")
    func olderAndNewerKeys() {
        let file = """
            {"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "ht_enabled": false},
             "logger": {"log_fifo": "/tmp/log.fifo", "level": "Info"}, "metrics": {"metrics_fifo": "/tmp/metrics.fifo"},
             "mmds-version": "V1", "pmem": [{"id": "p", "path_on_host": "/p"}], "memory-hotplug": {"total_size_mib": 1024}}
            """
        let problems = Self.problems(file)
        let byField = Dictionary(uniqueKeysWithValues: problems.map { ($0.field, $0) })
        #expect(
            Set(byField.keys) == ["machine-config.ht_enabled", "logger.log_fifo", "metrics.metrics_fifo", "mmds-version", "pmem", "memory-hotplug"],
            "\(problems)")
        #expect(byField["machine-config.ht_enabled"]?.hint?.contains("smt") == true)
        #expect(byField["logger.log_fifo"]?.hint?.contains("log_path") == true)
        #expect(byField["metrics.metrics_fifo"]?.hint?.contains("metrics_path") == true)
        #expect(byField["mmds-version"]?.hint?.contains("mmds-config") == true)
        #expect(byField["pmem"]?.message.contains("1.14") == true && byField["pmem"]?.hint?.contains("drive") == true)
        #expect(byField["memory-hotplug"]?.message.contains("1.16") == true)
    }

    @Test("cpu-config becomes the spec's custom CPU template, key for key")
    func cpuConfig() throws {
        let file = """
            {"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64},
             "cpu-config": {"kvm_capabilities": ["!56"],
                            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                                                 "modifiers": [{"register": "ecx", "bitmap": "0b1xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}],
                            "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}]}}
            """
        let spec = try VMSpec.decode(json: Data(file.utf8))
        let config = try #require(spec.cpuConfig)
        #expect(config.kvmCapabilities == ["!56"])
        #expect(config.cpuidModifiers?.first?.leaf == "0x1" && config.cpuidModifiers?.first?.modifiers.first?.register == .ecx)
        #expect(config.msrModifiers?.first?.addr == "0x10a")
    }

    @Test("cpu-config as Firecracker's config file has it: the path of a JSON file holding the template")
    func cpuConfigFile() throws {
        let path = NSTemporaryDirectory() + "cpu-template-\(getpid()).json"
        try Data(#"{"kvm_capabilities": ["!56"]}"#.utf8).write(to: URL(fileURLWithPath: path))
        defer { unlink(path) }
        let file = #"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 64}, "cpu-config": "PATH"}"#
        let spec = try VMSpec.decode(json: Data(file.replacingOccurrences(of: "PATH", with: path).utf8))
        #expect(spec.cpuConfig?.kvmCapabilities == ["!56"])
        #expect {
            _ = try VMSpec.decode(json: Data(file.replacingOccurrences(of: "PATH", with: path + ".missing").utf8))
        } throws: { error in
            guard case .invalidSpec(_, let problems)? = error as? MicroVMError else { return false }
            return problems.map(\.field) == ["cpu-config"] && problems[0].message.contains("cannot read the CPU template file")
        }
    }

    @Test("As in Firecracker, machine-config may be left out and boot_args default to Firecracker's command line")
    func firecrackerDefaults() throws {
        let spec = try VMSpec.decode(json: Data(#"{"boot-source": {"kernel_image_path": "/k"}, "drives": []}"#.utf8))
        #expect(spec.machine.vcpus == 1 && spec.machine.memoryMiB == 128)
        #expect(spec.boot.args.joined(separator: " ") == "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd")
    }

    @Test("Problems of the spec a file becomes are named in the file's terms; the message names no VM")
    func specProblemsInFileTerms() {
        let missingMemory = Self.problems(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1}}"#)
        #expect(missingMemory.map(\.field) == ["machine-config.mem_size_mib"], "\(missingMemory)")
        let missingTAP = Self.problems(#"{"boot-source": {"kernel_image_path": "/k"}, "network-interfaces": [{"iface_id": "eth0"}]}"#)
        #expect(missingTAP.map(\.field) == ["network-interfaces[0].host_dev_name"], "\(missingTAP)")
        let negative = Self.problems(#"{"boot-source": {"kernel_image_path": "/k"}, "vsock": {"guest_cid": -1}}"#)
        #expect(negative.map(\.field) == ["vsock.guest_cid"], "\(negative)")
        let mistyped = Self.problems(#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": "2", "mem_size_mib": 64}}"#)
        #expect(mistyped.map(\.field) == ["machine-config.vcpu_count"], "\(mistyped)")
        do {
            _ = try VMSpec.decode(json: Data(#"{"boot-source": {}}"#.utf8))
            Issue.record("decoded")
        } catch {
            #expect("\(error)".hasPrefix("invalid spec: boot-source.kernel_image_path: missing"), "\(error)")
        }
    }

    @Test("A spec is never taken for Firecracker's format, nor the other way round")
    func formatsAreTold() throws {
        #expect(try VMSpec.decode(json: Data(VMSpecTests.json.utf8)).id == "vm-1")
        #expect(throws: MicroVMError.self) { try VMSpec.decode(json: Data(#"{"boot-source": {"kernel_image_path": "/k"}, "id": "x"}"#.utf8)) }
    }

}
