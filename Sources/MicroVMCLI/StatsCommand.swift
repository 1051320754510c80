import ArgumentParser
import Foundation
import MicroVM
import MicroVMHost

/// `microvm stats ID`: the VM's cgroup counters.
struct StatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats",
        abstract: "Show a VM's CPU, memory and pids figures (from its cgroups when jailed), and Firecracker's own metrics (read-only; never attaches).",
        discussion: """
            Reads the cgroup directories recorded for the VM (v1 or v2). An unjailed VM has no \
            cgroups of its own: its figures are its Firecracker process's, from /proc (CPU time, \
            resident memory, threads), with no limits.

            Firecracker's metrics come from the VM's metrics file (a VM created with --metrics or \
            logging.metrics: true). Firecracker writes a line at start, every 60 s and on every \
            FlushMetrics, each holding the counts since the previous line: stats adds them up, so \
            the figures are totals since the VM started, as of the newest line (last_written). \
            A VM without metrics says so (firecracker_metrics.configured false, and a line under \
            the table) instead of leaving them out.

            A VM restored with --lazy also shows its page-fault server's counters, asked from \
            its monitor: the pages served so far (from the snapshot's memory file, or as zeros \
            where the balloon had removed memory) tell how much of its memory the guest has \
            touched.

            --json keys: id, cpu_usage_ns, memory_bytes, memory_limit_bytes, pids, pids_limit, \
            cgroups, firecracker_metrics {configured, note, file, lines, last_written, \
            block_read_bytes, block_write_bytes, net_rx_bytes, net_tx_bytes, vcpu_exits, \
            vcpu_failures, api_requests, totals {group: {field: total}}}, lazy_memory (lazily \
            restored VMs) {state, faults, pages_served, pages_copied, zero_pages, \
            already_present, remove_events}.
            """
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
        var firecrackerMetrics: MetricsFigures
        var lazyMemory: LazyMemoryFigures?

        enum CodingKeys: String, CodingKey {
            case id
            case cpuUsageNanoseconds = "cpu_usage_ns"
            case memoryBytes = "memory_bytes"
            case memoryLimitBytes = "memory_limit_bytes"
            case pids
            case pidsLimit = "pids_limit"
            case cgroups
            case firecrackerMetrics = "firecracker_metrics"
            case lazyMemory = "lazy_memory"
        }
    }

    /// A lazy restore's page-fault server, as its monitor counts.
    struct LazyMemoryFigures: Encodable {
        var state: String
        var faults, pagesServed, pagesCopied, zeroPages, alreadyPresent, removeEvents: UInt64

        init(_ statistics: LazyMemoryStatistics) {
            state = statistics.phase.rawValue
            faults = statistics.faults
            pagesServed = statistics.pagesServed
            pagesCopied = statistics.pagesCopied
            zeroPages = statistics.zeroPages
            alreadyPresent = statistics.alreadyPresent
            removeEvents = statistics.removeEvents
        }

        enum CodingKeys: String, CodingKey {
            case state, faults
            case pagesServed = "pages_served"
            case pagesCopied = "pages_copied"
            case zeroPages = "zero_pages"
            case alreadyPresent = "already_present"
            case removeEvents = "remove_events"
        }
    }

    /// Firecracker's counters, summed over its metrics file (each line holds deltas).
    struct MetricsFigures: Encodable {
        var configured: Bool
        var note: String?
        var file: String?
        var lines: Int?
        var lastWritten: Date?
        var blockReadBytes: Int?
        var blockWriteBytes: Int?
        var netRxBytes: Int?
        var netTxBytes: Int?
        var vcpuExits: Int?
        var vcpuFailures: Int?
        var apiRequests: Int?
        var totals: [String: [String: Int]]?

        enum CodingKeys: String, CodingKey {
            case configured, note, file, lines
            case lastWritten = "last_written"
            case blockReadBytes = "block_read_bytes"
            case blockWriteBytes = "block_write_bytes"
            case netRxBytes = "net_rx_bytes"
            case netTxBytes = "net_tx_bytes"
            case vcpuExits = "vcpu_exits"
            case vcpuFailures = "vcpu_failures"
            case apiRequests = "api_requests"
            case totals
        }

        static func read(_ record: VMRecord) -> MetricsFigures {
            guard let path = record.metricsPath else {
                return MetricsFigures(configured: false, note: "no metrics configured for this VM (create it with --metrics, or logging: {metrics: true} in its spec)")
            }
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                return MetricsFigures(configured: true, note: "the metrics file \(path) cannot be read", file: path)
            }
            let parsed: [FirecrackerMetrics]
            do {
                parsed = try FirecrackerMetrics.parseLines(text)
            } catch {
                return MetricsFigures(configured: true, note: "\(path): \(error)", file: path)
            }
            guard let last = parsed.last else {
                return MetricsFigures(configured: true, note: "Firecracker has not written a metrics line yet", file: path, lines: 0)
            }
            var totals: [String: [String: Int]] = [:]
            for line in parsed {
                for (group, fields) in line.groups {
                    for (field, value) in fields { totals[group, default: [:]][field, default: 0] += value }
                }
            }
            let summed = FirecrackerMetrics(timestampMilliseconds: last.timestampMilliseconds, groups: totals)
            let vcpu = summed.vcpu
            return MetricsFigures(
                configured: true, file: path, lines: parsed.count,
                lastWritten: Date(timeIntervalSince1970: Double(last.timestampMilliseconds) / 1000),
                blockReadBytes: summed.block.readBytes, blockWriteBytes: summed.block.writeBytes, netRxBytes: summed.net.rxBytes,
                netTxBytes: summed.net.txBytes, vcpuExits: vcpu.exitIOIn + vcpu.exitIOOut + vcpu.exitMMIORead + vcpu.exitMMIOWrite,
                vcpuFailures: vcpu.failures, apiRequests: summed.groups["api_server"]?.values.reduce(0, +), totals: totals)
        }
    }

    func run() async throws {
        let listing = try VMs.listing(id, configuration: try global.driverConfiguration())
        guard let record = listing.record, listing.process.isAlive else {
            throw CLIError(.conflict, "VM \(id) is not running", id: id)
        }
        var figures = Figures(id: id, cgroups: record.cgroupDirectories, firecrackerMetrics: .read(record))
        if record.lazyMemoryFile != nil {
            figures.lazyMemory = await MicroVM.lazyMemoryStatistics(id: id, configuration: try global.driverConfiguration()).map(LazyMemoryFigures.init)
        }
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
        // An unjailed VM has no cgroups: its Firecracker process's own figures.
        if record.cgroupDirectories.isEmpty, let pid = record.pid {
            figures.memoryBytes = ProcFS.statusNumber("VmRSS", of: pid).map { $0 * 1024 }
        }
        // Without a pids cgroup (an unjailed VM, or a jailed one given no pids limit, for which
        // the jailer makes none): the VMM's threads, its cgroup's only tasks.
        if figures.pids == nil, let pid = record.pid {
            figures.pids = ProcFS.statusNumber("Threads", of: pid)
        }
        // cgroup v1's cpu controller counts no usage, and the jailer makes no cpuacct cgroup
        // where that controller has a hierarchy of its own: the VMM's own CPU time then (it is
        // its cgroup's only process).
        if figures.cpuUsageNanoseconds == nil, let pid = record.pid, let time = ProcFS.cpuTime(of: pid) {
            let (seconds, attoseconds) = time.components
            figures.cpuUsageNanoseconds = UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
        }
        if global.json {
            Output.line(JSON.string(figures))
            return
        }
        func mib(_ bytes: UInt64?) -> String { bytes.map { String(format: "%.1f MiB", Double($0) / 1_048_576) } ?? "-" }
        func count(_ value: Int?) -> String { value.map { $0 >= 1 << 20 ? String(format: "%.1f MiB", Double($0) / 1_048_576) : "\($0)" } ?? "-" }
        let metrics = figures.firecrackerMetrics
        var header = ["ID", "CPU TIME", "MEMORY", "MEMORY LIMIT", "PIDS"]
        var row = [
            id, figures.cpuUsageNanoseconds.map { String(format: "%.3f s", Double($0) / 1e9) } ?? "-", mib(figures.memoryBytes),
            mib(figures.memoryLimitBytes), "\(figures.pids.map(String.init) ?? "-")/\(figures.pidsLimit.map(String.init) ?? "max")",
        ]
        if metrics.lines ?? 0 > 0 {
            header += ["BLOCK R/W", "NET RX/TX", "VCPU EXITS"]
            row += [
                "\(count(metrics.blockReadBytes))/\(count(metrics.blockWriteBytes))", "\(count(metrics.netRxBytes))/\(count(metrics.netTxBytes))",
                count(metrics.vcpuExits),
            ]
        }
        Table.print([header, row])
        if let note = metrics.note {
            Output.line("firecracker metrics: \(note)")
        } else if let written = metrics.lastWritten {
            Output.line("firecracker metrics: totals of \(metrics.lines ?? 0) line(s) of \(metrics.file ?? "?"), newest written \(written.formatted(.iso8601))")
        }
        if let lazy = figures.lazyMemory {
            Output.line(
                "lazy memory: \(lazy.state), \(lazy.pagesServed) pages served (\(lazy.pagesCopied) from the snapshot, \(lazy.zeroPages) as zeros) on \(lazy.faults) faults")
        } else if record.lazyMemoryFile != nil {
            Output.line(
                record.monitorPID == nil
                    ? "lazy memory: counted only by the process that restored the VM (its page-fault server runs there)"
                    : "lazy memory: the VM's monitor did not report its page-fault server")
        }
    }
}
