import ArgumentParser
import Foundation
import Logging
import MicroVM
import MicroVMHost
import SystemPackage

@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "microvm-bench",
        abstract: "Benchmarks against the real Firecracker and jailer; prints figures (see BENCHMARKS.md).",
        subcommands: [APIBenchmark.self, LaunchBenchmark.self, FleetBenchmark.self, SnapshotBenchmark.self, PoolBenchmark.self, DeviceBenchmark.self, DetachedBenchmark.self, NetworkBenchmark.self, ConsoleBenchmark.self]
    )
}

/// Where the benchmarks find their binaries and guest: flags, else the test-asset variables.
struct AssetOptions: ParsableArguments {
    @Option(help: "firecracker binary (default: $MICROVM_FIRECRACKER_BIN)")
    var firecracker: String?
    @Option(help: "jailer binary (default: $MICROVM_JAILER_BIN)")
    var jailer: String?
    @Option(help: "guest kernel (default: $MICROVM_GUEST_KERNEL)")
    var kernel: String?

    func resolve(_ value: String?, _ variable: String) throws -> String {
        guard let path = value ?? ProcessInfo.processInfo.environment[variable], FileManager.default.fileExists(atPath: path)
        else {
            throw ValidationError("set \(variable) or pass the flag (scripts/provision-test-assets.sh provides it)")
        }
        return path
    }

    var firecrackerPath: String { get throws { try resolve(firecracker, "MICROVM_FIRECRACKER_BIN") } }
    var jailerPath: String { get throws { try resolve(jailer, "MICROVM_JAILER_BIN") } }
    var kernelPath: String { get throws { try resolve(kernel, "MICROVM_GUEST_KERNEL") } }

    /// The driver's configuration for these binaries, with a chroot base private to this run.
    func driverConfiguration(policy: SandboxPolicy, chrootBase: String? = nil, uid: UInt32 = 123, gid: UInt32 = 100) throws -> DriverConfiguration {
        var jailer = JailerConfiguration(
            jailerBinary: FilePath(try jailerPath), firecrackerBinary: FilePath(try firecrackerPath), uid: uid, gid: gid)
        if let chrootBase { jailer.chrootBase = FilePath(chrootBase) }
        jailer.parentCgroup = "microvm-bench-\(getpid())"
        return DriverConfiguration(jailer: jailer, policy: policy)
    }
}

/// Latency samples and their summary.
struct Samples {
    var values: [Duration] = []

    mutating func append(_ value: Duration) { values.append(value) }

    func percentile(_ p: Double) -> Duration {
        guard !values.isEmpty else { return .zero }
        let sorted = values.sorted()
        let index = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))
        return sorted[index]
    }

    var total: Duration { values.reduce(.zero, +) }

    /// The arithmetic mean: beside the median where a distribution has two modes (a launch's
    /// build on a 2-CPU host), whose median jumps between them from run to run.
    var mean: Duration { values.isEmpty ? .zero : total / values.count }

    static func milliseconds(_ value: Duration) -> String {
        let (seconds, attoseconds) = value.components
        let ms = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return String(format: "%.3f", ms)
    }
}

func quietLogger() -> Logger {
    var logger = Logger(label: "microvm.bench")
    logger.logLevel = .error
    return logger
}

/// A benchmark's scratch directory (`<parent>/microvm-bench-<name>-<pid>`, with the jails'
/// base in `jails/`) and its parent cgroups: `remove()` takes both away again, as the teardown
/// of a VM keeps shared parent cgroups on purpose.
struct BenchWorkspace {
    let directory: String
    var jails: String { directory + "/jails" }

    init(_ name: String, under parent: String = NSTemporaryDirectory()) throws {
        let parent = parent.hasSuffix("/") ? String(parent.dropLast()) : parent
        directory = parent + "/microvm-bench-\(name)-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory + "/jails", withIntermediateDirectories: true)
    }

    func remove() {
        // A child cgroup removed a moment ago may still be going offline (EBUSY, ENOTEMPTY).
        for hierarchy in ["cpu", "cpuacct", "cpuset", "memory", "pids", "unified"].map({ "/sys/fs/cgroup/" + $0 }) + ["/sys/fs/cgroup"] {
            let parent = "\(hierarchy)/microvm-bench-\(getpid())"
            var attempts = 0
            while rmdir(parent) != 0, errno == EBUSY || errno == ENOTEMPTY, attempts < 100 {
                attempts += 1
                usleep(10_000)
            }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}
