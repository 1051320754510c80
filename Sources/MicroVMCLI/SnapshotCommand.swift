import ArgumentParser
import FirecrackerAPI
import MicroVM
import SystemPackage

/// `microvm snapshot ID DIR`.
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Write a snapshot of a running or paused VM into DIR (new or empty): state, memory, drive copies, snapshot.json.",
        discussion: "A running VM is paused for it and resumed after. --diff writes only the pages dirtied since the previous snapshot (Firecracker 1.12: the VM needs machine.track_dirty_pages)."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Argument(help: "The snapshot directory.")
    var directory: String

    @Flag(help: "A diff snapshot.")
    var diff = false

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.snapshot")
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        let snapshot = try await machine.snapshot(to: FilePath(Paths.absolute(directory)), type: diff ? .diff : .full)
        Output.line(snapshot.directory)
    }
}
