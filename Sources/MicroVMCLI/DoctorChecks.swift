import Foundation
import SystemPackage
import Logging
import MicroVM
import MicroVMHost

#if canImport(Glibc)
    import Glibc
#endif

/// One finding of `microvm doctor`.
struct Finding: Encodable, Sendable {
    enum Status: String, Encodable, Sendable {
        case ok, warn, fail
    }

    var check: String
    var status: Status
    /// What was seen.
    var seen: String
    /// Why it matters (empty when ok).
    var why: String?
    /// The command that fixes it on this host.
    var fix: String?
}

/// What the checks need to know, and where they read the host: every `/proc`, `/sys` and
/// `/dev` path is read under `root`, so tests can build fake trees for each failure.
struct DoctorContext {
    var root: String
    var firecracker: String
    var jailer: String
    var chrootBase: String
    var stateRoot: String
    var configuration: DriverConfiguration
    /// Images whose filesystem is compared with the chroot base's.
    var images: [String]

    func host(_ path: String) -> String {
        root == "/" ? path : root + path
    }

    func read(_ path: String) -> String? {
        try? String(contentsOfFile: host(path), encoding: .utf8)
    }
}

/// The troubleshooting guide's items (and Firecracker's production host setup) as checks.
enum DoctorChecks {
    static func all(_ context: DoctorContext) -> [Finding] {
        var findings: [Finding] = []
        findings.append(privileges(context))
        let jailerVersion = binary(context, name: "jailer", path: context.jailer, variable: "MICROVM_JAILER_BIN", into: &findings)
        let firecrackerVersion = binary(context, name: "firecracker", path: context.firecracker, variable: "MICROVM_FIRECRACKER_BIN", into: &findings)
        findings.append(versionsMatch(jailer: jailerVersion, firecracker: firecrackerVersion, context))
        findings.append(execFileName(context, jailerVersion: jailerVersion))
        findings.append(monitor(context))
        findings.append(kvm(context))
        findings.append(tun(context))
        findings.append(userfaultfd(context))
        findings += cgroups(context)
        findings.append(chrootBase(context))
        if let finding = sameFilesystem(context) { findings.append(finding) }
        findings += production(context)
        // The network's checks run `nft` and read sysctls of the real host: not for a fake root.
        if context.root == "/" { findings.append(network(context)) }
        findings.append(leftovers(context))
        findings.append(Limits.all(context))
        return findings
    }

    // MARK: Networking

    /// What VM networks (a spec's `network:`) need from the host: tools, /dev/net/tun, IPv4
    /// forwarding, no foreign forward chain with policy drop, legacy iptables, br_netfilter.
    /// A warning, not a failure: only VMs that ask for a network need it.
    static func network(_ context: DoctorContext) -> Finding {
        let configuration = context.configuration.networkConfiguration
        let why = "VMs whose spec has `network:` get a namespace, a TAP and an nftables firewall; these need it"
        let network: VMNetwork
        do {
            network = try VMNetwork(configuration: configuration, logger: Logger(label: "microvm.doctor"))
        } catch {
            return Finding(check: "network", status: .warn, seen: error.summary, why: why, fix: error.hint)
        }
        let report = network.preflight()
        let issues = report.problems + report.warnings
        if issues.isEmpty {
            return Finding(check: "network", status: .ok, seen: "ready for isolated VM networks (nft, ip, /dev/net/tun, forwarding)")
        }
        return Finding(
            check: "network", status: .warn, seen: issues.map(\.summary).joined(separator: "; "), why: why,
            fix: issues.map(\.hint).joined(separator: "; "))
    }

    // MARK: Privileges

    static func privileges(_ context: DoctorContext) -> Finding {
        let status = context.read("/proc/self/status") ?? ""
        let uidLine = status.split(separator: "\n").first { $0.hasPrefix("Uid:") }
        let fields = uidLine?.split(whereSeparator: { $0 == " " || $0 == "\t" }) ?? []
        guard fields.count >= 3, let effective = UInt32(fields[2]) else {
            return Finding(check: "privileges", status: .warn, seen: "cannot read the effective uid from \(context.host("/proc/self/status"))", why: "the jailer must run as root", fix: nil)
        }
        if effective == 0 { return Finding(check: "privileges", status: .ok, seen: "running as root (euid 0)") }
        return Finding(
            check: "privileges", status: .fail, seen: "effective uid \(effective), not root",
            why: "the jailer needs root: it chroots, makes device nodes, joins cgroups and drops to the VM user",
            fix: "sudo microvm ...   (or run the driver from a root service)")
    }

    // MARK: Binaries

    static func binary(_ context: DoctorContext, name: String, path: String, variable: String, into findings: inout [Finding]) -> String? {
        let check = "\(name)-binary"
        var info = stat()
        guard stat(path, &info) == 0 else {
            let found = searchPath(name)
            findings.append(
                Finding(
                    check: check, status: .fail, seen: "\(path) does not exist\(found.map { "; \(name) found on PATH at \($0)" } ?? "")",
                    why: name == "jailer"
                        ? "without the jailer, VMs cannot be sandboxed (policy required refuses to start them)"
                        : "nothing can run without Firecracker",
                    fix: found.map { "export \(variable)=\($0)" }
                        ?? "curl -LO https://github.com/firecracker-microvm/firecracker/releases/download/v1.12.1/firecracker-v1.12.1-x86_64.tgz && tar xzf firecracker-v1.12.1-x86_64.tgz && install -m 0755 release-v1.12.1-x86_64/\(name)-v1.12.1-x86_64 \(path)"))
            return nil
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            findings.append(Finding(check: check, status: .fail, seen: "\(path) is not a regular file", why: "it cannot be executed", fix: "export \(variable)=/path/to/\(name)"))
            return nil
        }
        guard info.st_mode & 0o111 != 0, access(path, X_OK) == 0 else {
            findings.append(Finding(check: check, status: .fail, seen: "\(path) is not executable (mode \(String(info.st_mode & 0o7777, radix: 8)))", why: "it cannot be executed", fix: "chmod 0755 \(path)"))
            return nil
        }
        guard let version = BinaryVersion.read(path) else {
            findings.append(Finding(check: check, status: .fail, seen: "\(path) does not answer --version", why: "it is not a working \(name) binary (wrong architecture, truncated, or another program)", fix: "reinstall it: install -m 0755 release-v1.12.1-x86_64/\(name)-v1.12.1-x86_64 \(path)"))
            return nil
        }
        findings.append(Finding(check: check, status: .ok, seen: "\(path): \(name) \(version)"))
        return version
    }

    static func searchPath(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let candidate = "\(directory)/\(name)"
            if access(candidate, X_OK) == 0 { return candidate }
        }
        return nil
    }

    static func versionsMatch(jailer: String?, firecracker: String?, _ context: DoctorContext) -> Finding {
        guard let jailer, let firecracker else {
            return Finding(check: "versions-match", status: .warn, seen: "cannot compare: a binary is missing or did not answer", why: "the jailer and Firecracker must come from the same release", fix: nil)
        }
        if jailer == firecracker { return Finding(check: "versions-match", status: .ok, seen: "jailer and firecracker are both \(jailer)") }
        return Finding(
            check: "versions-match", status: .fail, seen: "jailer \(jailer), firecracker \(firecracker)",
            why: "the jailer and Firecracker of different releases disagree on arguments and jail layout",
            fix: "install both from one release: tar xzf firecracker-\(firecracker)-x86_64.tgz && install -m 0755 release-\(firecracker)-x86_64/jailer-\(firecracker)-x86_64 \(context.jailer)")
    }

    static func execFileName(_ context: DoctorContext, jailerVersion: String?) -> Finding {
        let name = URL(fileURLWithPath: context.firecracker).lastPathComponent
        let needsFirecracker = jailerVersion.flatMap { JailerVersion(parsing: "Jailer \($0)") }.map { $0.requiresFirecrackerInExecName } ?? true
        if !needsFirecracker || name.contains("firecracker") {
            return Finding(check: "exec-file-name", status: .ok, seen: "exec file name '\(name)' is accepted by jailer \(jailerVersion ?? "(unknown version)")")
        }
        let directory = URL(fileURLWithPath: context.firecracker).deletingLastPathComponent().path
        return Finding(
            check: "exec-file-name", status: .fail, seen: "exec file name '\(name)' lacks 'firecracker'",
            why: "jailer \(jailerVersion ?? "< 1.13") refuses an exec file whose name does not contain 'firecracker'",
            fix: "cp \(context.firecracker) \(directory)/firecracker && export MICROVM_FIRECRACKER_BIN=\(directory)/firecracker")
    }

    // MARK: Devices

    static func kvm(_ context: DoctorContext) -> Finding {
        let path = context.host("/dev/kvm")
        var info = stat()
        guard stat(path, &info) == 0 else {
            let cpuinfo = context.read("/proc/cpuinfo") ?? ""
            let module = cpuinfo.contains(" svm") ? "kvm_amd" : "kvm_intel"
            return Finding(
                check: "kvm", status: .fail, seen: "\(path) does not exist", why: "Firecracker runs guests on KVM",
                fix: "modprobe \(module)   (and enable virtualization in the firmware, or nested virtualization on a cloud VM)")
        }
        guard info.st_mode & S_IFMT == S_IFCHR else {
            return Finding(check: "kvm", status: .fail, seen: "\(path) is not a character device", why: "Firecracker opens it as the KVM device", fix: "rm \(path) && modprobe kvm && ls -l /dev/kvm")
        }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let error = String(cString: strerror(errno))
            return Finding(
                check: "kvm", status: .fail, seen: "\(path) cannot be opened read-write: \(error)", why: "Firecracker needs read-write access to /dev/kvm",
                fix: "setfacl -m u:$(id -un):rw /dev/kvm   (or: usermod -aG kvm $(id -un))")
        }
        defer { close(fd) }
        let apiVersion = ioctl(fd, UInt(0xAE00))  // KVM_GET_API_VERSION
        guard apiVersion == 12 else {
            return Finding(check: "kvm", status: .fail, seen: "KVM_GET_API_VERSION answered \(apiVersion) (expected 12)", why: "Firecracker needs KVM API 12", fix: "use a kernel with a standard KVM module")
        }
        let vm = ioctl(fd, UInt(0xAE01), CInt(0))  // KVM_CREATE_VM
        guard vm >= 0 else {
            return Finding(
                check: "kvm", status: .fail, seen: "KVM API 12, but KVM_CREATE_VM failed: \(String(cString: strerror(errno)))",
                why: "KVM cannot create a VM (virtualization disabled, or another hypervisor holds it)", fix: "enable VT-x/AMD-V in the firmware; on a cloud VM enable nested virtualization")
        }
        close(vm)
        return Finding(check: "kvm", status: .ok, seen: "\(path) opens read-write; KVM API 12; KVM_CREATE_VM works")
    }

    /// The per-VM monitor every VM `microvm` launches runs under (its parent, the reader of
    /// its console, the keeper of its exit status).
    static func monitor(_ context: DoctorContext) -> Finding {
        let why = "microvm run, create and restore start each VM under it, so the VM outlives the command; without it they refuse"
        guard let settings = context.configuration.monitor else {
            return Finding(
                check: "monitor", status: .fail, seen: "microvm-monitor is not beside microvm, on PATH, or in $\(MonitorSettings.environmentVariable)",
                why: why, fix: "install -m 0755 .build/release/microvm-monitor /usr/local/bin/   (swift build -c release builds it beside microvm)")
        }
        let path = settings.binary.string
        guard access(path, F_OK) == 0 else {
            return Finding(
                check: "monitor", status: .fail, seen: "\(path) (from $\(MonitorSettings.environmentVariable)) does not exist", why: why,
                fix: "unset \(MonitorSettings.environmentVariable), or set it to the microvm-monitor that swift build puts beside microvm")
        }
        guard access(path, X_OK) == 0 else {
            return Finding(check: "monitor", status: .fail, seen: "\(path) is not executable", why: why, fix: "chmod 0755 \(path)")
        }
        return Finding(check: "monitor", status: .ok, seen: "\(path)")
    }

    static func tun(_ context: DoctorContext) -> Finding {
        let path = context.host("/dev/net/tun")
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFCHR else {
            return Finding(
                check: "tun", status: .fail, seen: "\(path) is missing or not a character device", why: "network interfaces need TAP devices (the jailer also makes the jail's /dev/net/tun from it)",
                fix: "modprobe tun || (mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun)")
        }
        let fd = open(path, O_RDWR | O_CLOEXEC)
        if fd < 0 {
            return Finding(check: "tun", status: .fail, seen: "\(path) cannot be opened: \(String(cString: strerror(errno)))", why: "TAP devices cannot be created", fix: "chmod 0666 /dev/net/tun")
        }
        close(fd)
        return Finding(check: "tun", status: .ok, seen: "\(path) opens read-write")
    }

    static func userfaultfd(_ context: DoctorContext) -> Finding {
        let path = context.host("/dev/userfaultfd")
        if access(path, F_OK) == 0 { return Finding(check: "userfaultfd", status: .ok, seen: "\(path) exists") }
        let minor = (context.read("/proc/misc") ?? "").split(separator: "\n").first { $0.hasSuffix(" userfaultfd") }?.split(separator: " ").first
        return Finding(
            check: "userfaultfd", status: .warn, seen: "\(path) does not exist",
            why: "restoring snapshots with a userfaultfd (UFFD) memory backend needs it; file-backed restores (what microvm uses) do not",
            fix: minor.map { "mknod /dev/userfaultfd c 10 \($0) && chmod 0600 /dev/userfaultfd" } ?? "use a kernel >= 6.1 with CONFIG_USERFAULTFD, then mknod /dev/userfaultfd c 10 <minor from /proc/misc>")
    }

    // MARK: Cgroups

    static let controllers = ["cpu", "memory", "pids", "cpuset"]

    static func cgroups(_ context: DoctorContext) -> [Finding] {
        guard let mounts = context.read("/proc/mounts") else {
            return [Finding(check: "cgroups", status: .fail, seen: "cannot read \(context.host("/proc/mounts"))", why: "the jailer finds cgroups there", fix: nil)]
        }
        let host = CgroupHost.parse(procMounts: mounts) { directory in
            guard let text = context.read(directory + "/cgroup.controllers") else { return [] }
            return Set(text.split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
        }
        guard let version = host.defaultVersion else {
            return [
                Finding(
                    check: "cgroups", status: .fail, seen: "no cgroup filesystem is mounted", why: "the jailer puts every VM in cgroups (its limits need them)",
                    fix: "mount -t cgroup2 none /sys/fs/cgroup")
            ]
        }
        var findings: [Finding] = []
        switch version {
        case .v2:
            let directory = host.v2Mount?.directory ?? "/sys/fs/cgroup"
            findings.append(Finding(check: "cgroup-version", status: .ok, seen: "cgroup v2 at \(directory) (the jailer is given --cgroup-version 2)"))
            let available = host.v2Mount?.controllers ?? []
            let missing = controllers.filter { !available.contains($0) }
            if missing.isEmpty {
                findings.append(Finding(check: "cgroup-controllers", status: .ok, seen: "\(directory)/cgroup.controllers has \(controllers.joined(separator: ", "))"))
            } else {
                findings.append(
                    Finding(
                        check: "cgroup-controllers", status: missing == ["cpuset"] ? .warn : .fail,
                        seen: "\(directory)/cgroup.controllers lacks \(missing.joined(separator: ", "))",
                        why: "limits on CPU (cpu.max), memory (memory.max), tasks (pids.max) and CPU sets (cpuset.cpus) need these controllers",
                        fix: "enable them in the kernel (CONFIG_CGROUP_PIDS, CONFIG_MEMCG, CONFIG_CPUSETS) and boot with systemd.unified_cgroup_hierarchy=1"))
            }
            let enabled = Set((context.read(directory + "/cgroup.subtree_control") ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
            let notEnabled = controllers.filter { available.contains($0) && !enabled.contains($0) }
            if notEnabled.isEmpty {
                findings.append(Finding(check: "cgroup-subtree-control", status: .ok, seen: "\(directory)/cgroup.subtree_control enables \(enabled.sorted().joined(separator: " "))"))
            } else {
                findings.append(
                    Finding(
                        check: "cgroup-subtree-control", status: .warn,
                        seen: "\(directory)/cgroup.subtree_control does not enable \(notEnabled.joined(separator: ", "))",
                        why: "on v2 a child cgroup gets a controller only when every ancestor enables it (the jailer tries to; it fails when the root has processes of its own or is delegated elsewhere)",
                        fix: "echo '\(notEnabled.map { "+" + $0 }.joined(separator: " "))' > \(directory)/cgroup.subtree_control"))
            }
        case .v1:
            findings.append(Finding(check: "cgroup-version", status: .ok, seen: "cgroup v1 hierarchies\(host.v2Mount.map { " (and a v2 mount at \($0.directory))" } ?? "") (the jailer is given --cgroup-version 1)"))
            let missing = controllers.filter { host.v1Mount(for: $0) == nil }
            if missing.isEmpty {
                findings.append(
                    Finding(
                        check: "cgroup-controllers", status: .ok,
                        seen: controllers.map { "\($0) at \(host.v1Mount(for: $0)!.directory)" }.joined(separator: ", ")))
            } else {
                findings.append(
                    Finding(
                        check: "cgroup-controllers", status: missing == ["cpuset"] ? .warn : .fail,
                        seen: "no v1 hierarchy for \(missing.joined(separator: ", "))",
                        why: "limits on CPU (cpu.cfs_quota_us), memory (memory.limit_in_bytes), tasks (pids.max) and CPU sets need these controllers mounted",
                        fix: missing.map { "mkdir -p /sys/fs/cgroup/\($0) && mount -t cgroup -o \($0) cgroup /sys/fs/cgroup/\($0)" }.joined(separator: " && ")))
            }
        }
        return findings
    }

    // MARK: Chroot base

    static func chrootBase(_ context: DoctorContext) -> Finding {
        let path = context.chrootBase
        var info = stat()
        guard stat(path, &info) == 0 else {
            return Finding(
                check: "chroot-base", status: .warn, seen: "\(path) does not exist (microvm creates it on the first jailed launch)",
                why: "the jailer needs the chroot base to exist, owned by root and not writable by others",
                fix: "mkdir -p \(path) && chown root:root \(path) && chmod 0755 \(path)")
        }
        guard info.st_mode & S_IFMT == S_IFDIR else {
            return Finding(check: "chroot-base", status: .fail, seen: "\(path) is not a directory", why: "jails are made under it", fix: "rm \(path) && mkdir -p \(path) && chmod 0755 \(path)")
        }
        if info.st_uid != 0 {
            return Finding(
                check: "chroot-base", status: .fail, seen: "\(path) is owned by uid \(info.st_uid), not root",
                why: "whoever owns the chroot base can swap a jail's files (a jailed VMM's device nodes, its binary) under it", fix: "chown root:root \(path)")
        }
        if info.st_mode & 0o022 != 0 {
            return Finding(
                check: "chroot-base", status: .fail, seen: "\(path) is writable by group or others (mode \(String(info.st_mode & 0o7777, radix: 8)))",
                why: "another user could plant or replace jail directories", fix: "chmod go-w \(path)")
        }
        var fs = statvfs()
        if statvfs(path, &fs) == 0 {
            if fs.f_flag & 8 != 0 {  // ST_NOEXEC
                return Finding(check: "chroot-base", status: .fail, seen: "\(path) is on a noexec mount", why: "the jailer execs its copy of Firecracker from the jail", fix: "mount -o remount,exec $(df --output=target \(path) | tail -1)")
            }
            if fs.f_flag & 4 != 0 {  // ST_NODEV
                return Finding(check: "chroot-base", status: .fail, seen: "\(path) is on a nodev mount", why: "the jail's /dev/kvm would not open", fix: "mount -o remount,dev $(df --output=target \(path) | tail -1)")
            }
        }
        return Finding(check: "chroot-base", status: .ok, seen: "\(path): directory owned by root, mode \(String(info.st_mode & 0o7777, radix: 8)), exec and dev allowed")
    }

    static func sameFilesystem(_ context: DoctorContext) -> Finding? {
        guard !context.images.isEmpty else { return nil }
        var base = stat()
        var probe = context.chrootBase
        while stat(probe, &base) != 0 {
            probe = URL(fileURLWithPath: probe).deletingLastPathComponent().path
            if probe == "/" {
                _ = stat("/", &base)
                break
            }
        }
        let elsewhere = context.images.filter { image in
            var info = stat()
            return stat(image, &info) == 0 && info.st_dev != base.st_dev
        }
        if elsewhere.isEmpty {
            return Finding(check: "images-filesystem", status: .ok, seen: "the images are on the chroot base's filesystem (read-only images are hard-linked)")
        }
        return Finding(
            check: "images-filesystem", status: .warn, seen: "\(elsewhere.joined(separator: ", ")) on another filesystem than \(context.chrootBase)",
            why: "read-only images are copied into each jail instead of hard-linked: slower launches and more disk",
            fix: "keep images on the chroot base's filesystem: mkdir -p \(context.chrootBase)/../images && cp --sparse=always \(elsewhere.joined(separator: " ")) \(context.chrootBase)/../images/")
    }

    // MARK: Production host (Firecracker's docs/prod-host-setup.md)

    /// The kernel's words in `smt/control`, as a sentence says them.
    static let smtStates = ["notsupported": "not supported", "notimplemented": "not implemented", "forceoff": "off (forced)"]

    static func production(_ context: DoctorContext) -> [Finding] {
        var findings: [Finding] = []
        if let smt = context.read("/sys/devices/system/cpu/smt/control")?.trimmingCharacters(in: .whitespacesAndNewlines) {
            findings.append(
                smt == "on"
                    ? Finding(check: "smt", status: .warn, seen: "SMT is on", why: "sibling hyperthreads leak data between guests (MDS, L1TF)", fix: "echo off > /sys/devices/system/cpu/smt/control")
                    : Finding(check: "smt", status: .ok, seen: "SMT is \(Self.smtStates[smt] ?? smt)"))
        }
        if let ksm = context.read("/sys/kernel/mm/ksm/run")?.trimmingCharacters(in: .whitespacesAndNewlines) {
            findings.append(
                ksm == "1"
                    ? Finding(check: "ksm", status: .warn, seen: "KSM merges pages", why: "page deduplication across guests is a side channel", fix: "echo 0 > /sys/kernel/mm/ksm/run")
                    : Finding(check: "ksm", status: .ok, seen: "KSM is off"))
        }
        if let swaps = context.read("/proc/swaps") {
            let devices = swaps.split(separator: "\n").dropFirst().compactMap { $0.split(separator: " ").first.map(String.init) }
            findings.append(
                devices.isEmpty
                    ? Finding(check: "swap", status: .ok, seen: "no swap")
                    : Finding(check: "swap", status: .warn, seen: "swap on \(devices.joined(separator: ", "))", why: "guest memory written to swap outlives the guest and can be read back", fix: "swapoff -a"))
        }
        // Every vulnerability the kernel reports on, not a fixed list: new ones keep appearing
        // (spec_rstack_overflow, gather_data_sampling, ...).
        var vulnerable: [String] = []
        let directory = "/sys/devices/system/cpu/vulnerabilities"
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: context.host(directory))) ?? []).sorted()
        for name in names {
            if let text = context.read("\(directory)/\(name)"), text.hasPrefix("Vulnerable") {
                vulnerable.append("\(name): \(text.trimmingCharacters(in: .whitespacesAndNewlines))")
            }
        }
        let cmdline = (context.read("/proc/cmdline") ?? "").split(whereSeparator: \.isWhitespace)
        let switchedOff = cmdline.filter { $0 == "mitigations=off" || $0 == "nospectre_v2" || $0 == "nopti" || $0.hasSuffix("=off") && $0.hasPrefix("spec") }
        if !switchedOff.isEmpty { vulnerable.append("\(switchedOff.joined(separator: " ")) on the kernel command line") }
        let fix =
            switchedOff.isEmpty
            ? "update the kernel and the CPU microcode (the host's, or ask the cloud provider for the VM's); the kernel reports each one in \(directory)"
            : "remove \(switchedOff.joined(separator: " ")) from the kernel command line (with GRUB: GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot), and keep the kernel and CPU microcode updated"
        findings.append(
            vulnerable.isEmpty
                ? Finding(check: "mitigations", status: .ok, seen: "no side-channel vulnerability reported unmitigated")
                : Finding(
                    check: "mitigations", status: .warn, seen: vulnerable.joined(separator: "; "),
                    why: "an unmitigated side channel lets a guest read host or other guests' memory", fix: fix))
        return findings
    }

    // MARK: Leftovers

    static func leftovers(_ context: DoctorContext) -> Finding {
        let listings = MicroVM.list(configuration: context.configuration)
        let dead = listings.filter { ($0.record != nil && !$0.process.isAlive && !$0.supervised) || $0.creation == .interrupted }.map(\.id)
        let unreadable = listings.filter { $0.record == nil && $0.creation == nil }.map(\.id)
        if dead.isEmpty, unreadable.isEmpty {
            return Finding(check: "leftovers", status: .ok, seen: "\(listings.count) VM(s) under \(context.stateRoot), none dead")
        }
        var seen: [String] = []
        if !dead.isEmpty { seen.append("dead VMs still holding jails, cgroups and records: \(dead.joined(separator: ", "))") }
        if !unreadable.isEmpty { seen.append("unreadable records: \(unreadable.joined(separator: ", "))") }
        return Finding(
            check: "leftovers", status: .warn, seen: seen.joined(separator: "; "),
            why: "a dead VM's jail directory, cgroups and record stay until removed; its id cannot be reused",
            fix: "microvm gc --state-dir \(context.stateRoot)")
    }
}
