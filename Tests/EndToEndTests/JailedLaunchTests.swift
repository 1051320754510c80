import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// What the jailed executor does on the host, against the real jailer v1.12.1 (cgroup v1 here).
@Suite("Jailed VMs end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct JailedLaunchTests {
    static func readStatus(_ pid: Int32) -> String {
        (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    }

    @Test("Jailed: VM user, PID namespace, cgroup limits, jail contents, host images untouched, id reused at once")
    func jailedBoot() async throws {
        try await EndToEnd.withDriver(.required, name: "jailed") { configuration, assets, _ in
            var spec = EndToEnd.spec(assets, id: "e2e-jail-\(getpid())")
            spec.drives = [
                DriveSpec(id: "rootfs", path: assets.rootfsImage, root: true),
                DriveSpec(id: "data", path: assets.dataImage, readOnly: true),
            ]
            spec.limits = .init(cpus: 0.5, pids: 32)
            let hostImageBefore = try FileManager.default.attributesOfItem(atPath: assets.rootfsImage)
            let dataBefore = try FileManager.default.attributesOfItem(atPath: assets.dataImage)
            for round in 1...2 {
                let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                let cgroups = vm.cgroupDirectories
                try await EndToEnd.using(vm) { vm in
                    #expect(vm.isSandboxed)
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(10))
                    let status = Self.readStatus(vm.pid)
                    #expect(status.contains("Uid:\t\(EndToEnd.uid)\t\(EndToEnd.uid)\t\(EndToEnd.uid)\t\(EndToEnd.uid)"))
                    #expect(status.contains("Gid:\t\(EndToEnd.gid)\t\(EndToEnd.gid)\t\(EndToEnd.gid)\t\(EndToEnd.gid)"))
                    #expect(status.contains("Name:\tfirecracker"))
                    #expect(status.contains("Seccomp:\t2"), "seccomp must stay on")
                    #expect(JailedVMM.isPIDNamespaceInit(vm.pid))
                    let command = try #require(vm.jailerCommand)
                    try CgroupVerifier.verify(pid: vm.pid, command: command, host: try CgroupHost.detect())
                    #expect(!cgroups.isEmpty)
                    for directory in cgroups { #expect(FileManager.default.fileExists(atPath: directory), "\(directory)") }
                    let root = vm.directory.string
                    let exec = vm.layout.execFileName
                    let entries = Set(try FileManager.default.contentsOfDirectory(atPath: root))
                    #expect(entries == [exec, exec + ".pid", "dev", "run", "kernel", "drives", "firecracker.log", "vm.json"])
                    let copy = try FileManager.default.attributesOfItem(atPath: root + "/drives/rootfs")
                    #expect((copy[.ownerAccountID] as? NSNumber)?.uint32Value == EndToEnd.uid)
                    vm.write("jailed hello\n")
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: echo jailed hello", timeout: .seconds(3))
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "\(reason)")
                    #expect(await vm.teardown?.isComplete == true)
                }
                #expect(!FileManager.default.fileExists(atPath: "/proc/\(vm.pid)/status") || !Self.readStatus(vm.pid).contains("firecracker"))
                #expect(!FileManager.default.fileExists(atPath: vm.layout.jailDirectory.string), "round \(round)")
                for directory in cgroups { #expect(!FileManager.default.fileExists(atPath: directory), "\(directory)") }
                for (path, before) in [(assets.rootfsImage, hostImageBefore), (assets.dataImage, dataBefore)] {
                    let after = try FileManager.default.attributesOfItem(atPath: path)
                    #expect(after[.ownerAccountID] as? NSNumber == before[.ownerAccountID] as? NSNumber)
                    #expect(after[.posixPermissions] as? NSNumber == before[.posixPermissions] as? NSNumber)
                    #expect(after[.referenceCount] as? NSNumber == before[.referenceCount] as? NSNumber)
                    #expect(after[.modificationDate] as? Date == before[.modificationDate] as? Date)
                }
            }
        }
    }

    @Test("A VMM that exits at once is reported with Firecracker's exit code and words, and nothing is left")
    func exitsAtOnce() async throws {
        try await EndToEnd.withDriver(.required, name: "early") { configuration, assets, directory in
            var spec = EndToEnd.spec(assets, id: "e2e-early-\(getpid())")
            // Valid for the spec (an ELF64 x86-64 header), refused by Firecracker when it loads
            // it: the kernel's first 64 bytes alone, its program headers cut off.
            let truncated = directory + "/truncated-vmlinux"
            try Data(try Data(contentsOf: URL(fileURLWithPath: assets.kernel)).prefix(64)).write(to: URL(fileURLWithPath: truncated))
            spec.boot.kernel = truncated
            await #expect {
                try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                // Jailed, Firecracker 1.12.1 panics in its API thread when the VM cannot be built
                // from the config file, and the panic handler trips seccomp (exit 148); the
                // reason names the panic, not the seccomp kill.
                guard case .createFailed(_, let step, _, let exit?) = error as? MicroVMError else { return false }
                print("early exit: \(exit)")
                return step == "waiting for Firecracker's API" && !exit.isClean
                    && (exit.kind == .badConfiguration || exit.kind == .vmmError) && !exit.evidence.isEmpty
            }
        }
    }

    @Test("Bad ids are refused before anything touches the disk")
    func badIdentifiers() throws {
        for bad in ["a_b", "../x", "", String(repeating: "a", count: 65), "/"] {
            #expect(throws: JailError.self) { try VMIdentifier(bad) }
        }
        #expect(try VMIdentifier(String(repeating: "a", count: 64)).rawValue.count == 64)
    }
}
