import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// `required` / `preferred` against the real binaries: one with a jailer, one without.
@Suite("Sandbox policy end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct SandboxPolicyTests {
    func configuration(_ assets: TestAssets, base: String, jailer: String? = nil) -> JailerConfiguration {
        JailerConfiguration(
            jailerBinary: FilePath(jailer ?? assets.jailer), firecrackerBinary: FilePath(assets.firecracker),
            chrootBase: FilePath(base), parentCgroup: "microvm-e2e-policy-\(getpid())")
    }

    /// Boots the test guest on `vm`, checks the console, stops it cleanly.
    func bootAndStop(_ vm: LaunchedVMM) async throws {
        try await vm.client.putBootSource(
            BootSource(kernelImagePath: vm.apiPath("/boot/guest.elf"), bootArgs: "console=ttyS0 microvm.heartbeat_ms=100"))
        try await vm.client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 32))
        try await vm.client.startInstance()
        _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
        let (exit, report) = await vm.stop()
        #expect(exit == .exited(code: 0))
        #expect(report.isComplete, "\(report.failures)")
    }

    @Test("required: jailed on a host that has the jailer, and the VM says it is sandboxed")
    func requiredJails() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            let vm = try await LaunchedVMM.launch(
                policy: .required, configuration: configuration(assets, base: base),
                id: try VMIdentifier("policy-req-\(getpid())"), guest: GuestResources(memoryMiB: 32, vcpuCount: 1),
                staging: [.readOnly(FilePath(assets.kernel), at: "/boot/guest.elf")], logger: EndToEnd.logger)
            defer {
                let candidates = vm.jail.cgroupHost.everyCandidateDirectory(parent: vm.jail.parentCgroup, id: vm.jail.id)
                JailedLaunchTests.removeParents(of: candidates)
            }
            #expect(vm.isSandboxed)
            #expect(vm.apiPath("/boot/guest.elf") == "/boot/guest.elf")
            do { try await bootAndStop(vm) } catch {
                await vm.kill()
                throw error
            }
            #expect(!FileManager.default.fileExists(atPath: vm.jail.layout.jailDirectory.string))
        }
    }

    @Test("required without a jailer refuses to start, naming the missing piece, and creates nothing")
    func requiredRefuses() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            let missing = directory + "/no-jailer"
            let id = try VMIdentifier("policy-ref-\(getpid())")
            await #expect {
                try await LaunchedVMM.launch(
                    policy: .required, configuration: configuration(assets, base: base, jailer: missing), id: id,
                    guest: GuestResources(memoryMiB: 32, vcpuCount: 1), logger: EndToEnd.logger)
            } throws: { error in
                guard case .sandboxUnavailable(let problems) = error as? JailError else { return false }
                return problems.contains { if case .jailerMissing(let path, _) = $0 { path == missing } else { false } }
            }
            let layout = configuration(assets, base: base).layout(for: id)
            #expect(!FileManager.default.fileExists(atPath: layout.jailDirectory.string))
        }
    }

    @Test("preferred without a jailer runs unjailed, says so, and still cleans up")
    func preferredFallsBack() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            let vm = try await LaunchedVMM.launch(
                policy: .preferred, configuration: configuration(assets, base: base, jailer: directory + "/no-jailer"),
                id: try VMIdentifier("policy-pref-\(getpid())"), guest: GuestResources(memoryMiB: 32, vcpuCount: 1),
                staging: [.readOnly(FilePath(assets.kernel), at: "/boot/guest.elf")], logger: EndToEnd.logger)
            #expect(!vm.isSandboxed)
            guard case .unjailed(let reasons) = vm.decision else {
                Issue.record("expected an unjailed decision, got \(vm.decision)")
                return
            }
            #expect(!reasons.isEmpty)
            #expect(vm.apiPath("/boot/guest.elf").hasPrefix(vm.jail.layout.rootDirectory.string))
            do { try await bootAndStop(vm) } catch {
                await vm.kill()
                throw error
            }
            #expect(!FileManager.default.fileExists(atPath: vm.jail.layout.jailDirectory.string))
        }
    }
}
