import ArgumentParser
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage

/// Snapshot create (full, and diff on an idle guest) and restore to the guest's first reaction,
/// through the library beside the same API calls made directly on a raw Firecracker.
struct SnapshotBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot", abstract: "Snapshot create and restore: library vs raw API calls.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Rounds per series.") var runs = 10
    @Option(help: "Guest memory in MiB.") var memory = 64
    @Flag(help: "Also restore each snapshot lazily (memory served on demand by userfaultfd) and time it beside the file backend.")
    var lazy = false
    @Option(help: ArgumentHelp("Where the library's snapshots are written (default: beside the jails; another filesystem makes a file-backed restore copy the memory).", valueName: "dir"))
    var snapshotDirectory: String?

    static let heartbeat = "microvm-guest: heartbeat"

    func run() async throws {
        let firecracker = try assets.firecrackerPath
        let kernel = try assets.kernelPath
        let workspace = try BenchWorkspace("snapshot")
        defer { workspace.remove() }
        let (directory, base) = (workspace.directory, workspace.jails)
        let logger = quietLogger()
        let args = ["console=ttyS0", "microvm.heartbeat_ms=50"]
        let configPath = directory + "/vm.json"
        try Data(
            """
            {"boot-source":{"kernel_image_path":"\(kernel)","boot_args":"\(args.joined(separator: " "))"},
             "machine-config":{"vcpu_count":1,"mem_size_mib":\(memory),"track_dirty_pages":true},"drives":[]}
            """.utf8
        ).write(to: URL(fileURLWithPath: configPath))

        var raw = (full: Samples(), diff: Samples(), restore: Samples())
        var library = [SandboxPolicy.disabled: (full: Samples(), diff: Samples(), restore: Samples()), .required: (full: Samples(), diff: Samples(), restore: Samples())]
        var lazyRestore = [SandboxPolicy.disabled: Samples(), .required: Samples()]
        var lazyPages = [SandboxPolicy.disabled: [UInt64](), .required: []]
        let snapshots = snapshotDirectory.map { $0 + "/microvm-bench-snapshot-\(getpid())" } ?? directory
        try FileManager.default.createDirectory(atPath: snapshots, withIntermediateDirectories: true)
        defer { if snapshots != directory { try? FileManager.default.removeItem(atPath: snapshots) } }

        for round in 0..<runs {
            // Raw: a Firecracker with an API socket; pause, create, resume as direct calls.
            let rawDirectory = directory + "/raw-\(round)"
            try FileManager.default.createDirectory(atPath: rawDirectory, withIntermediateDirectories: true)
            let socket = rawDirectory + "/api.sock"
            let log = rawDirectory + "/fc.log"
            _ = FileManager.default.createFile(atPath: log, contents: nil)
            let source = try await RawLaunch.untilBanner(
                executable: firecracker, arguments: ["--api-sock", socket, "--config-file", configPath, "--log-path", log],
                banner: "microvm-guest: banner")
            let client = FirecrackerClient(socketPath: socket)
            try await client.waitUntilReady()
            for (type, name) in [(SnapshotType.full, "full"), (.diff, "diff")] {
                let start = ContinuousClock.now
                try await client.pause()
                try await client.createSnapshot(
                    SnapshotCreateParams(snapshotPath: "\(rawDirectory)/\(name).state", memFilePath: "\(rawDirectory)/\(name).mem", snapshotType: type))
                try await client.resume()
                if type == .full { raw.full.append(ContinuousClock.now - start) } else { raw.diff.append(ContinuousClock.now - start) }
            }
            await client.close()
            kill(source.pid, SIGKILL)
            await source.termination.value
            // Restore into a fresh process: load with resume, until the next heartbeat.
            let restoreSocket = rawDirectory + "/restore.sock"
            let restored = try await RawLaunch.untilBanner(
                executable: firecracker, arguments: ["--api-sock", restoreSocket, "--log-path", log], banner: Self.heartbeat
            ) {
                let client = FirecrackerClient(socketPath: restoreSocket)
                try await client.waitUntilReady(initialBackoff: .microseconds(500), maximumBackoff: .milliseconds(2))
                try await client.loadSnapshot(
                    SnapshotLoadParams(snapshotPath: "\(rawDirectory)/full.state", memBackend: .file("\(rawDirectory)/full.mem"), resumeVm: true))
                await client.close()
            }
            raw.restore.append(restored.elapsed)
            kill(restored.pid, SIGKILL)
            await restored.termination.value
            try? FileManager.default.removeItem(atPath: rawDirectory)

            // Library, unjailed and jailed.
            for policy in [SandboxPolicy.disabled, .required] {
                let configuration = try assets.driverConfiguration(policy: policy, chrootBase: base)
                let tag = "\(policy.rawValue.prefix(3))-\(round)"
                let vm = try await MicroVM.run(
                    VMSpec(id: "snap-\(tag)", machine: .init(vcpus: 1, memoryMiB: memory, trackDirtyPages: true), boot: .init(kernel: kernel, args: args)),
                    configuration: configuration, logger: logger)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                var start = ContinuousClock.now
                let full = try await vm.snapshot(to: FilePath("\(snapshots)/full-\(tag)"), type: .full)
                library[policy]!.full.append(ContinuousClock.now - start)
                start = ContinuousClock.now
                _ = try await vm.snapshot(to: FilePath("\(snapshots)/diff-\(tag)"), type: .diff)
                library[policy]!.diff.append(ContinuousClock.now - start)
                await vm.kill()
                start = ContinuousClock.now
                let copy = try await MicroVM.restore(full, id: "rest-\(tag)", configuration: configuration, logger: logger)
                _ = try await copy.console.waitForLine(containing: Self.heartbeat, timeout: .seconds(10))
                library[policy]!.restore.append(ContinuousClock.now - start)
                await copy.kill()
                if lazy {
                    start = ContinuousClock.now
                    let lazyCopy = try await MicroVM.restore(full, id: "lazy-\(tag)", memory: .lazy, configuration: configuration, logger: logger)
                    _ = try await lazyCopy.console.waitForLine(containing: Self.heartbeat, timeout: .seconds(10))
                    lazyRestore[policy]!.append(ContinuousClock.now - start)
                    lazyPages[policy]!.append(lazyCopy.lazyMemory?.pagesServed ?? 0)
                    await lazyCopy.kill()
                }
                try? FileManager.default.removeItem(atPath: "\(snapshots)/full-\(tag)")
                try? FileManager.default.removeItem(atPath: "\(snapshots)/diff-\(tag)")
            }
        }
        print("snapshots of a \(memory) MiB guest, \(runs) runs (ms)                   p50      p95")
        var rows: [(String, Samples)] = [
            ("raw: pause + create full + resume", raw.full),
            ("library unjailed: snapshot(.full)", library[.disabled]!.full),
            ("library jailed: snapshot(.full)", library[.required]!.full),
            ("raw: pause + create diff (idle) + resume", raw.diff),
            ("library unjailed: snapshot(.diff)", library[.disabled]!.diff),
            ("library jailed: snapshot(.diff)", library[.required]!.diff),
            ("raw: exec + load (resume) -> first heartbeat", raw.restore),
            ("library unjailed: restore -> first heartbeat", library[.disabled]!.restore),
            ("library jailed: restore -> first heartbeat", library[.required]!.restore),
        ]
        if lazy {
            rows += [
                ("library unjailed: restore(.lazy) -> first heartbeat", lazyRestore[.disabled]!),
                ("library jailed: restore(.lazy) -> first heartbeat", lazyRestore[.required]!),
            ]
        }
        for (name, samples) in rows {
            print("\(name.padding(toLength: 52, withPad: " ", startingAt: 0)) \(Samples.milliseconds(samples.percentile(50)).leftPad(8)) \(Samples.milliseconds(samples.percentile(95)).leftPad(8))")
        }
        if lazy {
            for policy in [SandboxPolicy.disabled, .required] {
                let pages = lazyPages[policy]!.sorted()
                print("lazy \(policy.rawValue): pages served until the first heartbeat (median of \(pages.count)): \(pages.isEmpty ? 0 : pages[pages.count / 2]) of \(memory * 256)")
            }
        }
    }
}
