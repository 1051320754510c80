import ArgumentParser
import Foundation
import MicroVM

/// `microvm inspect ID`: the VM's record and its state judged now.
struct InspectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show a VM's record and its state judged against /proc now.",
        discussion: "--json prints {\"vm\": <as in ls --json>, \"record\": <state.json>}; reading never attaches."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String


    struct Body: Encodable {
        var vm: VMSummary
        var record: VMRecord?
    }

    func run() async throws {
        let listing = try await VMs.askedListing(id, configuration: try global.driverConfiguration())
        let summary = VMSummary(listing)
        if global.json {
            Output.line(JSON.string(Body(vm: summary, record: listing.record)))
            return
        }
        var rows: [(String, String)] = [("id", summary.id), ("state", summary.detail ?? "unreadable"), ("process", summary.process)]
        if let problem = summary.problem { rows.append(("problem", problem)) }
        if let record = listing.record {
            rows += [
                ("pid", record.pid.map(String.init) ?? "-"),
                ("sandboxed", record.sandboxed ? "yes (jailer)" : "NO"),
                ("attached", summary.attached ? "yes (pid \(record.driverPID))" : "no"),
                ("directory", record.directory),
                ("api socket", record.apiSocket),
                ("cgroups", record.cgroupDirectories.isEmpty ? "-" : record.cgroupDirectories.joined(separator: " ")),
                ("firecracker", record.firecrackerBinary),
                ("kernel", record.spec.boot.kernel),
                ("boot args", record.spec.boot.args.joined(separator: " ")),
                ("machine", "\(record.spec.machine.vcpus) vCPU, \(record.spec.machine.memoryMiB) MiB"),
                ("drives", record.spec.drives.isEmpty ? "-" : record.spec.drives.map { "\($0.id)=\($0.path)\($0.readOnly == true ? " (ro)" : "")" }.joined(separator: ", ")),
                ("created", record.createdAt.formatted(.iso8601)),
            ]
        }
        let width = rows.map(\.0.count).max() ?? 0
        for (key, value) in rows { Output.line(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
    }
}
