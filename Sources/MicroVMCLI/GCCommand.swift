import ArgumentParser
import MicroVM
import MicroVMHost

/// `microvm gc`: remove what dead VMs left.
struct GCCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove what dead VMs left: jail or VM directory, cgroups, record and state directory.",
        discussion: "Live VMs, VMs another process is attached to, and unreadable records are left alone (and listed)."
    )

    @OptionGroup var global: GlobalOptions


    struct Entry: Encodable {
        var id: String
        var removed: Bool
        var complete: Bool
        var failures: [String]
        var skipped: String?
    }

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.gc")
        let collected = await MicroVM.garbageCollect(configuration: try global.driverConfiguration(), logger: logger)
        let entries = collected.map { item in
            Entry(
                id: item.id, removed: item.teardown?.isComplete ?? false, complete: item.teardown?.isComplete ?? (item.skipped != nil),
                failures: item.teardown?.failures.map(\.summary) ?? [], skipped: item.skipped)
        }
        if global.json {
            Output.line(JSON.string(entries))
        } else {
            for entry in entries {
                if let skipped = entry.skipped {
                    Output.line("\(entry.id): left alone: \(skipped)")
                } else if entry.complete {
                    Output.line("\(entry.id): removed")
                } else {
                    Output.line("\(entry.id): incomplete: \(entry.failures.joined(separator: "; "))")
                }
            }
        }
        if entries.contains(where: { $0.skipped == nil && !$0.complete }) {
            throw CLIError(.host, "some leftovers could not be removed", hint: "see the failures above; run gc again once they are fixed")
        }
    }
}
