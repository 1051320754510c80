import ArgumentParser
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage

/// A VM from flags, from a spec file (`-f vm.json|vm.yaml`), or both: flags override the file.
struct VMOptions: ParsableArguments {
    @Option(name: [.customShort("f"), .customLong("file"), .customLong("config-file")], help: ArgumentHelp("A VM spec (JSON or YAML; see README), or Firecracker's own config file (vm_config.json).", valueName: "spec"))
    var specFile: String?

    @Option(help: "The VM's id (1-64 letters, digits, '-'; default: the spec's, else a generated one).")
    var id: String?

    @Option(help: ArgumentHelp("The guest kernel (default: $MICROVM_GUEST_KERNEL when no spec file).", valueName: "path"))
    var kernel: String?

    @Option(help: ArgumentHelp("An initrd.", valueName: "path"))
    var initrd: String?

    @Option(
        name: .customLong("boot-arg"),
        help: ArgumentHelp("A kernel command-line word, repeatable, in order (replaces the spec's args).", valueName: "word"))
    var bootArgs: [String] = []

    @Option(help: ArgumentHelp("The root filesystem image (drive 'rootfs', writable: a per-VM copy).", valueName: "path"))
    var rootfs: String?

    @Option(
        name: .customLong("drive"),
        help: ArgumentHelp("A drive: id=NAME,path=PATH[,ro][,root]; repeatable; replaces the spec's drive of that id.", valueName: "spec"))
    var drives: [String] = []

    @Option(help: "vCPUs.")
    var vcpus: Int?

    @Option(help: ArgumentHelp("Guest memory in MiB.", valueName: "MiB"))
    var memory: Int?

    @Option(
        name: .customLong("tap"),
        help: ArgumentHelp("A network interface on a host TAP device: [IFACE=]TAP (IFACE defaults to eth0, eth1...); repeatable.", valueName: "tap"))
    var taps: [String] = []

    @Option(name: .customLong("vsock-cid"), help: "A vsock device with this guest CID (>= 3).")
    var vsockCID: UInt32?

    @Flag(help: "Have Firecracker write its metrics (for `microvm stats`).")
    var metrics = false

    @Option(help: "required (default: refuse without a working jailer), preferred (fall back, loudly) or disabled.")
    var sandbox: SandboxPolicy?

    @Option(help: "The jailed VMM's uid (default: $MICROVM_JAILER_UID, else 123).")
    var uid: UInt32?

    @Option(help: "The jailed VMM's gid (default: $MICROVM_JAILER_GID, else 100).")
    var gid: UInt32?

    @Option(name: .customLong("chroot-base"), help: ArgumentHelp("The jailer's chroot base (default: $MICROVM_JAILER_CHROOT_BASE, else /srv/jailer).", valueName: "dir"))
    var chrootBase: String?

    @Option(name: .customLong("parent-cgroup"), help: ArgumentHelp("The cgroup the VM's cgroups go under (default: the exec file's name).", valueName: "name"))
    var parentCgroup: String?

    @Option(help: ArgumentHelp("CPU limit in CPUs (cgroup quota), e.g. 0.5.", valueName: "n"))
    var cpus: Double?

    @Option(name: .customLong("memory-limit"), help: ArgumentHelp("cgroup memory limit in MiB (guest RAM + 16 at least).", valueName: "MiB"))
    var memoryLimit: Int?

    @Option(help: ArgumentHelp("cgroup limit on the VMM's tasks.", valueName: "n"))
    var pids: Int?

    @Option(help: ArgumentHelp("The firecracker binary (default: $MICROVM_FIRECRACKER_BIN, else /usr/bin/firecracker).", valueName: "path"))
    var firecracker: String?

    @Option(help: ArgumentHelp("The jailer binary (default: $MICROVM_JAILER_BIN, else /usr/bin/jailer).", valueName: "path"))
    var jailer: String?

    /// The spec: the file's (if any), then each flag given.
    func spec(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> VMSpec {
        var spec: VMSpec
        if let specFile {
            spec = try VMSpec.load(from: FilePath(Paths.absolute(specFile)))
            // Relative paths mean what they mean to Firecracker started here (its config file's
            // convention): from this directory. Recorded absolute, they still name the same
            // files for a later command run elsewhere (doctor, restore).
            if !spec.boot.kernel.isEmpty { spec.boot.kernel = Paths.absolute(spec.boot.kernel) }
            spec.boot.initrd = spec.boot.initrd.map(Paths.absolute)
            for index in spec.drives.indices { spec.drives[index].path = Paths.absolute(spec.drives[index].path) }
            if let file = spec.console?.file { spec.console?.file = Paths.absolute(file) }
        } else {
            guard let kernel = kernel ?? environment["MICROVM_GUEST_KERNEL"], !kernel.isEmpty else {
                throw ValidationError("no guest kernel: pass --kernel PATH or -f SPEC (or set MICROVM_GUEST_KERNEL)")
            }
            spec = VMSpec(id: "", machine: .init(vcpus: 1, memoryMiB: 128), boot: .init(kernel: Paths.absolute(kernel)))
        }
        if let id {
            guard !id.isEmpty else { throw ValidationError("--id is empty: give 1-64 letters, digits and '-', or leave --id out for a generated id") }
            spec.id = id
        }
        if spec.id.isEmpty { spec.id = VMSpec.generatedID() }
        if let kernel { spec.boot.kernel = Paths.absolute(kernel) }
        if let initrd { spec.boot.initrd = Paths.absolute(initrd) }
        if !bootArgs.isEmpty { spec.boot.args = bootArgs }
        if let vcpus { spec.machine.vcpus = vcpus }
        if let memory { spec.machine.memoryMiB = memory }
        if let rootfs {
            spec.drives.removeAll { $0.id == "rootfs" || $0.root == true }
            spec.drives.insert(DriveSpec(id: "rootfs", path: Paths.absolute(rootfs), root: true), at: 0)
        }
        var flaggedDrives: Set<String> = []
        for text in drives {
            let drive = try Self.parseDrive(text)
            // A flag replaces the spec's drive of its id; two flags of one id is a mistake.
            guard flaggedDrives.insert(drive.id).inserted else { throw ValidationError("--drive \(text): a second --drive with id=\(drive.id)") }
            if let index = spec.drives.firstIndex(where: { $0.id == drive.id }) {
                spec.drives[index] = drive
            } else {
                spec.drives.append(drive)
            }
        }
        for (index, text) in taps.enumerated() {
            let parts = text.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let interface = parts.count == 2 ? parts[0] : "eth\(index)"
            let tap = parts.count == 2 ? parts[1] : parts[0]
            guard !interface.isEmpty, !tap.isEmpty else {
                throw ValidationError("--tap \(text): expected [IFACE=]TAP with a non-empty interface id and TAP name")
            }
            spec.networkInterfaces.removeAll { $0.id == interface }
            spec.networkInterfaces.append(NetworkInterfaceSpec(id: interface, tap: tap))
        }
        if let vsockCID { spec.vsock = VsockSpec(guestCid: vsockCID) }
        if metrics {
            var logging = spec.logging ?? VMSpec.LoggingSpec()
            logging.metrics = true
            spec.logging = logging
        }
        if let sandbox { spec.sandbox = sandbox }
        if uid != nil || gid != nil || chrootBase != nil || parentCgroup != nil {
            var jail = spec.jail ?? VMSpec.JailSpec()
            if let uid { jail.uid = uid }
            if let gid { jail.gid = gid }
            if let chrootBase { jail.chrootBase = Paths.absolute(chrootBase) }
            if let parentCgroup { jail.parentCgroup = parentCgroup }
            spec.jail = jail
        }
        if cpus != nil || memoryLimit != nil || pids != nil {
            var limits = spec.limits ?? VMSpec.LimitsSpec()
            if let cpus { limits.cpus = cpus }
            if let memoryLimit { limits.memoryMiB = memoryLimit }
            if let pids { limits.pids = pids }
            spec.limits = limits
        }
        PostMortems.creating(spec)
        return spec
    }

    /// `id=NAME,path=PATH[,ro][,root]`.
    static func parseDrive(_ text: String) throws -> DriveSpec {
        var id: String?
        var path: String?
        var readOnly: Bool?
        var root: Bool?
        for item in text.split(separator: ",").map(String.init) {
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            switch (pair[0], pair.count == 2 ? pair[1] : nil) {
            case ("id", let value?): id = value
            case ("path", let value?): path = Paths.absolute(value)
            case ("ro", nil), ("read_only", nil), ("readonly", nil): readOnly = true
            case ("ro", let value?), ("read_only", let value?), ("readonly", let value?):
                readOnly = try Self.flag(value, item: item, in: text)
            case ("root", nil): root = true
            case ("root", let value?): root = try Self.flag(value, item: item, in: text)
            default:
                throw ValidationError("--drive \(text): unknown item '\(item)' (expected id=NAME,path=PATH[,ro][,root])")
            }
        }
        guard let id, let path else { throw ValidationError("--drive \(text): needs id=NAME and path=PATH") }
        return DriveSpec(id: id, path: path, readOnly: readOnly, root: root)
    }

    private static func flag(_ value: String, item: String, in text: String) throws -> Bool {
        switch value.lowercased() {
        case "true", "1", "yes", "on": return true
        case "false", "0", "no", "off": return false
        default: throw ValidationError("--drive \(text): '\(item)' is not true or false")
        }
    }
}

extension VMSpec {
    /// `vm-` and 8 hex digits.
    static func generatedID() -> String {
        "vm-" + String(UInt32.random(in: 0...UInt32.max), radix: 16).leftPadded(to: 8)
    }
}

extension String {
    func leftPadded(to width: Int, with pad: Character = "0") -> String {
        count >= width ? self : String(repeating: pad, count: width - count) + self
    }
}
