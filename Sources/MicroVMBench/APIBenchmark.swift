public import ArgumentParser
import FirecrackerAPI
import Foundation
import MicroVM
import Subprocess
import SystemPackage

/// Requests per second and latency of the API client on one keep-alive connection against the
/// real Firecracker, beside `curl --unix-socket` in the same run.
struct APIBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "api", abstract: "GET/PUT /machine-config and pause/resume through the client and the VM handle vs curl.")

    @OptionGroup var assets: AssetOptions
    @Option(help: "Requests per measured series (client).") var requests = 5_000
    @Option(help: "Requests per curl series (each is a process start).") var curlRequests = 200
    @Option(help: "Warm-up requests before each client series.") var warmup = 200
    @Option(help: "Firecracker's own log level (Info is the driver's default).") var vmmLevel: LogLevel = .warning

    func run() async throws {
        let workspace = try BenchWorkspace("api")
        defer { workspace.remove() }
        let directory = workspace.directory
        // A created (configured, not started) VM: pre-boot PUT /machine-config can be repeated.
        let vm = try await MicroVM.create(
            // Firecracker logs every API request at Info; vmm_level Warning keeps that out of the
            // measurement (`--vmm-level Info` measures the default).
            VMSpec(
                id: "bench-api-\(getpid())", machine: .init(vcpus: 1, memoryMiB: 128), boot: .init(kernel: try assets.kernelPath),
                logging: .init(vmmLevel: vmmLevel)),
            configuration: try assets.driverConfiguration(policy: .disabled, chrootBase: directory), logger: quietLogger())
        let socket = vm.client.socketPath
        do {
            let client = vm.client
            let config = MachineConfiguration(vcpuCount: 1, memSizeMiB: 128)
            try await client.putMachineConfiguration(config)
            print("Firecracker \(try await client.serverVersion()), socket \(socket)")
            print("series                          n   req/s      p50 ms   p99 ms")

            for _ in 0..<warmup { _ = try await client.getMachineConfiguration() }
            var get = Samples()
            for _ in 0..<requests {
                let start = ContinuousClock.now
                _ = try await client.getMachineConfiguration()
                get.append(ContinuousClock.now - start)
            }
            report("client GET /machine-config", get)

            for _ in 0..<warmup { try await client.putMachineConfiguration(config) }
            var put = Samples()
            for _ in 0..<requests {
                let start = ContinuousClock.now
                try await client.putMachineConfiguration(config)
                put.append(ContinuousClock.now - start)
            }
            report("client PUT /machine-config", put)

            let body = #"{"vcpu_count":1,"mem_size_mib":128}"#
            let curlGet = try await curl(socket, ["http://localhost/machine-config"])
            report("curl GET (time_total)", curlGet.exchange, wall: curlGet.wall)
            let curlPut = try await curl(
                socket,
                ["-X", "PUT", "-H", "Content-Type: application/json", "-d", body, "http://localhost/machine-config"])
            report("curl PUT (time_total)", curlPut.exchange, wall: curlPut.wall)

            // The lifecycle operations on the started guest: the VM handle's pause and resume
            // (state check, request, state change, record queued) beside the same requests
            // made by the client alone and by curl.
            try await vm.start()
            let cycles = max(1, requests / 25)
            var handlePause = Samples(), handleResume = Samples(), clientPause = Samples(), clientResume = Samples()
            for _ in 0..<cycles {
                // The record's write, which follows each change in the background, is waited
                // for outside the timed call: it would slow the next one.
                var start = ContinuousClock.now
                try await vm.pause()
                handlePause.append(ContinuousClock.now - start)
                await vm.recordWritten()
                start = ContinuousClock.now
                try await vm.resume()
                handleResume.append(ContinuousClock.now - start)
                await vm.recordWritten()
                start = ContinuousClock.now
                try await client.pause()
                clientPause.append(ContinuousClock.now - start)
                start = ContinuousClock.now
                try await client.resume()
                clientResume.append(ContinuousClock.now - start)
            }
            report("vm.pause()", handlePause)
            report("vm.resume()", handleResume)
            report("client PATCH /vm Paused", clientPause)
            report("client PATCH /vm Resumed", clientResume)
            var curlPause = Samples(), curlResume = Samples()
            for _ in 0..<min(cycles, curlRequests) {
                for (state, into) in [("Paused", 0), ("Resumed", 1)] {
                    let one = try await curl(
                        socket, ["-X", "PATCH", "-H", "Content-Type: application/json", "-d", #"{"state":"\#(state)"}"#, "http://localhost/vm"],
                        count: 1)
                    if into == 0 { curlPause.append(one.exchange.values[0]) } else { curlResume.append(one.exchange.values[0]) }
                }
            }
            report("curl PATCH /vm Paused", curlPause)
            report("curl PATCH /vm Resumed", curlResume)
        } catch {
            await vm.kill()
            throw error
        }
        await vm.kill()
    }

    private func report(_ name: String, _ samples: Samples, wall: Samples? = nil) {
        let rate = Double(samples.values.count) / max(Double(samples.total.components.seconds) + Double(samples.total.components.attoseconds) / 1e18, 1e-9)
        let line = "\(name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(String(format: "%5d", samples.values.count)) \(String(format: "%8.0f", rate))   \(Samples.milliseconds(samples.percentile(50)).leftPad(7))  \(Samples.milliseconds(samples.percentile(99)).leftPad(7))"
        print(line)
        if let wall {
            print("  (curl process wall time: p50 \(Samples.milliseconds(wall.percentile(50))) ms, p99 \(Samples.milliseconds(wall.percentile(99))) ms)")
        }
    }

    /// curl's own `time_total` per request (connect + exchange, no process start), and the wall time.
    private func curl(_ socket: String, _ arguments: [String], count: Int? = nil) async throws -> (exchange: Samples, wall: Samples) {
        var exchange = Samples()
        var wall = Samples()
        for _ in 0..<(count ?? curlRequests) {
            let start = ContinuousClock.now
            let result = try await Subprocess.run(
                .name("curl"),
                arguments: Arguments(["-s", "-o", "/dev/null", "-w", "%{time_total}", "--unix-socket", socket] + arguments),
                output: .string(limit: 256))
            wall.append(ContinuousClock.now - start)
            guard case .exited(0) = result.terminationStatus, let seconds = Double(result.standardOutput)
            else { throw ValidationError("curl failed: \(result.terminationStatus)") }
            exchange.append(.nanoseconds(Int64(seconds * 1e9)))
        }
        return (exchange, wall)
    }
}

extension LogLevel: ExpressibleByArgument {}

extension String {
    func leftPad(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}
