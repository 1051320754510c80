import ArgumentParser
import Dispatch
import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage

/// Boots the project's test guest and shows its console: the quickest proof that the host,
/// Firecracker, the jailer and this driver work together.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Boot the test guest under Firecracker (jailed by default) and show its serial console.",
        discussion: """
            Creates a VM from the test guest (jailed unless --sandbox says otherwise), boots it, \
            prints its console, sends it a line to echo, then stops it with Ctrl-Alt-Del and \
            shows how it ended. scripts/demo.sh provisions the binaries and guest and runs this.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "The firecracker binary (default: $MICROVM_FIRECRACKER_BIN).")
    var firecracker: String?

    @Option(help: "The jailer binary (default: $MICROVM_JAILER_BIN).")
    var jailer: String?

    @Option(help: "The guest kernel (default: $MICROVM_GUEST_KERNEL).")
    var kernel: String?

    @Option(help: "required (default: refuse without a working jailer), preferred or disabled.")
    var sandbox: SandboxPolicy?

    @Option(help: "Heartbeats to show before stopping the guest.")
    var heartbeats = 5

    @Option(help: "Guest memory in MiB.")
    var memory = 64

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.demo")
        var environment = ProcessInfo.processInfo.environment
        if let firecracker { environment["MICROVM_FIRECRACKER_BIN"] = firecracker }
        if let jailer { environment["MICROVM_JAILER_BIN"] = jailer }
        var configuration = try DriverConfiguration(environment: environment)
        if let sandbox { configuration.policy = sandbox }
        guard let kernel = kernel ?? environment["MICROVM_GUEST_KERNEL"] else {
            throw ValidationError("no guest kernel: pass --kernel PATH or set MICROVM_GUEST_KERNEL (scripts/provision-test-assets.sh builds one)")
        }
        guard heartbeats >= 1 else { throw ValidationError("--heartbeats must be at least 1") }
        let spec = VMSpec(
            id: "demo-\(getpid())", machine: .init(vcpus: 1, memoryMiB: memory),
            boot: .init(kernel: kernel, args: ["console=ttyS0", "microvm.heartbeat_ms=200"]))

        let started = ContinuousClock.now
        // Ctrl-C cancels the creation (which removes what it made), or stops the VM before we go.
        let interrupts = Interrupts.catching()
        let vm = try await interrupts.cancelling { try await MicroVM.run(spec, configuration: configuration, logger: logger) }
        print("[demo] VM \(vm.id) \(vm.isSandboxed ? "jailed" : "UNJAILED") (Firecracker pid \(vm.pid), directory \(vm.directory))")
        do {
            try await interrupts.cancelling { try await Self.drive(vm: vm, heartbeats: heartbeats, started: started) }
        } catch {
            let reason = await vm.kill()
            print("[demo] stopped: \(error) (\(reason))")
            throw ExitCode.failure
        }
    }

    private static func drive(vm: MicroVM, heartbeats: Int, started: ContinuousClock.Instant) async throws {
        let lines = await vm.console.subscribe(replay: true)
        let printer = Task {
            for await line in lines { print("guest| \(line.text)") }
        }
        let banner = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
        print("[demo] banner \((ContinuousClock.now - started).formatted(.units(allowed: [.milliseconds]))) after launch")
        _ = try await vm.console.waitForLine(
            after: banner.index, timeout: .seconds(Double(heartbeats) * 0.2 + 5), "heartbeat \(heartbeats)"
        ) { $0.contains("microvm-guest: heartbeat \(heartbeats)") }
        vm.write("hello from microvm\n")
        _ = try await vm.console.waitForLine(containing: "echo hello from microvm", timeout: .seconds(3))
        print("[demo] sending Ctrl-Alt-Del")
        let reason = await vm.stop(grace: .seconds(5))
        await printer.value
        print("[demo] \(reason)")
        if !reason.isClean { throw ExitCode.failure }
    }
}

