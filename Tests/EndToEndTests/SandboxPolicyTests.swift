import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// `required` / `preferred` against the real binaries: one with a jailer, one without.
@Suite("Sandbox policy end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct SandboxPolicyTests {
    @Test("required without a jailer refuses to start, naming the missing piece, and creates nothing")
    func requiredRefuses() async throws {
        try await EndToEnd.withDriver(.required, name: "policyreq") { configuration, assets, directory in
            var configuration = configuration
            let missing = directory + "/no-jailer"
            configuration.jailer.jailerBinary = FilePath(missing)
            await #expect {
                try await MicroVM.run(EndToEnd.spec(assets, id: "policy-req-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .sandbox(_, .sandboxUnavailable(let problems)) = error as? MicroVMError else { return false }
                return problems.contains { if case .jailerMissing(let path, _) = $0 { path == missing } else { false } }
            }
        }
    }

    @Test("preferred without a jailer runs unjailed, says so, and still cleans up")
    func preferredFallsBack() async throws {
        try await EndToEnd.withDriver(.preferred, name: "policypref") { configuration, assets, directory in
            var configuration = configuration
            configuration.jailer.jailerBinary = FilePath(directory + "/no-jailer")
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "policy-pref-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                #expect(!vm.isSandboxed)
                guard case .unjailed(let reasons) = vm.sandboxDecision else {
                    Issue.record("expected an unjailed decision, got \(vm.sandboxDecision)")
                    return
                }
                #expect(!reasons.isEmpty)
                #expect(vm.vmmPath("/kernel") == "kernel")
                // Its config and log come through the driver's /proc: no file for either.
                let entries = Set((try? FileManager.default.contentsOfDirectory(atPath: vm.directory.string)) ?? [])
                #expect(entries == ["kernel", "firecracker.socket"], "\(entries)")
                #expect(await vm.firecrackerLog.recentLines.contains { $0.message.hasPrefix("Successfully started microvm") })
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
                #expect(await vm.stop().kind == .guestShutdown)
            }
        }
    }

    @Test("disabled: the base of an unjailed VM's directory is made when missing (a user's own, no jailer needs it as root's)")
    func unjailedBaseIsMade() async throws {
        try await EndToEnd.withDriver(.disabled, name: "policyoff") { configuration, assets, directory in
            var configuration = configuration
            let base = directory + "/unjailed/base"
            configuration.jailer.chrootBase = FilePath(base)
            #expect(!FileManager.default.fileExists(atPath: base))
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "policy-off-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                #expect(!vm.isSandboxed && vm.directory.string.hasPrefix(base + "/"))
                // No chroot, so no jail root inside: the VM's directory is its working directory.
                #expect(vm.directory.string == base + "/firecracker/policy-off-\(getpid())", "\(vm.directory)")
                #expect(try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(vm.pid)/cwd") == vm.directory.string)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
                #expect(await vm.stop().kind == .guestShutdown)
            }
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? ["missing"]).isEmpty, "the base stays, empty")
        }
    }

    @Test("The spec's own policy overrides the driver's")
    func specPolicyWins() async throws {
        try await EndToEnd.withDriver(.required, name: "policyspec") { configuration, assets, _ in
            var spec = EndToEnd.spec(assets, id: "policy-spec-\(getpid())")
            spec.sandbox = .disabled
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            #expect(!vm.isSandboxed)
            await vm.kill()
        }
    }
}
