import ArgumentParser
import FirecrackerAPI
import MicroVM
import SystemPackage

/// `microvm snapshot ID DIR`.
struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Write a snapshot of a running or paused VM into DIR (new or empty): state, memory, drive copies, snapshot.json.",
        discussion: "A running VM is paused for it and resumed after. --diff writes only the pages dirtied since the previous snapshot (Firecracker 1.12: the VM needs machine.track_dirty_pages). On a terminal, a progress line on standard error shows the memory written (of the guest's RAM) and the state; none in scripts."
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
        let configuration = try global.driverConfiguration()
        let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
        let destination = FilePath(Paths.absolute(directory))
        let probe = Self.progressProbe(record: try? configuration.stateStore.read(id: id), destination: destination, diff: diff)
        // Stopped halfway, a snapshot would leave the VM paused and its files half-written: a
        // Ctrl-C lets it finish, then ends the command.
        let interrupts = Interrupts.catching()
        let snapshot = try await interrupts.deferring {
            try await Progress.showing("snapshot \(id)", probe: probe) { () async throws(MicroVMError) -> Snapshot in
                try await machine.snapshot(to: destination, type: diff ? .diff : .full)
            }
        }
        Output.line(snapshot.directory)
        try interrupts.exitIfInterrupted("the snapshot was finished first")
    }

    /// The memory and state files as Firecracker writes them in the VM's directory, or as they
    /// are copied to a destination on another filesystem. A full snapshot's memory ends at the
    /// guest's RAM size; a diff's only holds the dirtied pages, so it has no known total.
    static func progressProbe(record: VMRecord?, destination: FilePath, diff: Bool) -> @Sendable () -> [ProgressItem] {
        let work = record?.snapshotWorkFiles
        let memoryTotal = diff ? nil : record.map { Int64($0.spec.machine.memoryMiB) << 20 }
        let memory = [work?.memory, destination.appending("memory").string].compactMap { $0 }
        let state = [work?.state, destination.appending("state").string].compactMap { $0 }
        return {
            [ProgressItem.file("memory", memory, total: memoryTotal), ProgressItem.file("state", state)].compactMap { $0 }
        }
    }
}
