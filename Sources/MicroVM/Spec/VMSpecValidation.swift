import FirecrackerAPI
import MicroVMHost

#if canImport(Glibc)
    import Glibc
#endif

extension VMSpec {
    /// Every problem with the spec, each naming its field, without touching the host (it only
    /// reads: files must exist and be regular files).
    /// The host's free, unreserved 2 MiB huge pages; nil where the host does not say.
    static func available2MHugePages() -> Int? {
        func read(_ name: String) -> Int? {
            let path = "/sys/kernel/mm/hugepages/hugepages-2048kB/\(name)"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        guard let free = read("free_hugepages") else { return nil }
        return max(0, free - (read("resv_hugepages") ?? 0))
    }

    public func validate() -> [SpecProblem] {
        var problems: [SpecProblem] = []
        func problem(_ field: String, _ message: String, _ hint: String? = nil) {
            problems.append(SpecProblem(field: field, message: message, hint: hint))
        }
        do {
            _ = try VMIdentifier(id)
        } catch {
            problem("id", "'\(id)' is not a valid VM id: \(error.summary)", "use 1-64 ASCII letters, digits or '-', or VMIdentifier.derive(from:)")
        }

        if !(1...32).contains(machine.vcpus) { problem("machine.vcpus", "\(machine.vcpus) is outside 1...32") }
        if machine.smt == true, machine.vcpus > 1, machine.vcpus % 2 != 0 {
            problem("machine.vcpus", "\(machine.vcpus) vCPUs with SMT", "with smt the count must be 1 or even")
        }
        if machine.memoryMiB < 1 { problem("machine.memory_mib", "must be at least 1") }
        if machine.hugePages == .hugetlbfs2M, machine.memoryMiB % 2 != 0 {
            problem("machine.memory_mib", "\(machine.memoryMiB) MiB is not a multiple of 2 MiB", "huge_pages 2M needs an even size")
        }
        if machine.hugePages == .hugetlbfs2M, let available = Self.available2MHugePages(), available * 2 < machine.memoryMiB {
            // Firecracker would fail only once launched, and in other words ("Unable to read
            // kernel image" on a guest memory it could not map).
            let needed = (machine.memoryMiB + 1) / 2
            problem(
                "machine.huge_pages", "the guest's \(machine.memoryMiB) MiB need \(needed) free 2 MiB huge pages; the host has \(available) free",
                "reserve them first: echo \(needed) > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages (more for several VMs), or drop huge_pages")
        }
        if machine.hugePages == .hugetlbfs2M, balloon != nil {
            problem("balloon", "a balloon cannot be used with huge pages", "drop the balloon or huge_pages")
        }

        if let cpuConfig {
            if machine.cpuTemplate != nil {
                problem(
                    "cpu_config", "both a custom CPU template and machine.cpu_template are given",
                    "Firecracker uses one template: keep cpu_config, or drop it for the static machine.cpu_template")
            }
            #if arch(x86_64)
                if cpuConfig.regModifiers != nil || cpuConfig.vcpuFeatures != nil {
                    problem(
                        "cpu_config", "reg_modifiers and vcpu_features are for aarch64 hosts",
                        "on x86_64 use cpuid_modifiers, msr_modifiers and kvm_capabilities")
                }
            #else
                if cpuConfig.cpuidModifiers != nil || cpuConfig.msrModifiers != nil {
                    problem(
                        "cpu_config", "cpuid_modifiers and msr_modifiers are for x86_64 hosts",
                        "on aarch64 use reg_modifiers, vcpu_features and kvm_capabilities")
                }
            #endif
        }

        if Self.checkFile(boot.kernel, field: "boot.kernel", into: &problems), let defect = KernelImage.defect(at: boot.kernel) {
            problem("boot.kernel", "\(boot.kernel) \(defect); Firecracker on x86_64 boots only an uncompressed ELF vmlinux", KernelImage.hint(for: boot.kernel))
        }
        if let initrd = boot.initrd { Self.checkFile(initrd, field: "boot.initrd", into: &problems) }
        for (index, word) in boot.args.enumerated() where word.isEmpty || word.contains(where: { $0.isNewline || $0 == " " || $0 == "\0" }) {
            problem("boot.args[\(index)]", "'\(word)' is empty or contains a space or line break", "give each word of the command line as its own list item")
        }
        let commandLine = boot.args.joined(separator: " ")
        if commandLine.utf8.count > 2048 { problem("boot.args", "the command line is \(commandLine.utf8.count) bytes (at most 2048)") }

        var driveIDs: Set<String> = []
        for (index, drive) in drives.enumerated() {
            let field = "drives[\(index)]"
            if !Self.isPathID(drive.id) {
                problem("\(field).id", "'\(drive.id)' is not a valid drive id", "use letters, digits and '_' only")
            } else if !driveIDs.insert(drive.id).inserted {
                problem("\(field).id", "'\(drive.id)' is used by another drive")
            }
            if Self.checkFile(drive.path, field: "\(field).path", into: &problems), let format = DiskImage.containerFormat(at: drive.path) {
                problem(
                    "\(field).path", "\(drive.path) is a \(format) image; Firecracker's drives are raw images (the guest would find no filesystem)",
                    "convert it: qemu-img convert -O raw \(drive.path) \(drive.path).raw")
            }
        }
        if drives.filter(\.isRoot).count > 1 { problem("drives", "more than one drive has root: true") }

        var interfaceIDs: Set<String> = []
        var taps: Set<String> = []
        for (index, interface) in networkInterfaces.enumerated() {
            let field = "network_interfaces[\(index)]"
            if !Self.isPathID(interface.id) {
                problem("\(field).id", "'\(interface.id)' is not a valid interface id", "use letters, digits and '_' only")
            } else if !interfaceIDs.insert(interface.id).inserted {
                problem("\(field).id", "'\(interface.id)' is used by another interface")
            }
            if interface.tap.isEmpty || interface.tap.utf8.count > 15 || interface.tap.contains(where: { $0 == "/" || $0 == " " }) {
                problem("\(field).tap", "'\(interface.tap)' is not a valid interface name", "1-15 bytes, no '/' or spaces")
            } else if !taps.insert(interface.tap).inserted {
                problem("\(field).tap", "'\(interface.tap)' is used by another interface")
            }
            if let mac = interface.mac, !Self.isMAC(mac) {
                problem("\(field).mac", "'\(mac)' is not a MAC address", "write it as 06:00:ac:10:00:02")
            }
            if let mtu = interface.mtu, !(68...65535).contains(mtu) { problem("\(field).mtu", "\(mtu) is outside 68...65535") }
        }

        if let network {
            problems += network.policy().problems
            if !Self.isPathID(network.interface) {
                problem("network.interface_id", "'\(network.interface)' is not a valid interface id", "use letters, digits and '_' only")
            } else if interfaceIDs.contains(network.interface) {
                problem("network.interface_id", "'\(network.interface)' is also in network_interfaces", "choose another id")
            }
        }
        if let vsock, vsock.guestCid < 3 {
            problem("vsock.guest_cid", "\(vsock.guestCid) is reserved", "use 3 or more")
        }
        if let mmds {
            if mmds.networkInterfaces.isEmpty {
                problem("mmds.network_interfaces", "is empty", "name the interface(s) whose guest traffic MMDS answers")
            }
            if let address = mmds.ipv4Address {
                // Firecracker takes a link-local address only, and says so only once launched.
                var parsed = in_addr()
                if inet_pton(AF_INET, address, &parsed) != 1 {
                    problem("mmds.ipv4_address", "'\(address)' is not an IPv4 address", "give a link-local address such as 169.254.169.254 (the default)")
                } else if !address.hasPrefix("169.254.") {
                    problem("mmds.ipv4_address", "\(address) is not link-local (169.254.0.0/16), which Firecracker requires", "use 169.254.169.254 (the default) or another 169.254.x.y")
                }
            }
            for (index, name) in mmds.networkInterfaces.enumerated() where !interfaceIDs.contains(name) && name != network?.interface {
                problem("mmds.network_interfaces[\(index)]", "'\(name)' is not the id of one of network_interfaces")
            }
        }
        if let balloon {
            if balloon.amountMiB > machine.memoryMiB {
                problem("balloon.amount_mib", "\(balloon.amountMiB) MiB is more than the guest's \(machine.memoryMiB) MiB")
            }
        }
        if let console {
            if let lines = console.ringLines, lines < 1 { problem("console.ring_lines", "must be at least 1") }
            if let bytes = console.ringBytes, bytes < 1024 { problem("console.ring_bytes", "must be at least 1024") }
            if let file = console.file, !file.hasPrefix("/") { problem("console.file", "'\(file)' is not an absolute path") }
        }
        if let jail {
            if let base = jail.chrootBase, !base.hasPrefix("/") { problem("jail.chroot_base", "'\(base)' is not an absolute path") }
            if let netns = jail.netns, !netns.hasPrefix("/") { problem("jail.netns", "'\(netns)' is not an absolute path") }
            if let parent = jail.parentCgroup, let reason = JailerConfiguration.parentCgroupProblem(parent) {
                problem("jail.parent_cgroup", reason)
            }
        }
        if let limits {
            if let cpus = limits.cpus, !(cpus > 0) { problem("limits.cpus", "must be more than 0") }
            if let memory = limits.memoryMiB, memory < machine.memoryMiB + MemoryLimit.minimumHeadroomMiB {
                problem(
                    "limits.memory_mib", "\(memory) MiB leaves less than \(MemoryLimit.minimumHeadroomMiB) MiB above the guest's \(machine.memoryMiB) MiB",
                    "the VMM would be OOM-killed; leave it out for automatic headroom")
            }
            if let pids = limits.pids, pids < machine.vcpus + ResourceLimits.nonVCPUThreads {
                problem("limits.pids", "\(pids) is below vCPUs + \(ResourceLimits.nonVCPUThreads)", "a running VMM has that many tasks")
            }
            if let cpuset = limits.cpuset, cpuset.isEmpty || cpuset.contains(where: { $0 < 0 }) {
                problem("limits.cpuset", "must list CPU numbers")
            }
        }
        return problems
    }

    /// Throws ``MicroVMError/invalidSpec(id:problems:)`` with every problem.
    public func check() throws(MicroVMError) {
        let problems = validate()
        if !problems.isEmpty { throw .invalidSpec(id: id, problems: problems) }
    }

    static func isPathID(_ text: String) -> Bool {
        !text.isEmpty && text.utf8.allSatisfy { $0 == UInt8(ascii: "_") || (0x30...0x39).contains($0) || (0x41...0x5a).contains($0) || (0x61...0x7a).contains($0) }
    }

    static func isMAC(_ text: String) -> Bool {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        return parts.count == 6 && parts.allSatisfy { $0.count == 2 && UInt8($0, radix: 16) != nil }
    }

    /// Whether `path` is an absolute path to a regular file; a problem is added when not.
    @discardableResult
    static func checkFile(_ path: String, field: String, into problems: inout [SpecProblem]) -> Bool {
        guard path.hasPrefix("/") else {
            problems.append(SpecProblem(field: field, message: "'\(path)' is not an absolute path"))
            return false
        }
        var status = stat()
        guard stat(path, &status) == 0 else {
            problems.append(SpecProblem(field: field, message: "\(path): \(String(cString: strerror(errno)))", hint: "check the path"))
            return false
        }
        if status.st_mode & S_IFMT != S_IFREG {
            problems.append(SpecProblem(field: field, message: "\(path) is not a regular file"))
            return false
        }
        return true
    }

}
