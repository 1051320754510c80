import ArgumentParser
import Foundation
import MicroVM

/// `microvm stats ID`: the VM's cgroup counters.
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a jailed VM's CPU, memory and pids figures from its cgroups (read-only; never attaches).",
        discussion: "Reads the cgroup directories recorded for the VM (v1 or v2). An unjailed VM has no cgroups of its own."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String


    struct Figures: Encodable {
        var id: String
        var cpuUsageNanoseconds: UInt64?
        var memoryBytes: UInt64?
        var memoryLimitBytes: UInt64?
        var pids: UInt64?
        var pidsLimit: UInt64?
        var cgroups: [String]

        enum CodingKeys: String, CodingKey {
            case id
            case cpuUsageNanoseconds = "cpu_usage_ns"
            case memoryBytes = "memory_bytes"
            case memoryLimitBytes = "memory_limit_bytes"
            case pids
            case pidsLimit = "pids_limit"
            case cgroups
        }
    }

    func run() async throws {
        let listing = try VMs.listing(id, configuration: try global.driverConfiguration())
        guard let record = listing.record, listing.process.isAlive else {
            throw CLIError(.conflict, "VM \(id) is not running", id: id)
        }
        guard !record.cgroupDirectories.isEmpty else {
            throw CLIError(.conflict, "VM \(id) has no cgroups (it runs unjailed)", id: id)
        }
        var figures = Figures(id: id, cgroups: record.cgroupDirectories)
        for directory in record.cgroupDirectories {
            func number(_ file: String) -> UInt64? {
                guard let text = try? String(contentsOfFile: directory + "/" + file, encoding: .utf8) else { return nil }
                return UInt64(text.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            if let usage = number("cpuacct.usage") { figures.cpuUsageNanoseconds = usage }
            if let stat = try? String(contentsOfFile: directory + "/cpu.stat", encoding: .utf8),
                let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("usage_usec ") }),
                let micro = UInt64(line.split(separator: " ")[1])
            {
                figures.cpuUsageNanoseconds = micro * 1000
            }
            figures.memoryBytes = number("memory.usage_in_bytes") ?? number("memory.current") ?? figures.memoryBytes
            figures.memoryLimitBytes = number("memory.limit_in_bytes") ?? number("memory.max") ?? figures.memoryLimitBytes
            figures.pids = number("pids.current") ?? figures.pids
            figures.pidsLimit = number("pids.max") ?? figures.pidsLimit
        }
        if global.json {
            Output.line(JSON.string(figures))
            return
        }
        func mib(_ bytes: UInt64?) -> String { bytes.map { String(format: "%.1f MiB", Double($0) / 1_048_576) } ?? "-" }
        Table.print([
            ["ID", "CPU TIME", "MEMORY", "MEMORY LIMIT", "PIDS"],
            [
                id, figures.cpuUsageNanoseconds.map { String(format: "%.3f s", Double($0) / 1e9) } ?? "-", mib(figures.memoryBytes),
                mib(figures.memoryLimitBytes), "\(figures.pids.map(String.init) ?? "-")/\(figures.pidsLimit.map(String.init) ?? "max")",
            ],
        ])
    }
}
