import ArgumentParser
import Foundation
import Logging
import MicroVM
import MicroVMHost

/// `microvm rm ID...`: remove a stopped VM's leftovers.
struct RemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove what an ended VM left (jail or VM directory, cgroups, record); -f stops a running one first.",
        discussion: "A VM stopped through microvm is removed as it ends; rm is for VMs that ended while no microvm process was attached."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VMs' ids.")
    var ids: [String]

    @Flag(name: [.short, .long], help: "Stop a running VM first (gracefully, --timeout seconds, then kill).")
    var force = false

    @Option(name: [.short, .long], help: ArgumentHelp("With -f: seconds the guest has to shut down.", valueName: "seconds"))
    var timeout: Double = 5

    func validate() throws {
        if ids.isEmpty { throw ValidationError("give at least one VM id") }
    }

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.rm")
        let configuration = try global.driverConfiguration()
        for id in ids {
            let listing = try VMs.listing(id, configuration: configuration)
            if listing.process.isAlive {
                guard force else {
                    throw CLIError(.conflict, "VM \(id) is \(listing.state?.name ?? "running")", hint: "stop it first (`microvm stop \(id)`) or use rm -f", id: id)
                }
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                await machine.stop(grace: .seconds(parsing: timeout))
                Output.line(id)
                continue
            }
            try await Self.removeLeftovers(of: listing, configuration: configuration, logger: logger)
            Output.line(id)
        }
    }

    /// What `MicroVM.garbageCollect` does, for one VM (the library collects all dead VMs at once).
    static func removeLeftovers(of listing: VMListing, configuration: DriverConfiguration, logger: Logger) async throws {
        let id = listing.id
        guard let record = listing.record else {
            throw CLIError(.host, "VM \(id)'s record cannot be read: \(listing.problem.map { "\($0)" } ?? "")", hint: "inspect it and remove \(configuration.stateStore.directory(for: id)) by hand", id: id)
        }
        if listing.supervised {
            throw CLIError(.conflict, "VM \(id) is attached to another process (pid \(record.driverPID))", hint: "that process removes it as it ends", id: id)
        }
        let layout = JailLayout(chrootBase: .init(record.chrootBase), execFileName: record.execFileName, id: try VMIdentifier(id))
        let report = await JailTeardown.run(layout: layout, parentCgroup: record.parentCgroup, cgroupHost: try CgroupHost.detect(), logger: logger)
        guard report.isComplete else {
            throw CLIError(.host, "VM \(id): " + report.failures.map(\.summary).joined(separator: "; "), hint: report.failures.first?.hint, id: id)
        }
        try FileManager.default.removeItem(atPath: configuration.stateStore.directory(for: id).string)
    }
}
