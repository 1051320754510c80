import ArgumentParser
import Dispatch
import FirecrackerAPI
import Foundation
import MicroVM
import SystemPackage

/// Boots the project's test guest and shows its console: the quickest proof that the host,
/// Firecracker and this driver work together.
struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Boot the test guest under Firecracker and show its serial console.",
        discussion: """
            Starts Firecracker (unjailed), configures it through the API, boots the guest, prints \
            its console, sends it a line to echo, then stops it with Ctrl-Alt-Del. \
            scripts/demo.sh provisions the binaries and guest and runs this.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Option(help: "The firecracker binary (default: $MICROVM_FIRECRACKER_BIN).")
    var firecracker: String?

    @Option(help: "The guest kernel (default: $MICROVM_GUEST_KERNEL).")
    var kernel: String?

    @Option(help: "Heartbeats to show before stopping the guest.")
    var heartbeats = 5

    @Option(help: "Guest memory in MiB.")
    var memory = 64

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.demo")
        let environment = ProcessInfo.processInfo.environment
        guard let firecracker = firecracker ?? environment["MICROVM_FIRECRACKER_BIN"] else {
            throw ValidationError("no Firecracker binary: pass --firecracker PATH or set MICROVM_FIRECRACKER_BIN (scripts/provision-test-assets.sh provides one)")
        }
        guard let kernel = kernel ?? environment["MICROVM_GUEST_KERNEL"] else {
            throw ValidationError("no guest kernel: pass --kernel PATH or set MICROVM_GUEST_KERNEL (scripts/provision-test-assets.sh builds one)")
        }
        for (what, path) in [("Firecracker binary", firecracker), ("guest kernel", kernel)]
        where !FileManager.default.fileExists(atPath: path) {
            throw ValidationError("the \(what) \(path) does not exist")
        }
        guard heartbeats >= 1 else { throw ValidationError("--heartbeats must be at least 1") }

        let directory = NSTemporaryDirectory() + "microvm-demo-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let logPath = directory + "/firecracker.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)

        let started = ContinuousClock.now
        let vm = try await FirecrackerInstance.start(
            firecracker: FilePath(firecracker), socketPath: directory + "/api.sock",
            // Log to a file from the first line: on stdout it would interleave with the console.
            arguments: ["--log-path", logPath, "--level", "Info"], logger: logger)
        // Ctrl-C stops the VM before we go: it runs in its own session and would outlive us.
        signal(SIGINT, SIG_IGN)
        let interrupt = DispatchSource.makeSignalSource(signal: SIGINT)
        let work = Task {
            try await Self.drive(vm: vm, kernel: kernel, memory: memory, heartbeats: heartbeats, started: started)
        }
        interrupt.setEventHandler { work.cancel() }
        interrupt.resume()
        defer { interrupt.cancel() }
        do {
            try await work.value
        } catch {
            let exit = await vm.kill()
            print("[demo] stopped: \(error) (Firecracker \(exit))")
            throw ExitCode.failure
        }
    }

    private static func drive(
        vm: FirecrackerInstance, kernel: String, memory: Int, heartbeats: Int,
        started: ContinuousClock.Instant
    ) async throws {
        let client = vm.client
        let version = try await client.serverVersion()
        print("[demo] Firecracker \(version) ready on \(vm.socketPath) (pid \(vm.process.pid))")
        try await client.putBootSource(
            BootSource(kernelImagePath: kernel, bootArgs: "console=ttyS0 microvm.heartbeat_ms=200"))
        try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: memory))

        let lines = await vm.process.console.subscribe(replay: true)
        let printer = Task {
            for await line in lines { print("guest| \(line.text)") }
        }
        try await client.startInstance()
        let console = vm.process.console
        let banner = try await console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
        print("[demo] banner \((ContinuousClock.now - started).formatted(.units(allowed: [.milliseconds]))) after launch")
        _ = try await console.waitForLine(
            after: banner.index, timeout: .seconds(Double(heartbeats) * 0.2 + 5), "heartbeat \(heartbeats)"
        ) { $0.contains("microvm-guest: heartbeat \(heartbeats)") }
        vm.process.write("hello from microvm\n")
        _ = try await console.waitForLine(containing: "echo hello from microvm", timeout: .seconds(3))
        print("[demo] sending Ctrl-Alt-Del")
        let exit = await vm.stop(grace: .seconds(5))
        await printer.value
        print("[demo] Firecracker \(exit)")
        if !exit.isClean { throw ExitCode.failure }
    }
}
