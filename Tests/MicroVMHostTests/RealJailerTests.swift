#if canImport(Glibc)
    import Glibc
#endif
import CMicroVMSys
import Logging
import SystemPackage
import Testing

@testable import MicroVMHost

private var realJailerRunnable: Bool {
    HostPrerequisite.runnable(
        HostPrerequisite.isRoot && HostPrerequisite.hasKVM && TestAssets.jailer != nil && TestAssets.firecracker != nil
            && TestAssets.guestKernel != nil)
}

/// The whole host side of a jailed launch against the real jailer v1.12.1 and the test guest:
/// the argv built here is spawned with posix_spawn (the driver uses swift-subprocess).
@Suite("Jail with the real jailer (root, KVM, test assets)", .serialized, .enabled(if: realJailerRunnable))
struct RealJailerTests {
    func requirePrerequisites() throws -> (jailer: String, firecracker: String, kernel: String) {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        try HostPrerequisite.require(HostPrerequisite.hasKVM, "/dev/kvm")
        try HostPrerequisite.require(TestAssets.jailer != nil, "jailer binary (run scripts/provision-test-assets.sh)")
        try HostPrerequisite.require(TestAssets.firecracker != nil, "firecracker binary (run scripts/provision-test-assets.sh)")
        try HostPrerequisite.require(TestAssets.guestKernel != nil, "test guest kernel (run scripts/provision-test-assets.sh)")
        return (TestAssets.jailer!, TestAssets.firecracker!, TestAssets.guestKernel!)
    }

    /// Spawns the jailer like a driver would and waits for it (with --new-pid-ns it exits at once).
    func launch(_ command: JailerCommand, console: String, errors: String) throws -> ProcessTermination {
        let out = open(console, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let err = open(errors, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        defer {
            close(out)
            close(err)
        }
        let pid = try HostCommand.spawn(command.executable.string, command.arguments, stdout: out, stderr: err).pid
        return try HostCommand.wait(pid)
    }

    func waitForLine(_ text: String, in path: String, timeout: Duration = .seconds(10)) async -> Bool {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while clock.now < deadline {
            if let contents = try? readSmallFile(path), contents.contains(text) { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test("jailed boot: VM user, cgroup limits, only staged files, console, clean teardown, id reused at once")
    func jailedBoot() async throws {
        let assets = try requirePrerequisites()
        // The VMM is reparented to us when the jailer exits, so we can reap it and read its status.
        #expect(cmv_set_child_subreaper() == 0)
        let scratch = ScratchDirectory("real")
        // A private copy: its link count is this test's alone, whatever else runs meanwhile.
        let kernel = scratch.file("guest.elf")
        _ = try HostCommand.run("/bin/cp", [assets.kernel, kernel])
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let parent = uniqueName("microvm-test")
        let configuration = JailerConfiguration(
            jailerBinary: FilePath(assets.jailer), firecrackerBinary: FilePath(assets.firecracker), uid: 123, gid: 100,
            chrootBase: FilePath(base), parentCgroup: parent)
        let limits = ResourceLimits(cpu: CPUQuota(cpus: 0.5), memory: .automatic, pids: 16)
        let guest = GuestResources(memoryMiB: 64, vcpuCount: 1)
        let jail = try Jail(configuration: configuration, id: try VMIdentifier(uniqueName("smoke")))
        let kernelBefore = try statOf(kernel)

        try await withCleanup {
            let preflight = SandboxPreflight.check(configuration: configuration, limits: limits)
            #expect(preflight.isReady, "\(preflight.problems)")
            #expect(preflight.jailerVersion == JailerVersion(major: 1, minor: 12, patch: 1))
            #expect(try SandboxPolicy.required.decide(preflight, logger: testLogger).isSandboxed)

            for (round, mode) in [(1, "normal"), (2, "exit")] {
                try await jail.prepare(logger: testLogger)
                let vmConfig = scratch.file("vm-\(round).json")
                try writeFile(
                    vmConfig,
                    """
                    {"boot-source":{"kernel_image_path":"/kernel/guest.elf","boot_args":"microvm.mode=\(mode) microvm.heartbeat_ms=100"},
                     "machine-config":{"vcpu_count":1,"mem_size_mib":64},"drives":[]}
                    """)
                let staged = try jail.stage(
                    [
                        .readOnly(FilePath(kernel), at: "/kernel/guest.elf"),
                        .readOnly(FilePath(vmConfig), at: "/vm.json"),
                        .emptyFile(at: "/logs/firecracker.log"),
                    ], logger: testLogger)
                #expect(staged[0].method == .hardLink)
                let command = try jail.command(
                    limits: limits, guest: guest,
                    firecrackerArguments: JailerCommand.firecrackerArguments(
                        configFile: "/vm.json", logPath: "/logs/firecracker.log"))
                let console = scratch.file("console-\(round).txt")
                let stderr = scratch.file("stderr-\(round).txt")
                let termination = try launch(command, console: console, errors: stderr)
                if termination != .exited(0) {
                    let error = JailerFailure.classify(
                        id: jail.id.rawValue, termination: termination,
                        standardError: (try? readSmallFile(stderr)) ?? "", configuration: configuration)
                    Issue.record("jailer failed: \(error)")
                    return
                }
                let vmm = try await jail.waitForVMM()

                if mode == "normal" {
                    // The pid file is written before the jailer's child execs Firecracker and drops
                    // privileges; a console line proves Firecracker runs.
                    #expect(await waitForLine("microvm-guest: heartbeat 2", in: console))
                    #expect(JailedVMM.identify(pid: vmm.pid, layout: jail.layout) == .jailed)
                    let status = try readSmallFile("/proc/\(vmm.pid)/status")
                    #expect(status.contains("Uid:\t123\t123\t123\t123"))
                    #expect(status.contains("Gid:\t100\t100\t100\t100"))
                    #expect(JailedVMM.isPIDNamespaceInit(vmm.pid))
                    try CgroupVerifier.verify(pid: vmm.pid, command: command, host: jail.cgroupHost)
                    // Only what was staged plus what the jailer makes.
                    let exec = jail.layout.execFileName
                    let root = jail.layout.rootDirectory.string
                    #expect(Set(JailFileSystem.directoryEntries(root) ?? []) == [exec, exec + ".pid", "dev", "run", "kernel", "vm.json", "logs"])
                    #expect(Set(JailFileSystem.directoryEntries(root + "/dev") ?? []).isSuperset(of: ["kvm", "net", "urandom"]))
                    #expect(exists(try jail.apiSocketHostPath().string))
                    let rootStatus = try statOf(root)
                    #expect(rootStatus.st_uid == 123 && rootStatus.st_mode & 0o777 == 0o700, "the jailer re-owns root/")
                    #expect(try statOf(kernel).st_uid == kernelBefore.st_uid)
                    #expect(try statOf(kernel).st_mode == kernelBefore.st_mode)
                } else {
                    #expect(await waitForLine("microvm-guest: goodbye", in: console))
                    // The guest resets itself; Firecracker exits 0 and waits for us to reap it.
                    let exited = await JailedVMM.waitForExit(pidfd: -1, pid: vmm.pid, timeout: .seconds(10))
                    #expect(exited)
                }

                let directories = command.cgroupDirectories(on: jail.cgroupHost)
                #expect(directories.count == 3)
                let report = await jail.teardown(pid: vmm.pid, logger: testLogger)
                #expect(report.isComplete, "\(report.failures)")
                if mode == "normal" {
                    // PID-namespace init: SIGTERM would be dropped, so SIGKILL straight away.
                    #expect(report.stopped == [.stopped(pid: vmm.pid, signal: SIGKILL, termination: .signaled(SIGKILL))])
                } else {
                    #expect(report.stopped == [.alreadyExited(pid: vmm.pid, termination: .exited(0))])
                }
                #expect(JailedVMM.processState(vmm.pid) == nil)
                #expect(!exists(jail.layout.jailDirectory.string))
                for directory in directories { #expect(!exists(directory), "\(directory)") }
                #expect(Set(report.removedCgroups) == Set(directories))
                #expect(try statOf(kernel).st_nlink == kernelBefore.st_nlink)
            }
        } cleanup: {
            _ = await jail.teardown(logger: testLogger)
            removeParentCgroups(parent, host: jail.cgroupHost)
            scratch.remove()
        }
    }

    @Test("a jailer failure comes back with the jailer's own message and a hint")
    func jailerFailure() async throws {
        let assets = try requirePrerequisites()
        let scratch = ScratchDirectory("real-fail")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        // Jailer 1.12 refuses an exec file whose name lacks "firecracker".
        let renamed = scratch.file("vmm")
        _ = try HostCommand.run("/bin/cp", [assets.firecracker, renamed])
        let configuration = JailerConfiguration(
            jailerBinary: FilePath(assets.jailer), firecrackerBinary: FilePath(renamed), chrootBase: FilePath(base),
            parentCgroup: uniqueName("microvm-test"))
        let preflight = SandboxPreflight.check(configuration: configuration)
        #expect(preflight.problems.contains(.firecrackerNameRejected(name: "vmm", jailerVersion: "v1.12.1")))

        let jail = try Jail(configuration: configuration, id: try VMIdentifier(uniqueName("fail")))
        let command = try jail.command(limits: .none, guest: GuestResources(memoryMiB: 64, vcpuCount: 1))
        // The jailer reports this by panicking (SIGABRT): no core file in our working directory.
        var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
        getrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
        noCore.rlim_cur = 0
        setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
        let termination = try launch(command, console: scratch.file("out"), errors: scratch.file("err"))
        #expect(termination == .signaled(SIGABRT))
        let error = JailerFailure.classify(
            id: jail.id.rawValue, termination: termination, standardError: try readSmallFile(scratch.file("err")),
            configuration: configuration)
        #expect(
            error == .jailerFailed(
                id: jail.id.rawValue, termination: .signaled(SIGABRT), kind: .execFileName,
                message: "Invalid filename. The filename of `--exec-file` option must contain \"firecracker\": vmm"))
        _ = await jail.teardown(logger: testLogger)
    }
}
