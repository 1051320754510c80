import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// The driver's jailed launch against the real jailer v1.12.1 (cgroup v1 on this host).
@Suite("Jailed launch end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct JailedLaunchTests {
    static let uid: UInt32 = 123
    static let gid: UInt32 = 100

    /// A jail configuration whose chroot base and parent cgroup belong to this test run alone.
    static func configuration(_ assets: TestAssets, base: String, parent: String) -> JailerConfiguration {
        JailerConfiguration(
            jailerBinary: FilePath(assets.jailer), firecrackerBinary: FilePath(assets.firecracker),
            uid: uid, gid: gid, chrootBase: FilePath(base), parentCgroup: parent)
    }

    /// Removes the per-run parent cgroups (teardown keeps shared parents on purpose).
    static func removeParents(of directories: [String]) {
        for parent in Set(directories.map { ($0 as NSString).deletingLastPathComponent }) {
            rmdir(parent)
        }
    }

    /// A jail for one test, with a chroot base and parent cgroup of its own.
    static func withJail(name: String, _ body: (Jail) async throws -> Void) async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
            let configuration = configuration(assets, base: base, parent: "microvm-e2e-\(getpid())-\(name)")
            try await body(try Jail(configuration: configuration, id: try VMIdentifier("e2e-\(name)-\(getpid())")))
        }
    }

    static func readStatus(_ pid: Int32) -> String {
        (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    }

    @Test("Jailed boot: VM user, cgroup limits, console both ways, Ctrl-Alt-Del exit 0, nothing left, id reused at once")
    func jailedBoot() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
            let parent = "microvm-e2e-\(getpid())"
            let configuration = Self.configuration(assets, base: base, parent: parent)
            let id = try VMIdentifier("e2e-\(getpid())")
            let limits = ResourceLimits(cpu: CPUQuota(cpus: 0.5), memory: .automatic, pids: 32)
            let guest = GuestResources(memoryMiB: 64, vcpuCount: 1)
            let hostImageBefore = try FileManager.default.attributesOfItem(atPath: assets.rootfsImage)
            var cgroupDirectories: [String] = []
            defer { Self.removeParents(of: cgroupDirectories) }

            for round in 1...2 {
                let jail = try Jail(configuration: configuration, id: id)
                let vm = try await JailedFirecracker.start(
                    jail: jail, limits: limits, guest: guest,
                    staging: [
                        .readOnly(FilePath(assets.kernel), at: "/boot/guest.elf"),
                        .writableCopy(FilePath(assets.rootfsImage), at: "/drives/rootfs.ext4"),
                        .readOnly(FilePath(assets.dataImage), at: "/drives/data.ext4"),
                        .emptyFile(at: "/logs/firecracker.log"),
                    ],
                    firecrackerArguments: JailerCommand.firecrackerArguments(logPath: "/logs/firecracker.log"),
                    logger: EndToEnd.logger)
                cgroupDirectories = vm.command.cgroupDirectories(on: jail.cgroupHost)
                do {
                    #expect(vm.isSandboxed)
                    let client = vm.client
                    try await client.putBootSource(
                        BootSource(kernelImagePath: "/boot/guest.elf", bootArgs: "console=ttyS0 microvm.heartbeat_ms=100"))
                    try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 64))
                    try await client.putDrive(
                        Drive(driveId: "rootfs", isRootDevice: true, pathOnHost: "/drives/rootfs.ext4", isReadOnly: false))
                    try await client.putDrive(
                        Drive(driveId: "data", isRootDevice: false, pathOnHost: "/drives/data.ext4", isReadOnly: true))
                    try await client.startInstance()
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(10))

                    // Firecracker runs as the VM user, as PID 1 of its own namespace, inside the
                    // VM's cgroups with the limits written.
                    let status = Self.readStatus(vm.vmm.pid)
                    #expect(status.contains("Uid:\t\(Self.uid)\t\(Self.uid)\t\(Self.uid)\t\(Self.uid)"))
                    #expect(status.contains("Gid:\t\(Self.gid)\t\(Self.gid)\t\(Self.gid)\t\(Self.gid)"))
                    #expect(status.contains("Name:\tfirecracker"))
                    #expect(JailedVMM.isPIDNamespaceInit(vm.vmm.pid))
                    try CgroupVerifier.verify(pid: vm.vmm.pid, command: vm.command, host: jail.cgroupHost)
                    for directory in cgroupDirectories {
                        #expect(FileManager.default.fileExists(atPath: directory), "\(directory)")
                    }
                    let root = jail.layout.rootDirectory.string
                    let entries = Set(try FileManager.default.contentsOfDirectory(atPath: root))
                    let exec = jail.layout.execFileName
                    #expect(entries == [exec, exec + ".pid", "dev", "run", "boot", "drives", "logs"])
                    let copy = try FileManager.default.attributesOfItem(atPath: root + "/drives/rootfs.ext4")
                    #expect((copy[.ownerAccountID] as? NSNumber)?.uint32Value == Self.uid)

                    vm.write("jailed hello\n")
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: echo jailed hello", timeout: .seconds(3))

                    let (exit, report) = await vm.stop(grace: .seconds(5))
                    #expect(exit == .exited(code: 0), "the guest's Ctrl-Alt-Del reset must end Firecracker cleanly")
                    #expect(report.isComplete, "\(report.failures)")
                } catch {
                    await vm.kill()
                    throw error
                }
                // Nothing left: process, jail, cgroups, socket. The host image is untouched.
                #expect(!JailedVMM(pid: vm.vmm.pid, layout: jail.layout).isAlive && !FileManager.default.fileExists(atPath: "/proc/\(vm.vmm.pid)"))
                #expect(!FileManager.default.fileExists(atPath: jail.layout.jailDirectory.string), "round \(round)")
                for directory in cgroupDirectories {
                    #expect(!FileManager.default.fileExists(atPath: directory), "\(directory)")
                }
                let hostImageAfter = try FileManager.default.attributesOfItem(atPath: assets.rootfsImage)
                #expect(hostImageAfter[.ownerAccountID] as? NSNumber == hostImageBefore[.ownerAccountID] as? NSNumber)
                #expect(hostImageAfter[.posixPermissions] as? NSNumber == hostImageBefore[.posixPermissions] as? NSNumber)
                #expect(hostImageAfter[.referenceCount] as? NSNumber == hostImageBefore[.referenceCount] as? NSNumber)
            }
        }
    }

    @Test("A VMM killed from outside is reported, and teardown still leaves nothing")
    func killedFromOutside() async throws {
        try await Self.withJail(name: "kill") { jail in
            let vm = try await JailedFirecracker.start(
                jail: jail, limits: .recommended, guest: GuestResources(memoryMiB: 32, vcpuCount: 1),
                logger: EndToEnd.logger)
            let directories = vm.command.cgroupDirectories(on: jail.cgroupHost)
            defer { Self.removeParents(of: directories) }
            kill(vm.vmm.pid, SIGKILL)
            let exit = await vm.exit(within: .seconds(5))
            #expect(exit == .signaled(signal: SIGKILL))
            let (_, report) = await vm.kill()
            #expect(report.isComplete, "\(report.failures)")
            #expect(!FileManager.default.fileExists(atPath: jail.layout.jailDirectory.string))
            for directory in directories { #expect(!FileManager.default.fileExists(atPath: directory)) }
        }
    }

    @Test("A VMM that exits at once is reported with its real exit code, and nothing is left")
    func exitsAtOnce() async throws {
        try await Self.withJail(name: "early") { jail in
            let candidates = jail.cgroupHost.everyCandidateDirectory(parent: jail.parentCgroup, id: jail.id)
            defer { Self.removeParents(of: candidates) }
            await #expect {
                try await JailedFirecracker.start(
                    jail: jail, guest: GuestResources(memoryMiB: 32, vcpuCount: 1),
                    firecrackerArguments: JailerCommand.firecrackerArguments(extra: ["--no-such-flag"]),
                    logger: EndToEnd.logger)
            } throws: { error in
                // Firecracker's exit code for bad arguments, learned by reaping it as subreaper.
                guard case .vmmExitedEarly(_, .exited(153)?, _) = error as? JailError else { return false }
                return true
            }
            #expect(!FileManager.default.fileExists(atPath: jail.layout.jailDirectory.string))
            for directory in candidates { #expect(!FileManager.default.fileExists(atPath: directory), "\(directory)") }
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
