import ArgumentParser
import MicroVM
import SystemPackage

/// `microvm restore DIR --id NEWID`.
struct RestoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a snapshot into a new VM (new id, new jail); the guest carries on where it was.",
        discussion: "Leaves the VM running (or paused with --paused) and prints its id; `microvm console NEWID` attaches."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The snapshot directory.")
    var directory: String

    @Option(help: "The new VM's id.")
    var id: String

    @Flag(help: "Leave the guest paused (`microvm resume` starts it).")
    var paused = false

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
        let snapshot = try Snapshot.load(from: FilePath(Paths.absolute(directory)))
        let machine = try await MicroVM.restore(
            snapshot, id: id, resume: !paused, networkOverrides: overrides,
            configuration: try global.driverConfiguration(firecracker: firecracker, jailer: jailer, launches: true), logger: logger)
        Output.line(machine.id.rawValue)
    }
}
