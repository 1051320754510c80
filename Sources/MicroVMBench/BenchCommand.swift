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

    /// How far the ratio of two series' p50s (`a / b`) could move by chance: a 95% bootstrap
    /// interval that resamples whole rounds, each round keeping its launch of both series (they
    /// ran in the same minute of the machine's state), 2,000 times, with a fixed seed so a run's
    /// printout is reproducible from its samples. Nil unless both have one sample per round.
    ///
    /// Why: on a 2-CPU host the ratio of two medians moves by ±0.05-0.1x between runs of 120
    /// rounds of the same code (BENCHMARKS.md), so a target such as "≤ 1.1x" is only read
    /// honestly together with its interval.
    static func ratioInterval(_ a: Samples, _ b: Samples, iterations: Int = 2000) -> (low: Double, high: Double)? {
        guard a.values.count == b.values.count, a.values.count >= 10 else { return nil }
        let count = a.values.count
        let aSeconds = a.values.map(seconds)
        let bSeconds = b.values.map(seconds)
        var generator = SplitMix64(seed: 0x6D69_6372_6F76_6D00)
        var ratios: [Double] = []
        ratios.reserveCapacity(iterations)
        var aDraw = [Double](repeating: 0, count: count)
        var bDraw = [Double](repeating: 0, count: count)
        for _ in 0..<iterations {
            for slot in 0..<count {
                let round = Int(generator.next() % UInt64(count))
                aDraw[slot] = aSeconds[round]
                bDraw[slot] = bSeconds[round]
            }
            ratios.append(median(aDraw) / max(median(bDraw), 1e-12))
        }
        ratios.sort()
        return (ratios[Int(Double(iterations) * 0.025)], ratios[min(iterations - 1, Int(Double(iterations) * 0.975))])
    }

    /// The p50 as ``percentile(_:)`` takes it (the lower middle of an even count).
    private static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        return sorted[max(0, (sorted.count + 1) / 2 - 1)]
    }

    static func milliseconds(_ value: Duration) -> String {
        let (seconds, attoseconds) = value.components
        let ms = Double(seconds) * 1000 + Double(attoseconds) / 1e15
        return String(format: "%.3f", ms)
    }
}

/// A duration in seconds, for ratios and rates.
func seconds(_ value: Duration) -> Double {
    Double(value.components.seconds) + Double(value.components.attoseconds) / 1e18
}

/// A small deterministic generator (SplitMix64) for resampling: the same samples give the same
/// interval on every run.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
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

/// This process's environment as it is now, for a child started through swift-subprocess to
/// inherit unchanged (as the library's launches do: they pass `environ` itself).
///
/// swift-subprocess's `.inherit` parses the environment into a dictionary of `String`s and prints
/// it back, twice per spawn (once for `PATH`): 0.1-0.2 ms per spawn in a `perf` profile
/// (BENCHMARKS.md, session 7). The raw entries of `environ`, copied as they are, reach the child
/// byte for byte.
enum InheritedEnvironment {
    /// Each `NAME=value` entry with its terminating NUL, as swift-subprocess's
    /// `Environment.custom(_: [[UInt8]])` takes it (it hands each one to `strdup`).
    static var entries: [[UInt8]] {
        var entries: [[UInt8]] = []
        var cursor = environ
        while let entry = cursor.pointee {
            let length = strlen(entry)
            entries.append(Array(UnsafeBufferPointer(start: UnsafeRawPointer(entry).assumingMemoryBound(to: UInt8.self), count: length + 1)))
            cursor += 1
        }
        return entries
    }
}
