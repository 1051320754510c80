import ArgumentParser
import Foundation
import Logging
import MicroVM
import MicroVMHost

/// `microvm rm ID...`: remove a stopped VM's leftovers.
struct RemoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rm",
        abstract: "Remove what an ended VM left (jail or VM directory, cgroups, record, post-mortem); -f stops a running one first.",
        discussion: """
            A VM stopped through microvm is removed as it ends; rm is for VMs that ended while no microvm process was attached, \
            and for the post-mortem a failed VM leaves for `microvm doctor ID` (rm of an id that has only that removes it).
            """
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
        let store = configuration.stateStore
        for id in ids {
            let listing: VMListing
            do {
                listing = try VMs.listing(id, configuration: configuration)
            } catch {
                // A VM already gone whose failure was kept for `doctor`: rm clears that too.
                guard store.postMortem(id: id) != nil else { throw error }
                store.removePostMortem(id: id)
                Output.line(id)
                continue
            }
            if listing.process.isAlive {
                guard force else {
                    throw CLIError(.conflict, "VM \(id) is \(listing.state?.name ?? "running")", hint: "stop it first (`microvm stop \(id)`) or use rm -f", id: id)
                }
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                await machine.stop(grace: .seconds(parsing: timeout))
                store.removePostMortem(id: id)
                Output.line(id)
                continue
            }
            let report = try await MicroVM.remove(id: id, configuration: configuration, logger: logger)
            guard report.isComplete else {
                throw CLIError(.host, "VM \(id): " + report.failures.map(\.summary).joined(separator: "; "), hint: report.failures.first?.hint, id: id)
            }
            store.removePostMortem(id: id)
            Output.line(id)
        }
    }
}
