#if canImport(Glibc)
    import Glibc
#endif
import Logging
import SystemPackage
import Testing

@testable import MicroVMHost

/// Staging, stale-jail handling and teardown against the real filesystem, processes and
/// cgroups of this host. Needs root.
@Suite("Jail host mechanisms (root)", .serialized, .enabled(if: HostPrerequisite.runnable(HostPrerequisite.isRoot)))
struct JailHostTests {
    let uid: UInt32 = 123
    let gid: UInt32 = 100

    func layout(base: String, id: String = uniqueName("vm"), exec: String = "firecracker") throws -> JailLayout {
        JailLayout(chrootBase: FilePath(base), execFileName: exec, id: try VMIdentifier(id))
    }

    func emptyHost() -> CgroupHost { CgroupHost(v1Mounts: [], v2Mount: nil, defaultVersion: .v1) }

    /// A scratch directory (root only) with an empty chroot base `base` in it.
    func scratchWithBase(_ name: String) throws -> (scratch: ScratchDirectory, base: String) {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory(name)
        let base = scratch.file("base")
        mkdir(base, 0o755)
        return (scratch, base)
    }

    @Test("same filesystem: read-only images are hard linked and never re-owned; writable drives are per-VM copies")
    func sameFilesystem() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("same-fs")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let kernel = scratch.file("kernel.bin")
        let drive = scratch.file("rootfs.ext4")
        try writeFile(kernel, "kernel-bytes", mode: 0o644)
        try writeFile(drive, "drive-bytes", mode: 0o644)
        let kernelBefore = try statOf(kernel)
        let driveBefore = try statOf(drive)

        let layout = try layout(base: base)
        let stager = JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger)
        let staged = try stager.stage([
            .readOnly(FilePath(kernel), at: "/boot/vmlinux"),
            .writableCopy(FilePath(drive), at: "/drives/rootfs.ext4"),
            .emptyFile(at: "/logs/firecracker.log"),
            .fifo(at: "/logs/metrics.fifo"),
            .directory(at: "/snapshots"),
        ])
        #expect(staged.map(\.jailPath) == ["/boot/vmlinux", "/drives/rootfs.ext4", "/logs/firecracker.log", "/logs/metrics.fifo", "/snapshots"])
        #expect(staged.map(\.method) == [.hardLink, .sparseCopy, .created, .created, .created])

        // The kernel is the same inode, with the host's owner and mode untouched.
        let linked = try statOf(staged[0].hostPath.string)
        #expect(FileIdentity(linked) == FileIdentity(kernelBefore))
        #expect(linked.st_uid == 0 && linked.st_mode & 0o7777 == 0o644)
        #expect(try statOf(kernel).st_nlink == 2)

        // The writable drive is a separate inode owned by the VM user.
        let copy = try statOf(staged[1].hostPath.string)
        #expect(FileIdentity(copy) != FileIdentity(driveBefore))
        #expect(copy.st_uid == uid && copy.st_gid == gid && copy.st_mode & 0o7777 == 0o600)
        #expect(try readSmallFile(staged[1].hostPath.string) == "drive-bytes")

        let log = try statOf(staged[2].hostPath.string)
        #expect(log.st_uid == uid && log.st_mode & S_IFMT == S_IFREG && log.st_mode & 0o777 == 0o600)
        let fifo = try statOf(staged[3].hostPath.string)
        #expect(fifo.st_uid == uid && fifo.st_mode & S_IFMT == S_IFIFO)
        let directory = try statOf(staged[4].hostPath.string)
        #expect(directory.st_uid == uid && directory.st_mode & 0o777 == 0o700)
        // Intermediate directories are the VM user's too, so Firecracker can traverse them.
        #expect(try statOf(layout.rootDirectory.string + "/boot").st_uid == uid)
        // Nothing of what the jailer creates was pre-created.
        #expect(!exists(layout.rootDirectory.string + "/dev"))
        #expect(!exists(layout.rootDirectory.string + "/run"))
        #expect(!exists(layout.pidFile.string))

        // Staging over an existing path fails instead of replacing it.
        #expect(throws: JailError.self) { try stager.stage(.readOnly(FilePath(kernel), at: "/boot/vmlinux")) }
        #expect(throws: JailError.self) { try stager.stage(.emptyFile(at: "/dev/kvm")) }

        let report = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(report.isComplete, "\(report.failures)")
        #expect(report.removedJailDirectory)
        #expect(!exists(layout.jailDirectory.string))
        // The host files are untouched and no longer linked.
        for (path, before, content) in [(kernel, kernelBefore, "kernel-bytes"), (drive, driveBefore, "drive-bytes")] {
            let after = try statOf(path)
            #expect(after.st_uid == before.st_uid && after.st_gid == before.st_gid)
            #expect(after.st_mode == before.st_mode)
            #expect(after.st_nlink == 1)
            #expect(try readSmallFile(path) == content)
        }
        // Idempotent.
        let again = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(again.isComplete && !again.removedJailDirectory)
    }

    @Test("an image the VM user cannot read is reported, not re-owned; a read-only copy works")
    func unreadable() throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("unreadable")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let secret = scratch.file("secret.img")
        try writeFile(secret, "secret", mode: 0o600)
        let layout = try layout(base: base)
        let stager = JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger)
        #expect {
            _ = try stager.stage(.readOnly(FilePath(secret), at: "/secret.img"))
        } throws: { error in
            guard case JailError.stagedFileUnreadable(_, _, 123, 100, 0, 0, let mode) = error else { return false }
            return mode & 0o777 == 0o600 && (error as? JailError)?.hint.contains("never changes") == true
        }
        #expect(!exists(layout.rootDirectory.string + "/secret.img"))
        #expect(try statOf(secret).st_mode & 0o777 == 0o600)
        // A failed batch takes back what it staged.
        #expect(throws: JailError.self) {
            _ = try stager.stage([.emptyFile(at: "/logs/a.log"), .readOnly(FilePath(secret), at: "/secret.img")])
        }
        #expect(!exists(layout.rootDirectory.string + "/logs/a.log"))
        #expect(try statOf(secret).st_uid == 0)
        let copy = try stager.stage(.readOnlyCopy(FilePath(secret), at: "/secret.img"))
        let copied = try statOf(copy.hostPath.string)
        #expect(copied.st_uid == uid && copied.st_mode & 0o777 == 0o400)
        #expect(try statOf(secret).st_nlink == 1)
    }

    @Test("cross-filesystem staging onto tmpfs copies, keeping a sparse file sparse")
    func crossFilesystem() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("cross-fs")
        defer { scratch.remove() }
        let base = scratch.file("tmpfs-base")
        mkdir(base, 0o755)
        try mountTmpfs(at: base)
        defer { umount2(base, Int32(MNT_DETACH)) }

        // 16 MiB with 4 KiB of data at 0 and at 12 MiB; the rest is holes.
        let source = scratch.file("sparse.img")
        let size: off_t = 16 << 20
        let fd = open(source, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        #expect(fd >= 0)
        let block = [UInt8](repeating: 0xAB, count: 4096)
        _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, 0) }
        _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, 12 << 20) }
        ftruncate(fd, size)
        close(fd)
        let sourceStatus = try statOf(source)
        #expect(sourceStatus.st_blocks * 512 < 1 << 20, "the source must be sparse for this test to mean anything")

        let layout = try layout(base: base)
        let stager = JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger)
        let staged = try stager.stage([
            .readOnly(FilePath(source), at: "/images/ro.img"),
            .writableCopy(FilePath(source), at: "/images/rw.img"),
        ])
        #expect(staged.map(\.method) == [.sparseCopy, .sparseCopy])
        for item in staged {
            let copy = try statOf(item.hostPath.string)
            #expect(copy.st_size == size)
            #expect(copy.st_blocks * 512 < 1 << 20, "copy allocated \(copy.st_blocks * 512) bytes")
            #expect(FileIdentity(copy) != FileIdentity(sourceStatus))
            #expect(copy.st_uid == uid)
            // Same bytes where the data is, zeros elsewhere.
            let input = open(item.hostPath.string, O_RDONLY | O_CLOEXEC)
            defer { close(input) }
            var buffer = [UInt8](repeating: 0, count: 4096)
            for (offset, expected) in [(off_t(0), UInt8(0xAB)), (off_t(12 << 20), 0xAB), (off_t(4 << 20), 0), (size - 4096, 0)] {
                _ = buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, 4096, offset) }
                #expect(buffer.allSatisfy { $0 == expected }, "at \(offset)")
            }
        }
        #expect(try statOf(staged[0].hostPath.string).st_mode & 0o777 == 0o400)
        #expect(try statOf(staged[1].hostPath.string).st_mode & 0o777 == 0o600)
        #expect(try statOf(source).st_mode == sourceStatus.st_mode && (try statOf(source)).st_uid == 0)

        let report = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(report.isComplete, "\(report.failures)")
        #expect(!exists(layout.jailDirectory.string))
    }

    @Test("the last teardown removes the empty exec directory; VMs staged meanwhile make it again and lose nothing")
    func execDirectoryRace() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("exec-race")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let kernel = scratch.file("kernel.bin")
        try writeFile(kernel, "kernel-bytes", mode: 0o644)
        let host = emptyHost()
        // Four workers stage and tear down jails of their own ids under one base, so a
        // teardown that empties the exec directory races the others' staging.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<4 {
                group.addTask {
                    for round in 0..<150 {
                        let layout = try layout(base: base, id: "race-\(worker)-\(round)")
                        let stager = JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger)
                        let staged = try stager.stage([.readOnly(FilePath(kernel), at: "/kernel"), .fifo(at: "/firecracker.log")])
                        #expect(staged.count == 2)
                        let report = await JailTeardown.run(layout: layout, parentCgroup: "microvm", cgroupHost: host, logger: testLogger)
                        #expect(report.isComplete, "\(report.failures)")
                    }
                }
            }
            try await group.waitForAll()
        }
        #expect(!exists(base + "/firecracker"), "the last teardown leaves the chroot base as it found it")
        #expect(exists(base))
    }

    @Test("a stale jail is removed before a launch; a pid of another process does not make it live")
    func staleJail() async throws {
        let (scratch, base) = try scratchWithBase("stale")
        defer { scratch.remove() }
        let layout = try layout(base: base)
        // What a crashed jailed run leaves: device nodes, run/, the binary copy, a pid file.
        let root = layout.rootDirectory.string
        _ = try HostCommand.run("/bin/mkdir", ["-p", root + "/dev/net", root + "/run"])
        #expect(mknod(root + "/dev/kvm", S_IFCHR | 0o600, makedevice(10, 232)) == 0)
        try writeFile(root + "/firecracker", "not really firecracker", mode: 0o755)
        // A dead pid, then our own (live, but not the jail's) pid.
        let dead = try HostCommand.spawn("/bin/true", [], stdout: 1, stderr: 2).pid
        _ = try HostCommand.wait(dead)
        try writeFile(layout.pidFile.string, "\(dead)")
        #expect(JailTeardown.occupancy(of: layout) == .stale(pid: dead))
        try writeFile(layout.pidFile.string, "\(getpid())")
        #expect(JailTeardown.occupancy(of: layout) == .stale(pid: getpid()))
        #expect(JailedVMM.identify(pid: getpid(), layout: layout) == .foreign)

        try await JailTeardown.prepareForLaunch(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(!exists(layout.jailDirectory.string))
        #expect(JailTeardown.occupancy(of: layout) == .absent)
        // We are still alive: the foreign pid was not signalled.
        #expect(JailedVMM(pid: getpid(), layout: layout).isAlive)
    }

    @Test("an unjailed VM's directory is torn down without cgroups; a stale jail in its place still loses its cgroups")
    func unjailedTeardown() async throws {
        let (scratch, base) = try scratchWithBase("unjailed")
        defer { scratch.remove() }
        let jail = try layout(base: base)
        let unjailed = jail.with(kind: .directory)
        // A cgroup directory of the id (plain directories standing in for a v1 hierarchy).
        let hierarchy = scratch.file("cgroup-pids")
        let cgroup = hierarchy + "/parent/" + jail.id.rawValue
        _ = try HostCommand.run("/bin/mkdir", ["-p", cgroup])
        let host = CgroupHost(v1Mounts: [CgroupMount(directory: hierarchy, version: .v1, controllers: ["pids"])], v2Mount: nil, defaultVersion: .v1)

        _ = try HostCommand.run("/bin/mkdir", ["-p", unjailed.rootDirectory.string + "/drives"])
        try writeFile(unjailed.rootDirectory.string + "/kernel", "k")
        let report = await JailTeardown.run(layout: unjailed, parentCgroup: "parent", cgroupHost: host, logger: testLogger)
        #expect(report.isComplete && report.removedJailDirectory && report.removedCgroups.isEmpty, "\(report)")
        #expect(!exists(unjailed.jailDirectory.string) && !exists(base + "/firecracker"))
        #expect(exists(cgroup), "no jailer made it: not the unjailed VM's to remove")

        // A stale jail where an unjailed VM is about to start is judged as a jail.
        _ = try HostCommand.run("/bin/mkdir", ["-p", jail.rootDirectory.string])
        try await JailTeardown.prepareForLaunch(layout: unjailed, parentCgroup: "parent", cgroupHost: host, logger: testLogger)
        #expect(!exists(jail.jailDirectory.string))
        #expect(!exists(cgroup), "the stale jail's cgroup is removed")
    }

    @Test("a jail used by a live process is refused, then teardown stops and reaps it")
    func liveJail() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("live")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let layout = try layout(base: base, exec: "firecracker-v1.12.1")
        let stager = JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger)
        _ = try stager.stage(.directory(at: "/data"))
        // Like the jailer: a copy of the binary in the jail, running, its pid in the pid file.
        #expect(try HostCommand.run("/bin/cp", ["/bin/sleep", layout.executableCopy.string]).termination == .exited(0))
        let pid = try HostCommand.spawn(layout.executableCopy.string, ["30"], stdout: 1, stderr: 2).pid
        var reaped = false
        defer { if !reaped { kill(pid, SIGKILL); _ = try? HostCommand.wait(pid) } }
        try writeFile(layout.pidFile.string, "\(pid)")
        // exec is done once /proc/PID/exe is the copy.
        for _ in 0..<500 where JailedVMM.identify(pid: pid, layout: layout) != .jailed { usleep(2000) }

        #expect(JailTeardown.occupancy(of: layout) == .live(pid: pid))
        await #expect(throws: JailError.jailBusy(id: layout.id.rawValue, pid: pid, jailDirectory: layout.jailDirectory.string)) {
            try await JailTeardown.prepareForLaunch(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        }
        #expect(exists(layout.executableCopy.string), "a busy jail is left alone")

        let report = await JailTeardown.run(
            layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(),
            options: TeardownOptions(grace: .seconds(2)), logger: testLogger)
        reaped = true
        #expect(report.isComplete, "\(report.failures)")
        // Not a PID-namespace init, so SIGTERM ends it; we are its parent, so we reaped it.
        #expect(report.stopped == [.stopped(pid: pid, signal: SIGTERM, termination: .signaled(SIGTERM))])
        #expect(JailedVMM.processState(pid) == nil)
        #expect(!exists(layout.jailDirectory.string))
    }

    @Test("teardown never follows a symlink out of the jail")
    func symlinks() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("symlink")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let outside = scratch.file("outside")
        mkdir(outside, 0o755)
        try writeFile(outside + "/precious.txt", "keep me")
        let layout = try layout(base: base)
        _ = try JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger).stage(.directory(at: "/data"))
        let root = layout.rootDirectory.string
        // What a hostile VM user could plant in its own jail.
        #expect(symlink(outside, root + "/data/escape-dir") == 0)
        #expect(symlink(outside + "/precious.txt", root + "/escape-file") == 0)
        #expect(symlink("../../../../outside", root + "/relative-escape") == 0)

        let report = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(report.isComplete, "\(report.failures)")
        #expect(!exists(layout.jailDirectory.string))
        #expect(try readSmallFile(outside + "/precious.txt") == "keep me")

        // The exec directory itself replaced by a symlink: refused, the target survives.
        let other = try self.layout(base: base, exec: "firecracker-evil")
        #expect(symlink(outside, other.execDirectory.string) == 0)
        mkdir(outside + "/" + other.id.rawValue, 0o755)
        try writeFile(outside + "/" + other.id.rawValue + "/file", "keep me too")
        let refused = await JailTeardown.run(layout: other, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(!refused.isComplete)
        #expect(refused.failures.contains { if case .unsafeJailPath = $0 { true } else { false } })
        #expect(try readSmallFile(outside + "/" + other.id.rawValue + "/file") == "keep me too")
    }

    @Test("teardown leaves a mount point inside the jail alone and reports it")
    func mountInsideJail() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("mount")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let layout = try layout(base: base)
        let staged = try JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger).stage(.directory(at: "/mnt"))
        try mountTmpfs(at: staged.hostPath.string)
        try writeFile(staged.hostPath.string + "/inside-mount", "x")
        let report = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(report.failures.contains { if case .unsafeJailPath(let path, _) = $0 { path.hasSuffix("/root/mnt") } else { false } })
        #expect(exists(staged.hostPath.string + "/inside-mount"))
        umount2(staged.hostPath.string, Int32(MNT_DETACH))
        let again = await JailTeardown.run(layout: layout, parentCgroup: "unused", cgroupHost: emptyHost(), logger: testLogger)
        #expect(again.isComplete, "\(again.failures)")
        #expect(!exists(layout.jailDirectory.string))
    }

    @Test("teardown removes the VM's cgroups in every hierarchy, after killing the process inside")
    func cgroups() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let host = try CgroupHost.detect()
        let version = try #require(host.defaultVersion)
        let scratch = ScratchDirectory("cgroups")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let parent = uniqueName("microvm-test")
        let layout = try layout(base: base)
        defer {
            for mount in host.v1Mounts + (host.v2Mount.map { [$0] } ?? []) {
                rmdir("\(mount.directory)/\(parent)/\(layout.id.rawValue)")
            }
            removeParentCgroups(parent, host: host)
        }

        // The directories the jailer would make for cpu, memory and pids limits.
        let settings = [CgroupSetting("pids.max", "8"), CgroupSetting("memory.max", "100000000"), CgroupSetting("cpu.max", "max")]
        let v1Settings = [CgroupSetting("pids.max", "8"), CgroupSetting("memory.limit_in_bytes", "100000000"), CgroupSetting("cpu.shares", "512")]
        let directories = host.cgroupDirectories(
            version: version, parent: parent, id: layout.id, settings: version == .v1 ? v1Settings : settings)
        #expect(!directories.isEmpty)
        for directory in directories {
            _ = try HostCommand.run("/bin/mkdir", ["-p", directory])
            #expect(exists(directory))
        }
        // A "VMM" inside the jail and inside the first cgroup: rmdir is EBUSY until it is gone.
        _ = try JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger).stage(.directory(at: "/data"))
        #expect(try HostCommand.run("/bin/cp", ["/bin/sleep", layout.executableCopy.string]).termination == .exited(0))
        let pid = try HostCommand.spawn(layout.executableCopy.string, ["30"], stdout: 1, stderr: 2).pid
        var reaped = false
        defer { if !reaped { kill(pid, SIGKILL); _ = try? HostCommand.wait(pid) } }
        try writeFile(directories[0] + "/cgroup.procs", "\(pid)")
        try writeFile(layout.pidFile.string, "\(pid)")
        #expect(rmdir(directories[0]) != 0 && errno == EBUSY)

        let report = await JailTeardown.run(layout: layout, parentCgroup: parent, cgroupHost: host, logger: testLogger)
        reaped = true
        #expect(report.isComplete, "\(report.failures)")
        #expect(report.stopped.count == 1)
        #expect(Set(report.removedCgroups) == Set(directories))
        for directory in directories { #expect(!exists(directory), "\(directory)") }
        #expect(!exists(layout.jailDirectory.string))
    }

    @Test("the pid file is awaited until its deadline")
    func pidFile() async throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("pidfile")
        defer { scratch.remove() }
        let base = scratch.file("base")
        mkdir(base, 0o755)
        let layout = try layout(base: base)
        _ = try JailStager(layout: layout, uid: uid, gid: gid, logger: testLogger).stage(.directory(at: "/d"))
        let clock = ContinuousClock()
        let start = clock.now
        await #expect(throws: JailError.self) { try await JailedVMM.waitForPIDFile(layout: layout, timeout: .milliseconds(100)) }
        #expect(clock.now - start >= .milliseconds(100))

        let path = layout.pidFile.string
        let writer = Task {
            try await Task.sleep(for: .milliseconds(50))
            try writeFile(path, "")  // created empty first, as the jailer does
            try await Task.sleep(for: .milliseconds(20))
            try writeFile(path, "4242")
        }
        let process = try await JailedVMM.waitForPIDFile(layout: layout, timeout: .seconds(5))
        try await writer.value
        #expect(process.pid == 4242)
        try writeFile(path, "garbage")
        #expect(throws: JailError.pidFileInvalid(id: layout.id.rawValue, path: path, contents: "garbage")) {
            try JailedVMM.readPIDFile(layout: layout)
        }
    }

    @Test("preflight finds the missing pieces and names them")
    func preflight() throws {
        try HostPrerequisite.require(HostPrerequisite.isRoot, "root")
        let scratch = ScratchDirectory("preflight")
        defer { scratch.remove() }
        let noexec = scratch.file("noexec")
        mkdir(noexec, 0o755)
        try mountTmpfs(at: noexec, flags: UInt(MS_NOEXEC))
        defer { umount2(noexec, Int32(MNT_DETACH)) }
        let configuration = JailerConfiguration(
            jailerBinary: FilePath(scratch.file("no-jailer")), firecrackerBinary: FilePath(scratch.file("no-firecracker")),
            chrootBase: FilePath(noexec))
        let report = SandboxPreflight.check(configuration: configuration, kvmDevice: scratch.file("no-kvm"))
        #expect(!report.isReady)
        #expect(report.problems.contains(.jailerMissing(path: scratch.file("no-jailer"), reason: "no such file")))
        #expect(report.problems.contains(.firecrackerMissing(path: scratch.file("no-firecracker"), reason: "no such file")))
        #expect(report.problems.contains { if case .chrootBaseUnusable(_, let reason) = $0 { reason.contains("noexec") } else { false } })
        #expect(report.problems.contains { if case .kvmUnavailable = $0 { true } else { false } })

        // A missing chroot base is created.
        let created = scratch.file("new/base")
        #expect(SandboxPreflight.chrootBaseProblem(created, create: true) == nil)
        #expect(exists(created))
        #expect(throws: JailError.self) {
            _ = try SandboxPolicy.required.decide(report, logger: testLogger)
        }
    }
}

/// glibc's makedev as a function (the macro does not import).
func makedevice(_ major: UInt32, _ minor: UInt32) -> dev_t {
    let major = UInt64(major)
    let minor = UInt64(minor)
    return dev_t(((major & 0xffff_f000) << 32) | ((major & 0x0000_0fff) << 8) | ((minor & 0xffff_ff00) << 12) | (minor & 0xff))
}
