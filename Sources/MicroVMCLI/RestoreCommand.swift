import ArgumentParser
import MicroVM
import MicroVMHost
import SystemPackage

/// `microvm restore DIR --id NEWID`.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a snapshot into a new VM (new id, new jail); the guest carries on where it was.",
        discussion: "Leaves the VM running (or paused with --paused) and prints its id; `microvm console NEWID` attaches. On a terminal, a progress line on standard error shows the memory and state staged into the new jail (a copy when the snapshot is on another filesystem); none in scripts. With --lazy the memory is not staged at all: the VM's monitor serves each page from the snapshot's memory file when the guest first touches it (userfaultfd), so the restore does not wait for the memory. The monitor holds the memory file open: removing the snapshot is harmless, writing into that file while the VM runs is not."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The snapshot directory.")
    var directory: String

    @Option(help: "The new VM's id.")
    var id: String

    @Option(
        help: ArgumentHelp(
            "For a diff snapshot (`snapshot --diff`): the full snapshot it was taken after. The diff's directory becomes a full snapshot (its memory merged onto the base's), then it is restored.",
            valueName: "dir"))
    var base: String?

    @Option(help: "required, preferred or disabled (default: the snapshotted VM's spec, else $MICROVM_SANDBOX_POLICY, else required). A jailed VM's snapshot restores jailed only.")
    var sandbox: SandboxPolicy?

    @Flag(help: "Leave the guest paused (`microvm resume` starts it).")
    var paused = false

    @Flag(help: "Serve the guest's memory from the snapshot on demand (userfaultfd) instead of staging the memory file; never write into that file while the VM runs.")
    var lazy = false

    @Option(name: .customLong("tap"), help: ArgumentHelp("Point an interface at another TAP device: IFACE=TAP; repeatable.", valueName: "iface=tap"))
    var taps: [String] = []

    @Option(help: ArgumentHelp("The firecracker binary (default: $MICROVM_FIRECRACKER_BIN).", valueName: "path"))
    var firecracker: String?

    @Option(help: ArgumentHelp("The jailer binary (default: $MICROVM_JAILER_BIN).", valueName: "path"))
    var jailer: String?

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.restore")
        var overrides: [String: String] = [:]
        for tap in taps {
            let parts = tap.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw ValidationError("--tap \(tap): expected IFACE=TAP") }
            overrides[parts[0]] = parts[1]
        }
        var snapshot = try Snapshot.load(from: FilePath(Paths.absolute(directory)))
        if let sandbox { snapshot.spec.sandbox = sandbox }
        if let base {
            guard snapshot.type == .diff else { throw ValidationError("--base: \(directory) is a full snapshot already; restore it without --base") }
            snapshot = try await snapshot.applyingDiff(onto: Snapshot.load(from: FilePath(Paths.absolute(base))))
        }
        let configuration = try global.driverConfiguration(firecracker: firecracker, jailer: jailer, launches: true)
        // A Ctrl-C cancels the restore, which removes everything it made.
        let interrupts = Interrupts.catching()
        let (id, paused, memory) = (id, paused, lazy ? RestoreMemory.lazy : .file)
        let machine = try await interrupts.cancelling {
            try await Progress.showing("restore \(id)", probe: Self.progressProbe(snapshot, id: id, configuration: configuration)) {
                () async throws(MicroVMError) -> MicroVM in
                try await MicroVM.restore(
                    snapshot, id: id, resume: !paused, networkOverrides: overrides, memory: memory, configuration: configuration, logger: logger)
            }
        }
        try await interrupts.removeIfInterrupted(machine)
        Output.line(machine.id.rawValue)
    }

    /// The snapshot's memory and state as they are staged into the new VM's directory (a copy
    /// when the snapshot lies on another filesystem, which is what takes time). Without a total:
    /// the copy leaves zero blocks as holes, so neither the length nor the allocated blocks
    /// track how much was read, and a bar would sit near 0% until the end. The record,
    /// which names that directory, is written only after staging: until then, where the jail
    /// will be.
    static func progressProbe(_ snapshot: Snapshot, id: String, configuration: DriverConfiguration) -> @Sendable () -> [ProgressItem] {
        let vmDirectory = Progress.vmDirectory(id: id, configuration: configuration)
        return {
            guard let directory = vmDirectory() else { return [] }
            let work = SnapshotWorkFiles.restore(inVMDirectory: directory)
            return [
                ProgressItem.file("memory", [work.memory], measure: .length),
                ProgressItem.file("state", [work.state], measure: .length),
            ].compactMap { $0 }
        }
    }
}
