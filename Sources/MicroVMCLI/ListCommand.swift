import ArgumentParser
import Foundation
import MicroVM

/// `microvm ls` (alias `ps`): every VM recorded under the state root.
struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ls",
        abstract: "List the VMs under the state root, each judged against /proc now.",
        discussion: "A VM whose Firecracker is gone shows as failed (or its recorded exit); `microvm gc` removes what it left.",
        aliases: ["ps"]
    )

    @OptionGroup var global: GlobalOptions


    @Flag(name: [.short, .long], help: "Only the ids.")
    var quiet = false

    @Flag(
        help: """
            Ask each live VM that no microvm process is attached to for its state (GET /, 250 ms at most; \
            about 1 ms per VM here), instead of reading it from its record: a pause or resume sent to its \
            API socket by hand, or by a command killed before it recorded it, then shows.
            """)
    var live = false

    func run() async throws {
        let configuration = try global.driverConfiguration()
        let listings = live ? await MicroVM.list(configuration: configuration, asking: VMs.askTimeout) : MicroVM.list(configuration: configuration)
        let summaries = listings.map(VMSummary.init)
        if global.json {
            Output.line(JSON.string(summaries))
            return
        }
        if quiet {
            for summary in summaries { Output.line(summary.id) }
            return
        }
        var rows = [["ID", "STATE", "PID", "SANDBOX", "ATTACHED", "CREATED"]]
        for summary in summaries {
            rows.append([
                summary.id, summary.state ?? "unreadable", summary.pid.map(String.init) ?? "-",
                summary.sandboxed.map { $0 ? "jailed" : "unjailed" } ?? "-", summary.attached ? "yes" : "no",
                summary.createdAt.map { $0.formatted(.iso8601) } ?? "-",
            ])
        }
        Table.print(rows)
    }
}

enum Table {
    static func print(_ rows: [[String]]) {
        guard let first = rows.first else { return }
        let widths = first.indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let cells = row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }
            Output.line(cells.joined(separator: "   "))
        }
    }
}
