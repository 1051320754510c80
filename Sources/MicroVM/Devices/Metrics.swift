import FirecrackerAPI
import Foundation
import Logging
public import Metrics
import MicroVMHost
import NIOPosix
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// Firecracker's metrics: one JSON object per line in the metrics file (spec `logging.metrics`),
// written at start, every 60 s and on `FlushMetrics`. Counters in a line are deltas since the
// previous line, so every line must be counted once: the driver keeps, per VM, how far it has
// read, and exports each new line's deltas through swift-metrics.

/// One line of Firecracker's metrics file: counters since the previous line.
///
/// The groups the driver knows are typed (``block``, ``net``, ``vsock``, ``balloon``, ``vcpu``,
/// ``apiServer``, ``mmds``, ``entropy``, and per device ``drives`` / ``interfaces``); every
/// integer of every group is also in ``groups``, so counters of other Firecracker versions are
/// not lost.
public struct FirecrackerMetrics: Sendable, Hashable {
    /// When Firecracker wrote the line (ms since the Unix epoch).
    public var timestampMilliseconds: Int64
    /// Every integer field, by group (`block_rootfs`, `vcpu`, ...) and name.
    public var groups: [String: [String: Int]]
    /// The `*_agg` latency aggregates (e.g. `block_data.read_agg`), by group and name.
    public var latencies: [String: [String: LatencyAggregate]]

    /// All drives together (`block`).
    public var block: BlockMetrics { BlockMetrics(groups["block"] ?? [:]) }
    /// Per drive id (`block_<id>`).
    public var drives: [String: BlockMetrics] { devices(prefix: "block_").mapValues(BlockMetrics.init) }
    /// All interfaces together (`net`).
    public var net: NetMetrics { NetMetrics(groups["net"] ?? [:]) }
    /// Per interface id (`net_<id>`).
    public var interfaces: [String: NetMetrics] { devices(prefix: "net_").mapValues(NetMetrics.init) }
    public var vsock: VsockMetrics { VsockMetrics(groups["vsock"] ?? [:]) }
    public var balloon: BalloonMetrics { BalloonMetrics(groups["balloon"] ?? [:]) }
    public var vcpu: VcpuMetrics { VcpuMetrics(groups["vcpu"] ?? [:]) }
    public var apiServer: APIServerMetrics { APIServerMetrics(groups["api_server"] ?? [:]) }
    public var mmds: MMDSMetrics { MMDSMetrics(groups["mmds"] ?? [:]) }
    public var entropy: EntropyMetrics { EntropyMetrics(groups["entropy"] ?? [:]) }

    /// One field, 0 when absent.
    public subscript(group group: String, field field: String) -> Int { groups[group]?[field] ?? 0 }

    private func devices(prefix: String) -> [String: [String: Int]] {
        var result: [String: [String: Int]] = [:]
        for (name, fields) in groups where name.hasPrefix(prefix) {
            result[String(name.dropFirst(prefix.count))] = fields
        }
        return result
    }

    public init(timestampMilliseconds: Int64, groups: [String: [String: Int]], latencies: [String: [String: LatencyAggregate]] = [:]) {
        self.timestampMilliseconds = timestampMilliseconds
        self.groups = groups
        self.latencies = latencies
    }

    /// Parses one line of the metrics file.
    public init(line: some StringProtocol) throws(MetricsParseError) {
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(line.utf8))
        } catch {
            throw MetricsParseError(reason: "not JSON: \(error)", excerpt: String(line.prefix(120)))
        }
        guard case .object(let members) = value else {
            throw MetricsParseError(reason: "not a JSON object", excerpt: String(line.prefix(120)))
        }
        var timestamp: Int64 = 0
        var groups: [String: [String: Int]] = [:]
        var latencies: [String: [String: LatencyAggregate]] = [:]
        for (name, member) in members {
            switch member {
            case .int(let number) where name == "utc_timestamp_ms":
                timestamp = number
            case .object(let fields):
                var integers: [String: Int] = [:]
                for (field, fieldValue) in fields {
                    switch fieldValue {
                    case .int(let number):
                        integers[field] = Int(truncatingIfNeeded: number)
                    case .object(let aggregate):
                        if let parsed = LatencyAggregate(aggregate) { latencies[name, default: [:]][field] = parsed }
                    default:
                        break
                    }
                }
                groups[name] = integers
            default:
                break
            }
        }
        self.init(timestampMilliseconds: timestamp, groups: groups, latencies: latencies)
    }

    /// Parses every complete line of `text` (a trailing partial line is ignored).
    public static func parseLines(_ text: some StringProtocol) throws(MetricsParseError) -> [FirecrackerMetrics] {
        var result: [FirecrackerMetrics] = []
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        for line in lines.dropLast() where !line.isEmpty {
            result.append(try FirecrackerMetrics(line: line))
        }
        return result
    }

    /// A counter as exported to swift-metrics: its label, dimensions and the delta to add.
    public struct ExportedCounter: Sendable, Hashable {
        public var label: String
        public var dimensions: [String: String]
        public var delta: Int
    }

    /// Fields that are values, not counters (a value written once, or the last latency).
    static func isCounter(group: String, field: String) -> Bool {
        if group == "latencies_us" { return false }
        if group == "api_server" && field.hasPrefix("process_startup_time") { return false }
        return true
    }

    /// What ``export(vmID:to:)`` adds: every non-zero counter of this line, labelled
    /// `firecracker_<group>_<field>` with the VM id as dimension `vm_id`. Per-device groups
    /// (`block_<id>`, `net_<id>`) become `firecracker_block_device_<field>` /
    /// `firecracker_net_device_<field>` with a `device` dimension, so they never add up with the
    /// all-devices totals (`firecracker_block_<field>`).
    public func exportedCounters(vmID: String) -> [ExportedCounter] {
        var result: [ExportedCounter] = []
        for (group, fields) in groups.sorted(by: { $0.key < $1.key }) {
            var label = "firecracker_\(group)"
            var dimensions = ["vm_id": vmID]
            for kind in ["block", "net"] where group.hasPrefix(kind + "_") {
                label = "firecracker_\(kind)_device"
                dimensions["device"] = String(group.dropFirst(kind.count + 1))
            }
            for (field, delta) in fields.sorted(by: { $0.key < $1.key }) where delta > 0 && Self.isCounter(group: group, field: field) {
                result.append(ExportedCounter(label: "\(label)_\(field)", dimensions: dimensions, delta: delta))
            }
        }
        return result
    }

    /// Adds this line's deltas to swift-metrics counters (the bootstrapped backend unless
    /// `factory` is given).
    public func export(vmID: String, to factory: (any MetricsFactory)? = nil) {
        for counter in exportedCounters(vmID: vmID) {
            let dimensions = counter.dimensions.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
            if let factory {
                Counter(label: counter.label, dimensions: dimensions, factory: factory).increment(by: counter.delta)
            } else {
                Counter(label: counter.label, dimensions: dimensions).increment(by: counter.delta)
            }
        }
    }
}

/// Min, max and sum of the latencies measured in one period (Firecracker's `*_agg` objects).
public struct LatencyAggregate: Sendable, Hashable {
    public var minMicroseconds: Int
    public var maxMicroseconds: Int
    public var sumMicroseconds: Int

    init?(_ fields: [String: JSONValue]) {
        guard case .int(let min)? = fields["min_us"], case .int(let max)? = fields["max_us"], case .int(let sum)? = fields["sum_us"] else {
            return nil
        }
        minMicroseconds = Int(truncatingIfNeeded: min)
        maxMicroseconds = Int(truncatingIfNeeded: max)
        sumMicroseconds = Int(truncatingIfNeeded: sum)
    }
}

/// A metrics line that could not be read.
public struct MetricsParseError: Error, Sendable, Hashable, CustomStringConvertible {
    public var reason: String
    public var excerpt: String
    public var description: String { "metrics line unreadable (\(reason)): \(excerpt)" }
}

/// A block device's counters (`block`, `block_<id>`).
public struct BlockMetrics: Sendable, Hashable {
    public var readBytes, writeBytes, readCount, writeCount, flushCount: Int
    public var queueEventCount, rateLimiterEventCount, rateLimiterThrottledEvents: Int
    public var updateCount, updateFails, executeFails, invalidRequests, noAvailableBuffer, activateFails: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        readBytes = fields["read_bytes"] ?? 0
        writeBytes = fields["write_bytes"] ?? 0
        readCount = fields["read_count"] ?? 0
        writeCount = fields["write_count"] ?? 0
        flushCount = fields["flush_count"] ?? 0
        queueEventCount = fields["queue_event_count"] ?? 0
        rateLimiterEventCount = fields["rate_limiter_event_count"] ?? 0
        rateLimiterThrottledEvents = fields["rate_limiter_throttled_events"] ?? 0
        updateCount = fields["update_count"] ?? 0
        updateFails = fields["update_fails"] ?? 0
        executeFails = fields["execute_fails"] ?? 0
        invalidRequests = fields["invalid_reqs_count"] ?? 0
        noAvailableBuffer = fields["no_avail_buffer"] ?? 0
        activateFails = fields["activate_fails"] ?? 0
    }
}

/// A network interface's counters (`net`, `net_<id>`).
public struct NetMetrics: Sendable, Hashable {
    public var rxBytes, txBytes, rxPackets, txPackets, rxCount, txCount: Int
    public var rxFails, txFails, tapReadFails, tapWriteFails: Int
    public var rxRateLimiterThrottled, txRateLimiterThrottled, txSpoofedMACs, txMalformedFrames, activateFails: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        rxBytes = fields["rx_bytes_count"] ?? 0
        txBytes = fields["tx_bytes_count"] ?? 0
        rxPackets = fields["rx_packets_count"] ?? 0
        txPackets = fields["tx_packets_count"] ?? 0
        rxCount = fields["rx_count"] ?? 0
        txCount = fields["tx_count"] ?? 0
        rxFails = fields["rx_fails"] ?? 0
        txFails = fields["tx_fails"] ?? 0
        tapReadFails = fields["tap_read_fails"] ?? 0
        tapWriteFails = fields["tap_write_fails"] ?? 0
        rxRateLimiterThrottled = fields["rx_rate_limiter_throttled"] ?? 0
        txRateLimiterThrottled = fields["tx_rate_limiter_throttled"] ?? 0
        txSpoofedMACs = fields["tx_spoofed_mac_count"] ?? 0
        txMalformedFrames = fields["tx_malformed_frames"] ?? 0
        activateFails = fields["activate_fails"] ?? 0
    }
}

/// The vsock device's counters.
public struct VsockMetrics: Sendable, Hashable {
    public var rxBytes, txBytes, rxPackets, txPackets: Int
    public var connectionsAdded, connectionsKilled, connectionsRemoved: Int
    public var txWriteFails, rxReadFails, activateFails: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        rxBytes = fields["rx_bytes_count"] ?? 0
        txBytes = fields["tx_bytes_count"] ?? 0
        rxPackets = fields["rx_packets_count"] ?? 0
        txPackets = fields["tx_packets_count"] ?? 0
        connectionsAdded = fields["conns_added"] ?? 0
        connectionsKilled = fields["conns_killed"] ?? 0
        connectionsRemoved = fields["conns_removed"] ?? 0
        txWriteFails = fields["tx_write_fails"] ?? 0
        rxReadFails = fields["rx_read_fails"] ?? 0
        activateFails = fields["activate_fails"] ?? 0
    }
}

/// The balloon's counters.
public struct BalloonMetrics: Sendable, Hashable {
    public var inflateCount, deflateCount, statsUpdates, statsUpdateFails, activateFails, eventFails: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        inflateCount = fields["inflate_count"] ?? 0
        deflateCount = fields["deflate_count"] ?? 0
        statsUpdates = fields["stats_updates_count"] ?? 0
        statsUpdateFails = fields["stats_update_fails"] ?? 0
        activateFails = fields["activate_fails"] ?? 0
        eventFails = fields["event_fails"] ?? 0
    }
}

/// The vCPUs' exits (all vCPUs together).
public struct VcpuMetrics: Sendable, Hashable {
    public var exitIOIn, exitIOOut, exitMMIORead, exitMMIOWrite, failures: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        exitIOIn = fields["exit_io_in"] ?? 0
        exitIOOut = fields["exit_io_out"] ?? 0
        exitMMIORead = fields["exit_mmio_read"] ?? 0
        exitMMIOWrite = fields["exit_mmio_write"] ?? 0
        failures = fields["failures"] ?? 0
    }
}

/// The API server: its start-up times (values, written once) and failure counters.
public struct APIServerMetrics: Sendable, Hashable {
    public var processStartupTimeMicroseconds, processStartupTimeCPUMicroseconds: Int
    public var syncResponseFails, syncVMMSendTimeouts: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        processStartupTimeMicroseconds = fields["process_startup_time_us"] ?? 0
        processStartupTimeCPUMicroseconds = fields["process_startup_time_cpu_us"] ?? 0
        syncResponseFails = fields["sync_response_fails"] ?? 0
        syncVMMSendTimeouts = fields["sync_vmm_send_timeout_count"] ?? 0
    }
}

/// The metadata service's traffic.
public struct MMDSMetrics: Sendable, Hashable {
    public var rxAccepted, rxCount, txBytes, txCount, txFrames, txErrors, connectionsCreated, connectionsDestroyed: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        rxAccepted = fields["rx_accepted"] ?? 0
        rxCount = fields["rx_count"] ?? 0
        txBytes = fields["tx_bytes"] ?? 0
        txCount = fields["tx_count"] ?? 0
        txFrames = fields["tx_frames"] ?? 0
        txErrors = fields["tx_errors"] ?? 0
        connectionsCreated = fields["connections_created"] ?? 0
        connectionsDestroyed = fields["connections_destroyed"] ?? 0
    }
}

/// The entropy device's counters.
public struct EntropyMetrics: Sendable, Hashable {
    public var bytes, eventCount, eventFails, hostRNGFails, rateLimiterThrottled: Int
    public var fields: [String: Int]

    public init(_ fields: [String: Int]) {
        self.fields = fields
        bytes = fields["entropy_bytes"] ?? 0
        eventCount = fields["entropy_event_count"] ?? 0
        eventFails = fields["entropy_event_fails"] ?? 0
        hostRNGFails = fields["host_rng_fails"] ?? 0
        rateLimiterThrottled = fields["entropy_rate_limiter_throttled"] ?? 0
    }
}

/// How far each live VM's metrics file has been read (by VM directory).
private let metricsCursors = DeviceRegistry<Int64>()

extension MicroVM {
    /// The most the driver reads of the metrics file at once; older lines are skipped (and
    /// their deltas not exported) if more piled up.
    static let metricsReadLimit: Int64 = 8 << 20

    /// Makes Firecracker write a metrics line now and returns it (deltas since the previous
    /// line). Every line written since the last call, the periodic ones included, is exported
    /// through swift-metrics (``FirecrackerMetrics/export(vmID:to:)``), once; after the first
    /// call, the lines Firecracker writes up to its exit are exported at the VM's teardown.
    ///
    /// Needs `logging.metrics: true` in the spec and a started guest (Firecracker refuses
    /// `FlushMetrics` before boot).
    @discardableResult
    public func flushMetrics() async throws(MicroVMError) -> FirecrackerMetrics {
        let vmID = id.rawValue
        try VMOperation.updateDevice.check(in: state, id: vmID)
        guard let path = metricsPath else {
            throw .invalidSpec(
                id: vmID, problems: [SpecProblem(field: "logging.metrics", message: "the VM writes no metrics", hint: "set logging.metrics: true")])
        }
        let key = directory.string
        if metricsCursors.insert(0, for: key) {
            // Firecracker writes a last line as it exits: export it (and any periodic line not
            // yet seen) before the VM's directory goes.
            await onTeardown {
                guard let start = metricsCursors.remove(key) else { return }
                let text = try? await Self.deviceOffPool(id: vmID) { () throws(MicroVMError) -> (String, Int64) in
                    try Self.readMetrics(path: path, from: start, vmID: vmID)
                }.0
                for line in (try? FirecrackerMetrics.parseLines(text ?? "")) ?? [] { line.export(vmID: vmID) }
            }
        }
        try await Self.call("FlushMetrics", id: vmID) { try await client.flushMetrics() }
        let start = metricsCursors.update(key) { $0 ?? 0 }
        let (text, end) = try await Self.deviceOffPool(id: vmID) { () throws(MicroVMError) -> (String, Int64) in
            try Self.readMetrics(path: path, from: start, vmID: vmID)
        }
        let lines: [FirecrackerMetrics]
        do {
            lines = try FirecrackerMetrics.parseLines(text)
        } catch {
            throw .file(id: vmID, SystemCallError(call: "parse metrics", subject: "\(path): \(error)", errno: EINVAL))
        }
        metricsCursors.update(key) { $0 = end }
        guard let newest = lines.last else {
            throw .file(id: vmID, SystemCallError(call: "read metrics", subject: "\(path): no line after FlushMetrics", errno: ENODATA))
        }
        for line in lines { line.export(vmID: vmID) }
        return newest
    }

    /// The complete lines from `offset` on, and the offset after the last of them.
    private static func readMetrics(path: FilePath, from offset: Int64, vmID: String) throws(MicroVMError) -> (String, Int64) {
        let fd = open(path.string, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw .file(id: vmID, SystemCallError(call: "open", subject: path.string, errno: errno)) }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw .file(id: vmID, SystemCallError(call: "fstat", subject: path.string, errno: errno)) }
        let size = Int64(status.st_size)
        // A file shorter than the cursor was replaced: read it from the start.
        var start = offset <= size ? offset : 0
        if size - start > metricsReadLimit { start = size - metricsReadLimit }
        var bytes = [UInt8](repeating: 0, count: Int(size - start))
        var done = 0
        while done < bytes.count {
            let count = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(start) + off_t(done)) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .file(id: vmID, SystemCallError(call: "pread", subject: path.string, errno: errno))
            }
            if count == 0 { break }
            done += count
        }
        bytes.removeSubrange(done...)
        // Only whole lines: Firecracker may be writing the next one.
        guard let lastNewline = bytes.lastIndex(of: UInt8(ascii: "\n")) else { return ("", start) }
        var slice = bytes[...lastNewline]
        // After a skip, the first line is partial.
        if start != offset, start > 0, let first = slice.firstIndex(of: UInt8(ascii: "\n")) { slice = slice[(first + 1)...] }
        return (String(decoding: slice, as: UTF8.self), start + Int64(lastNewline) + 1)
    }
}
