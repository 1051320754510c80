// A driver process the end-to-end tests can kill: it creates a VM, brings it to the state the
// test asks for, says so on stdout, and waits to be killed (SIGKILL, as a crash would).
import Foundation
import Logging
import MicroVM
import MicroVMHost
import SystemPackage

/// Writes a line to stdout at once (unbuffered: the test reads it while this process runs).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

@main
struct TestDriver {
    static func main() async {
        var options: [String: String] = [:]
        var arguments = CommandLine.arguments.dropFirst()
        while let key = arguments.popFirst(), key.hasPrefix("--"), let value = arguments.popFirst() {
            options[String(key.dropFirst(2))] = value
        }
        func option(_ name: String) -> String {
            guard let value = options[name] else {
                FileHandle.standardError.write(Data("missing --\(name)\n".utf8))
                exit(2)
            }
            return value
        }
        var logger = Logger(label: "microvm.test-driver")
        logger.logLevel = .error
        var configuration = DriverConfiguration(
            jailer: JailerConfiguration(
                jailerBinary: FilePath(option("jailer")), firecrackerBinary: FilePath(option("firecracker")), uid: 123, gid: 100,
                chrootBase: FilePath(option("chroot-base")), parentCgroup: option("parent-cgroup")),
            policy: SandboxPolicy(rawValue: option("policy")) ?? .required, stateStore: StateStore(root: FilePath(option("state-dir"))))
        if let monitor = options["monitor"] { configuration.monitor = MonitorSettings(binary: FilePath(monitor)) }
        var spec = VMSpec(
            id: option("id"), machine: .init(vcpus: 1, memoryMiB: Int(options["memory"] ?? "64") ?? 64),
            boot: .init(kernel: option("kernel"), args: ["console=ttyS0", "microvm.heartbeat_ms=\(options["heartbeat-ms"] ?? "100")"]))
        // `--spec-chroot-base`: the VM's own chroot base, overriding the driver's.
        if let base = options["spec-chroot-base"] { spec.jail = .init(chrootBase: base) }
        do {
            // `--restore-lazy DIR`: the snapshot in DIR, restored with its pages served by this
            // process (which the test then kills); it runs once a heartbeat shows.
            if let directory = options["restore-lazy"] {
                let vm = try await MicroVM.restore(
                    try Snapshot.load(from: FilePath(directory)), id: spec.id, memory: .lazy, configuration: configuration, logger: logger)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat", timeout: .seconds(10))
                say("READY \(vm.pid)")
                while true { try await Task.sleep(for: .seconds(3600)) }
            }
            // `--launch run`: one call that boots from a config file (create + start otherwise).
            let booted = options["launch"] == "run"
            let vm = booted ? try await MicroVM.run(spec, configuration: configuration, logger: logger) : try await MicroVM.create(spec, configuration: configuration, logger: logger)
            let then = option("then")
            if then != "created", !booted {
                try await vm.start()
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
            }
            if then == "paused" { try await vm.pause() }
            if then == "snapshotting" {
                say("READY \(vm.pid)")
                _ = try await vm.snapshot(to: FilePath(option("snapshot-dir")), type: .full)
                say("SNAPSHOT DONE")
            } else {
                say("READY \(vm.pid)")
            }
            while true { try await Task.sleep(for: .seconds(3600)) }
        } catch {
            say("FAILED \(error)")
            exit(1)
        }
    }
}
