import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Testing

/// The API client against the real Firecracker (unjailed) and the project's test guest.
@Suite("Firecracker end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct FirecrackerLifecycleTests {
    static let bootArgs = "console=ttyS0 reboot=k panic=1 microvm.heartbeat_ms=100"

    @Test("Configure every basic device, boot, pause/resume, flush metrics, Ctrl-Alt-Del exits 0")
    func fullLifecycle() async throws {
        let assets = try EndToEnd.assets()
        let tap = try TapDevice.create(name: EndToEnd.tapName("a"))
        defer {
            try? tap.remove()
            #expect(!TapDevice.exists(name: tap.name), "the test's TAP device was left behind")
        }
        try await EndToEnd.withFirecracker(logToFile: false) { vm, directory in
            let client = vm.client
            // Firecracker opens (never creates) its log and metrics paths.
            let logPath = directory + "/firecracker.log"
            let metricsPath = directory + "/metrics.json"
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            _ = FileManager.default.createFile(atPath: metricsPath, contents: nil)
            let rootfs = directory + "/rootfs.ext4"
            try FileManager.default.copyItem(atPath: assets.rootfsImage, toPath: rootfs)

            #expect(try await client.serverVersion() == FirecrackerVersion(1, 12, 1))
            try await client.putLogger(LoggerConfiguration(logPath: logPath, level: .info, showLevel: true))
            try await client.putMetrics(MetricsConfiguration(metricsPath: metricsPath))
            let boot = BootSource(kernelImagePath: assets.kernel, bootArgs: Self.bootArgs)
            let machine = MachineConfiguration(vcpuCount: 1, memSizeMiB: 64, smt: false)
            let drive = Drive(driveId: "rootfs", isRootDevice: true, pathOnHost: rootfs, isReadOnly: false)
            let data = Drive(driveId: "data", isRootDevice: false, pathOnHost: assets.dataImage, isReadOnly: true)
            let nic = NetworkInterface(ifaceId: "eth0", hostDevName: tap.name, guestMac: "06:00:ac:10:00:02")
            try await client.putBootSource(boot)
            try await client.putMachineConfiguration(machine)
            try await client.putDrive(drive)
            try await client.putDrive(data)
            try await client.putNetworkInterface(nic)
            #expect(try await client.describeInstance().state == .notStarted)

            try await client.startInstance()
            let console = vm.process.console
            let banner = try await console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
            #expect(banner.text.contains("heartbeat_ms=100"))
            _ = try await console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(5))
            #expect(try await client.describeInstance().state == .running)

            let config = try await client.getVMConfiguration()
            #expect(config.bootSource?.kernelImagePath == boot.kernelImagePath)
            #expect(config.bootSource?.bootArgs == boot.bootArgs)
            #expect(config.machineConfig?.vcpuCount == 1)
            #expect(config.machineConfig?.memSizeMiB == 64)
            #expect(config.drives?.count == 2)
            let sentRoot = try #require(config.drives?.first { $0.driveId == "rootfs" })
            #expect(sentRoot.pathOnHost == rootfs && sentRoot.isRootDevice && sentRoot.isReadOnly == false)
            let sentData = try #require(config.drives?.first { $0.driveId == "data" })
            #expect(sentData.pathOnHost == assets.dataImage && sentData.isReadOnly == true)
            #expect(config.networkInterfaces?.first?.hostDevName == tap.name)
            #expect(config.networkInterfaces?.first?.guestMac == nic.guestMac)

            // Paused: no heartbeat for well over its interval. Resumed: they come back.
            try await client.pause()
            #expect(try await client.describeInstance().state == .paused)
            let lastBeforePause = try #require(await console.recentLines.last).index
            try await Task.sleep(for: .milliseconds(600))
            let heartbeatsWhilePaused = await console.recentLines.filter {
                $0.index > lastBeforePause && $0.text.contains("heartbeat")
            }
            #expect(heartbeatsWhilePaused.isEmpty, "the guest kept running while paused: \(heartbeatsWhilePaused)")
            try await client.resume()
            _ = try await console.waitForLine(after: lastBeforePause + 1, timeout: .seconds(2), "heartbeat after resume") {
                $0.contains("microvm-guest: heartbeat")
            }

            // Serial input reaches the guest, which echoes it.
            vm.process.write("hello from the host\n")
            _ = try await console.waitForLine(containing: "microvm-guest: echo hello from the host", timeout: .seconds(3))

            try await client.flushMetrics()
            let metricsText = try String(contentsOfFile: metricsPath, encoding: .utf8)
            let lastLine = try #require(metricsText.split(separator: "\n").last)
            let metrics = try JSONSerialization.jsonObject(with: Data(lastLine.utf8)) as? [String: Any]
            #expect(metrics?["utc_timestamp_ms"] != nil)
            #expect(metrics?["api_server"] != nil)

            try await client.sendCtrlAltDel()
            _ = try await console.waitForLine(containing: "microvm-guest: goodbye", timeout: .seconds(3))
            let exit = try #require(await vm.process.exit(within: .seconds(5)))
            #expect(exit == .exited(code: 0))
            let log = try String(contentsOfFile: logPath, encoding: .utf8)
            #expect(log.contains("Vmm is stopping"))
        }
    }

    @Test("Firecracker's own messages for a missing kernel and a second root drive")
    func preBootErrors() async throws {
        try await EndToEnd.withFirecracker { vm, directory in
            let client = vm.client
            let missing = directory + "/no-such-kernel"
            await #expect {
                try await client.putBootSource(BootSource(kernelImagePath: missing))
            } throws: { error in
                guard case .api(400, let message, "PUT /boot-source", let body) = error as? FirecrackerAPIError
                else { return false }
                return message.contains("kernel") && message.contains("No such file") && body?.contains(missing) == true
            }
            let assets = try EndToEnd.assets()
            try await client.putDrive(Drive(driveId: "root1", isRootDevice: true, pathOnHost: assets.rootfsImage, isReadOnly: true))
            await #expect {
                try await client.putDrive(Drive(driveId: "root2", isRootDevice: true, pathOnHost: assets.dataImage, isReadOnly: true))
            } throws: { error in
                guard case .api(400, let message, "PUT /drives/root2", _) = error as? FirecrackerAPIError
                else { return false }
                return message.lowercased().contains("root")
            }
        }
    }

    @Test("Firecracker's own messages for a pre-boot call after boot and a snapshot while running")
    func postBootErrors() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withFirecracker { vm, directory in
            let client = vm.client
            try await client.putBootSource(BootSource(kernelImagePath: assets.kernel, bootArgs: Self.bootArgs))
            try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 32))
            try await client.startInstance()
            _ = try await vm.process.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))

            await #expect {
                try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 2, memSizeMiB: 64))
            } throws: { error in
                guard case .api(400, let message, "PUT /machine-config", _) = error as? FirecrackerAPIError
                else { return false }
                return message.contains("not supported after starting the microVM")
            }
            await #expect {
                try await client.createSnapshot(
                    SnapshotCreateParams(snapshotPath: directory + "/vm.snap", memFilePath: directory + "/vm.mem"))
            } throws: { error in
                guard case .api(400, let message, "PUT /snapshot/create", _) = error as? FirecrackerAPIError
                else { return false }
                return message.contains("save/restore unavailable while running")
            }
            #expect(!FileManager.default.fileExists(atPath: directory + "/vm.mem"))
            // The VM survived both refusals.
            #expect(try await client.describeInstance().state == .running)
        }
    }

    @Test("A guest that crashes ends Firecracker with exit code 1")
    func guestCrash() async throws {
        let assets = try EndToEnd.assets()
        _ = try await EndToEnd.withFirecracker { vm, _ in
            try await vm.client.putBootSource(
                BootSource(kernelImagePath: assets.kernel, bootArgs: "console=ttyS0 microvm.mode=crash"))
            try await vm.client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 32))
            try await vm.client.startInstance()
            let exit = try #require(await vm.process.exit(within: .seconds(10)))
            #expect(exit == .exited(code: 1))
            #expect(exit.reason == "generic error")
        }
    }

    @Test("Starting on a path where a live Firecracker listens is refused; a stale socket is replaced")
    func socketOwnership() async throws {
        let assets = try EndToEnd.assets()
        _ = try await EndToEnd.withFirecracker { vm, _ in
            await #expect {
                try await FirecrackerInstance.start(
                    firecracker: .init(assets.firecracker), socketPath: vm.socketPath, logger: EndToEnd.logger)
            } throws: { error in
                guard case .socketInUse = error as? FirecrackerInstance.StartError else { return false }
                return true
            }
        }
        try await EndToEnd.withScratchDirectory { directory in
            let path = directory + "/api.sock"
            // Leave a socket behind the way a killed Firecracker does.
            let first = try await FirecrackerInstance.start(
                firecracker: .init(assets.firecracker), socketPath: path, logger: EndToEnd.logger)
            first.process.send(signal: SIGKILL)
            _ = await first.process.exit()
            #expect(FileManager.default.fileExists(atPath: path))
            let second = try await FirecrackerInstance.start(
                firecracker: .init(assets.firecracker), socketPath: path, logger: EndToEnd.logger)
            #expect(try await second.client.describeInstance().state == .notStarted)
            await second.kill()
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }
}
