import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// The API client against the real Firecracker and the project's test guest: what Firecracker
/// answers to calls made through ``MicroVM/client`` on a created (configured, not started) VM.
@Suite("Firecracker API end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct FirecrackerLifecycleTests {
    @Test("Firecracker's own messages for a missing kernel and a second root drive")
    func preBootErrors() async throws {
        try await EndToEnd.withDriver(.disabled, name: "prebootapi") { configuration, assets, directory in
            let vm = try await MicroVM.create(EndToEnd.spec(assets, id: "api-pre-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                #expect(try await vm.client.serverVersion() == FirecrackerVersion(1, 12, 1))
                #expect(try await vm.client.describeInstance().state == .notStarted)
                let client = vm.client
                let missing = directory + "/no-such-kernel"
                await #expect {
                    try await client.putBootSource(BootSource(kernelImagePath: missing))
                } throws: { error in
                    guard case .api(400, let message, "PUT /boot-source", let body) = error as? FirecrackerAPIError
                    else { return false }
                    return message.contains("kernel") && message.contains("No such file") && body?.contains(missing) == true
                }
                try await client.putDrive(Drive(driveId: "root1", isRootDevice: true, pathOnHost: assets.rootfsImage, isReadOnly: true))
                await #expect {
                    try await client.putDrive(Drive(driveId: "root2", isRootDevice: true, pathOnHost: assets.dataImage, isReadOnly: true))
                } throws: { error in
                    guard case .api(400, let message, "PUT /drives/root2", _) = error as? FirecrackerAPIError
                    else { return false }
                    return message.lowercased().contains("root")
                }
                await vm.kill()
            }
        }
    }

    @Test("Firecracker's own messages for a pre-boot call after boot and a snapshot while running")
    func postBootErrors() async throws {
        try await EndToEnd.withDriver(.disabled, name: "postbootapi") { configuration, assets, directory in
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "api-post-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                let client = vm.client
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                await #expect {
                    try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 2, memSizeMiB: 64))
                } throws: { error in
                    guard case .api(400, let message, "PUT /machine-config", _) = error as? FirecrackerAPIError
                    else { return false }
                    return message.contains("not supported after starting the microVM")
                }
                await #expect {
                    try await client.createSnapshot(SnapshotCreateParams(snapshotPath: "vm.snap", memFilePath: "vm.mem"))
                } throws: { error in
                    guard case .api(400, let message, "PUT /snapshot/create", _) = error as? FirecrackerAPIError
                    else { return false }
                    return message.contains("save/restore unavailable while running")
                }
                // The VM survived both refusals.
                #expect(try await client.describeInstance().state == .running)
                #expect(await vm.state == .running)
                await vm.kill()
            }
        }
    }
}
