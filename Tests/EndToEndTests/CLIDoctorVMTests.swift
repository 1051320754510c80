import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm doctor VM-ID`, the limits check on running VMs, `doctor --bundle` and `stats` with
/// Firecracker's metrics: on fake records and cgroup trees, and on VMs that really fail.
@Suite("microvm doctor VM-ID, limits, bundle, stats metrics", .serialized)
struct CLIDoctorVMTests {
    typealias Checks = [String: [String: Any]]

    static func doctor(_ arguments: [String]) async throws -> (status: Int32, checks: Checks, result: CLI.Result) {
        let result = try await CLI.run(["doctor", "--json"] + arguments)
        let body = try #require(try result.json() as? [String: Any], "\(result)")
        let list = try #require(body["checks"] as? [[String: Any]])
        var checks: Checks = [:]
        for check in list { checks[check["check"] as? String ?? "?"] = check }
        return (result.status, checks, result)
    }

    static func expect(
        _ checks: Checks, _ name: String, _ state: String, seen: String? = nil, fix: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let check = checks[name]
        #expect(check?["status"] as? String == state, "\(name): \(check ?? [:]) in \(checks.keys.sorted())", sourceLocation: sourceLocation)
        if let seen { #expect((check?["seen"] as? String)?.contains(seen) == true, "\(name) seen: \(check?["seen"] ?? "none")", sourceLocation: sourceLocation) }
        if let fix { #expect((check?["fix"] as? String)?.contains(fix) == true, "\(name) fix: \(check?["fix"] ?? "none")", sourceLocation: sourceLocation) }
        if state != "ok" { #expect(check?["why"] as? String != nil, "\(name) says why", sourceLocation: sourceLocation) }
    }

    /// Writes `record` where a driver would (`<state>/<id>/state.json`).
    static func write(_ record: VMRecord, state: String) throws {
        let directory = state + "/" + record.id
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        try encoder.encode(record).write(to: URL(fileURLWithPath: directory + "/state.json"))
    }

    static func fakeRecord(
        id: String, spec: VMSpec, pid: Int32?, startTime: UInt64? = nil, sandboxed: Bool = true, directory: String = "/",
        cgroups: [String] = [], state: VMState = .running
    ) -> VMRecord {
        VMRecord(
            id: id, spec: spec, state: state, pid: pid, processStartTime: startTime, sandboxed: sandboxed, directory: directory,
            jailDirectory: "/nonexistent/jails/firecracker/\(id)", chrootBase: "/nonexistent/jails", execFileName: "firecracker",
            parentCgroup: "microvm", cgroupDirectories: cgroups, apiSocket: "/nonexistent/jails/firecracker/\(id)/root/run/firecracker.socket",
            firecrackerBinary: "/usr/bin/firecracker", driverPID: 1 << 22 - 7, driverStartTime: 1, createdAt: Date(timeIntervalSinceNow: -60))
    }

    static func file(_ root: String, _ path: String, _ text: String) throws {
        try FileManager.default.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: root + path, atomically: true, encoding: .utf8)
    }

    // MARK: Fake records

    @Test("doctor of an unknown id exits 5 (not-found, also as JSON)")
    func unknownVM() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let text = try await CLI.run(["doctor", "nope", "--state-dir", directory + "/state"])
            #expect(text.status == 5 && text.stderr.contains("no such VM"), "\(text)")
            let json = try await CLI.run(["doctor", "nope", "--json", "--state-dir", directory + "/state"])
            let error = (try JSONSerialization.jsonObject(with: Data(json.stderr.utf8)) as? [String: Any])?["error"] as? [String: Any]
            #expect(json.status == 5 && error?["kind"] as? String == "not-found", "\(json)")
        }
    }

    @Test("Fake post-mortems: seccomp kill (148), kernel not an ELF, triple fault, KVM permission, cgroup failure, stale jail, OOM kill of a dead VM; each with its fix")
    func fakeFailures() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let state = directory + "/state"
            let store = StateStore(root: .init(state))
            let kernel = directory + "/vmlinux"
            // A real ELF64 x86-64 header, so only the cases that are about the kernel blame it.
            var header = [UInt8](repeating: 0, count: 64)
            header[0...3] = [0x7f, 0x45, 0x4c, 0x46]
            header[4] = 2
            header[18] = 0x3e
            try Data(header).write(to: URL(fileURLWithPath: kernel))
            let text = directory + "/not-a-kernel"
            try "hello, I am text\n".write(toFile: text, atomically: true, encoding: .utf8)
            func spec(_ id: String, kernel: String) -> VMSpec { VMSpec(id: id, machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: kernel)) }

            try store.writePostMortem(
                PostMortem(
                    id: "seccomp", outcome: .ended, message: "VM seccomp ended uncleanly",
                    exitReason: ExitReason(kind: .seccompViolation, exit: .exited(code: 148), evidence: ["Shutting down VM after intercepting a bad syscall (41)."]),
                    spec: spec("seccomp", kernel: kernel)))
            var (status, checks, result) = try await Self.doctor(["seccomp", "--state-dir", state])
            #expect(status == 3, "\(result)")
            Self.expect(checks, "exit-reason", "fail", seen: "148", fix: "dmesg | grep")
            Self.expect(checks, "state", "fail", seen: "ended uncleanly")
            Self.expect(checks, "files", "ok")

            try store.writePostMortem(
                PostMortem(
                    id: "badkernel", outcome: .createFailed, step: "waiting for Firecracker's API", message: "create failed",
                    exitReason: ExitReason(kind: .vmmError, exit: .exited(code: 148), evidence: ["Firecracker panicked at src/firecracker/src/api_server/mod.rs:174:63:"]),
                    spec: spec("badkernel", kernel: text)))
            (status, checks, result) = try await Self.doctor(["badkernel", "--state-dir", state])
            Self.expect(checks, "kernel", "fail", seen: "is not an ELF file", fix: "file \(text)")
            Self.expect(checks, "exit-reason", "fail", fix: "microvm run --kernel")
            #expect(checks["api-socket"] == nil, "Firecracker exited: the socket is not the cause: \(result.stdout)")

            try store.writePostMortem(
                PostMortem(
                    id: "triple", outcome: .ended, message: "ended",
                    exitReason: ExitReason(kind: .tripleFault, exit: .exited(code: 0), evidence: ["Received KVM_EXIT_SHUTDOWN signal"]),
                    spec: spec("triple", kernel: kernel)))
            (_, checks, _) = try await Self.doctor(["triple", "--state-dir", state])
            Self.expect(checks, "exit-reason", "fail", seen: "triple-fault", fix: "earlyprintk=serial")

            try store.writePostMortem(
                PostMortem(
                    id: "lazy", outcome: .ended, message: "ended",
                    exitReason: ExitReason(
                        kind: .lazyMemoryFailed, exit: .signaled(signal: 9),
                        evidence: ["lazy memory: serving page faults /srv/jailer/firecracker/lazy/root/uffd.sock: Bad address (populating the page at 0x7f0000000000)"]),
                    spec: spec("lazy", kernel: kernel)))
            (_, checks, _) = try await Self.doctor(["lazy", "--state-dir", state])
            Self.expect(checks, "exit-reason", "fail", seen: "lazy-memory-failed", fix: "intact snapshot")

            try store.writePostMortem(
                PostMortem(
                    id: "kvmperm", outcome: .createFailed, step: "starting Firecracker", message: "create failed",
                    exitReason: ExitReason(kind: .vmmError, exit: .exited(code: 1), evidence: ["Error creating KVM object: Permission denied (os error 13) opening /dev/kvm"]),
                    spec: spec("kvmperm", kernel: kernel)))
            (_, checks, _) = try await Self.doctor(["kvmperm", "--state-dir", state])
            Self.expect(checks, "kvm-permission", "fail", fix: "/dev/kvm")

            try store.writePostMortem(
                PostMortem(id: "cgroupfail", outcome: .createFailed, step: "starting Firecracker", message: "jailer: Failed to write to cgroup file cpuset.cpus: No space left on device"))
            (_, checks, _) = try await Self.doctor(["cgroupfail", "--state-dir", state])
            Self.expect(checks, "cgroups", "fail", fix: "cpuset.mems")

            try store.writePostMortem(PostMortem(id: "stale", outcome: .createFailed, step: "starting Firecracker", message: "jailer: Failed to create dev/kvm: File exists (os error 17)"))
            (_, checks, _) = try await Self.doctor(["stale", "--state-dir", state])
            Self.expect(checks, "stale-jail", "fail", fix: "microvm gc --state-dir \(state)")

            // A dead VM (its pid is gone) whose memory cgroup counted an OOM kill (v1 names).
            let root = directory + "/host"
            let cgroup = "/sys/fs/cgroup/memory/microvm/oom"
            try Self.file(root, cgroup + "/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
            try Self.file(root, cgroup + "/memory.limit_in_bytes", "83886080\n")
            try Self.write(Self.fakeRecord(id: "oom", spec: spec("oom", kernel: kernel), pid: 1 << 22 - 3, startTime: 1, cgroups: [cgroup]), state: state)
            (status, checks, result) = try await Self.doctor(["oom", "--state-dir", state, "--host-root", root])
            #expect(status == 3, "\(result)")
            Self.expect(checks, "process", "fail", seen: "is gone", fix: "microvm rm oom --state-dir \(state)")
            Self.expect(checks, "memory-limit", "fail", seen: "oom_kill 1", fix: "--memory-limit")
            Self.expect(checks, "leftovers", "warn", seen: cgroup)
            Self.expect(checks, "exit-reason", "warn", fix: "per-VM monitor")
            let plain = try await CLI.run(["doctor", "oom", "--state-dir", state, "--host-root", root])
            #expect(plain.stdout.contains("[FAIL] memory-limit:") && plain.stdout.contains("       fix: "), "\(plain)")
        }
    }

    // MARK: Limits enforced

    /// This test process stands in for a live VM (pid and start time; unjailed: its working
    /// directory), so the limits check runs against a fake cgroup tree under --host-root.
    static func liveRecord(id: String, limits: VMSpec.LimitsSpec, cgroups: [String]) -> VMRecord {
        var spec = VMSpec(id: id, machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: "/nonexistent/vmlinux"))
        spec.limits = limits
        return fakeRecord(
            id: id, spec: spec, pid: getpid(), startTime: ProcFS.startTime(of: getpid()), sandboxed: true, directory: "/", cgroups: cgroups)
    }

    @Test("Limits on a running VM, cgroup v2 names (cpu.max, memory.max, pids.max, cpuset.cpus): a mismatch fails with the echo that fixes it; matching files pass")
    func limitsV2() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let state = directory + "/state", root = directory + "/host"
            try Self.file(root, "/proc/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n")
            try Self.file(root, "/sys/devices/system/cpu/online", "0-3\n")
            try Self.file(root, "/sys/devices/system/node/online", "0\n")
            let cgroup = "/sys/fs/cgroup/microvm/lim2"
            try Self.file(root, cgroup + "/cpu.max", "50000 100000\n")
            try Self.file(root, cgroup + "/memory.max", "209715200\n")  // 200 MiB, the record asks 100
            try Self.file(root, cgroup + "/pids.max", "max\n")  // the record asks 16
            try Self.file(root, cgroup + "/cpuset.cpus", "1-2\n")
            try Self.file(root, cgroup + "/cgroup.procs", "\(getpid())\n")
            try Self.write(Self.liveRecord(id: "lim2", limits: .init(cpus: 0.5, memoryMiB: 100, pids: 16, cpuset: [1, 2]), cgroups: [cgroup]), state: state)

            var (status, checks, result) = try await Self.doctor(["--host-root", root, "--state-dir", state])
            #expect(status == 3, "\(result)")
            Self.expect(checks, "limits-enforced", "fail", seen: "memory.max is '209715200', the record asks 104857600", fix: "echo '104857600' > \(cgroup)/memory.max")
            Self.expect(checks, "limits-enforced", "fail", seen: "pids.max is 'max'", fix: "echo '16' > \(cgroup)/pids.max")
            (_, checks, _) = try await Self.doctor(["lim2", "--host-root", root, "--state-dir", state])
            Self.expect(checks, "limits-enforced", "fail", fix: "echo '16' > \(cgroup)/pids.max")
            Self.expect(checks, "process", "ok")

            try Self.file(root, cgroup + "/memory.max", "104857600\n")
            try Self.file(root, cgroup + "/pids.max", "16\n")
            (status, checks, result) = try await Self.doctor(["--host-root", root, "--state-dir", state])
            Self.expect(checks, "limits-enforced", "ok", seen: "cpu.max=50000 100000")
            #expect((checks["limits-enforced"]?["seen"] as? String)?.contains("cpuset.cpus=1-2") == true, "\(checks["limits-enforced"] ?? [:])")

            // The VMM outside its cgroup.
            try Self.file(root, cgroup + "/cgroup.procs", "1\n")
            (_, checks, _) = try await Self.doctor(["--host-root", root, "--state-dir", state])
            Self.expect(checks, "limits-enforced", "fail", seen: "is not in \(cgroup)", fix: "echo \(getpid()) > \(cgroup)/cgroup.procs")
        }
    }

    @Test("Limits on a running VM, cgroup v1 names (cpu.cfs_quota_us, memory.limit_in_bytes page-rounded, pids.max): a missing hierarchy directory fails")
    func limitsV1() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let state = directory + "/state", root = directory + "/host"
            try Self.file(
                root, "/proc/mounts",
                "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\ncgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n")
            try Self.file(root, "/sys/devices/system/cpu/online", "0-3\n")
            let cpu = "/sys/fs/cgroup/cpu,cpuacct/microvm/lim1", memory = "/sys/fs/cgroup/memory/microvm/lim1", pids = "/sys/fs/cgroup/pids/microvm/lim1"
            try Self.file(root, cpu + "/cpu.cfs_period_us", "100000\n")
            try Self.file(root, cpu + "/cpu.cfs_quota_us", "100000\n")
            try Self.file(root, memory + "/memory.limit_in_bytes", "104857600\n")
            try Self.write(Self.liveRecord(id: "lim1", limits: .init(cpus: 1, memoryMiB: 100, pids: 16), cgroups: [cpu, memory, pids]), state: state)
            var (_, checks, _) = try await Self.doctor(["lim1", "--host-root", root, "--state-dir", state])
            Self.expect(checks, "limits-enforced", "fail", seen: "pids.max is in none of", fix: "microvm stop lim1")
            try Self.file(root, pids + "/pids.max", "16\n")
            (_, checks, _) = try await Self.doctor(["lim1", "--host-root", root, "--state-dir", state])
            Self.expect(checks, "limits-enforced", "ok", seen: "cgroup v1")
            #expect((checks["limits-enforced"]?["seen"] as? String)?.contains("cpu.cfs_quota_us=100000") == true)
            #expect((checks["limits-enforced"]?["seen"] as? String)?.contains("memory.limit_in_bytes=104857600") == true)
        }
    }

    // MARK: Bundle

    @Test("doctor --bundle: a .tar.gz with versions, cgroup mounts, cmdline, the checks (text and JSON), records and post-mortems; no planted secret")
    func bundle() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let state = directory + "/state"
            let secrets = ["s3cr3t-mmds-VALUE-4711", "tok3nPLANTEDabcdefghij0123", "hunter2-planted-password", "env-secret-9f8e7d"]
            var spec = VMSpec(
                id: "secretive", machine: .init(vcpus: 1, memoryMiB: 64),
                boot: .init(kernel: "/nonexistent/vmlinux", args: ["console=ttyS0", "api_token=\(secrets[1])", "root=/dev/vda"]))
            spec.mmds = MMDSSpec(networkInterfaces: ["eth0"], metadata: .object(["latest": .object(["token": .string(secrets[0])])]))
            try Self.write(Self.fakeRecord(id: "secretive", spec: spec, pid: 1 << 22 - 5, startTime: 1), state: state)
            try StateStore(root: .init(state)).writePostMortem(
                PostMortem(
                    id: "failed-one", outcome: .ended, message: "ended",
                    exitReason: ExitReason(kind: .vmmError, exit: .exited(code: 1), evidence: ["config: password=\(secrets[2]) refused"]), spec: spec))
            let file = directory + "/bundle.tar.gz"
            let result = try await CLI.run(["doctor", "--bundle", file, "--state-dir", state], environment: ["MICROVM_PLANTED_SECRET": secrets[3]])
            #expect(FileManager.default.fileExists(atPath: file), "\(result)")
            let out = directory + "/out"
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            let untar = try await Subprocess.run(.name("tar"), arguments: ["-xzf", file, "-C", out], output: .discarded, error: .string(limit: 1 << 16))
            #expect(untar.terminationStatus.isSuccess, "\(untar.standardError)")
            let top = out + "/microvm-doctor"
            for name in [
                "versions.txt", "cgroup-mounts.txt", "cmdline.txt", "doctor.txt", "doctor.json", "README.txt", "vms/secretive.state.json",
                "vms/secretive.doctor.txt", "vms/failed-one.postmortem.json",
            ] {
                #expect(FileManager.default.fileExists(atPath: top + "/" + name), "\(name) in the bundle")
            }
            let versions = (try? String(contentsOfFile: top + "/versions.txt", encoding: .utf8)) ?? ""
            #expect(versions.contains("microvm: ") && versions.contains("kernel: "), "\(versions)")
            let mounts = (try? String(contentsOfFile: top + "/cgroup-mounts.txt", encoding: .utf8)) ?? ""
            #expect(mounts.contains("cgroup"), "\(mounts)")
            let checks = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: top + "/doctor.json"))) as? [String: Any]
            #expect((checks?["checks"] as? [Any])?.isEmpty == false)
            var everything = ""
            for path in FileManager.default.subpaths(atPath: top) ?? [] {
                everything += (try? String(contentsOfFile: top + "/" + path, encoding: .utf8)) ?? ""
            }
            for secret in secrets { #expect(!everything.contains(secret), "secret \(secret) in the bundle") }
            #expect(everything.contains("api_token=<redacted>") && everything.contains("root=/dev/vda"), "boot args: values of secrets redacted, others kept")
            #expect(everything.contains("\"metadata\" : \"<redacted>\"") || everything.contains("\"metadata\": \"<redacted>\""), "MMDS contents left out")
        }
    }

    // MARK: Real VMs

    @Test("A kernel that is not a kernel: run refuses it before anything is made (2), naming the fix; a triple-faulting guest: doctor ID says triple fault", .enabled(if: EndToEnd.enabled))
    func realFailures() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-doc-fail") { configuration, assets, directory in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let notKernel = directory + "/not-a-kernel"
                try "#!/bin/sh\necho I am not a kernel\n".write(toFile: notKernel, atomically: true, encoding: .utf8)
                let id = "doc-kernel-\(getpid())"
                // Refused from its first bytes, before anything is made: a usage error naming the
                // field and the fix, no VM, no post-mortem.
                let run = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets) + ["--kernel", notKernel])
                #expect(run.status == 2, "\(run)")
                #expect(run.stderr.contains("boot.kernel: \(notKernel) is not an ELF file (it starts with 23 21 2f 62"), "\(run)")
                #expect(run.stderr.contains("scripts/extract-vmlinux"), "\(run)")
                #expect(configuration.stateStore.postMortems().isEmpty)

                let triple = "doc-triple-\(getpid())"
                let crashed = try await CLI.run(["run", "--no-stdin", "--id", triple] + CLI.vmFlags(configuration, assets) + ["--boot-arg", "microvm.mode=triple-fault"])
                #expect(crashed.status == 4, "\(crashed)")
                let (status, checks, result) = try await Self.doctor([triple] + flags)
                #expect(status == 3, "\(result)")
                Self.expect(checks, "exit-reason", "fail", seen: "KVM_EXIT_SHUTDOWN", fix: "earlyprintk=serial")
                #expect(checks["kernel"] == nil || checks["kernel"]?["status"] as? String == "ok")
                #expect(MicroVM.list(configuration: configuration).isEmpty)

                // rm clears the post-mortems, and with the last one their directory.
                let removed = try await CLI.run(["rm", triple] + flags)
                #expect(removed.status == 0 && removed.lines == [triple], "\(removed)")
                #expect(configuration.stateStore.postMortems().isEmpty)
                #expect(!FileManager.default.fileExists(atPath: configuration.stateStore.postMortemDirectory.string))
                #expect(try await CLI.run(["rm", id] + flags).status == 5, "nothing is left of it")
            }
        }
    }

    @Test("A running jailed VM: doctor ID (process, API socket, limits with v1/v2 names ok), stats with and without Firecracker's metrics; a limit changed behind its back fails; killed from outside: process gone, its monitor saw the kill, rm", .enabled(if: EndToEnd.enabled))
    func realRunningVM() async throws {
        try await EndToEnd.withDriver(.required, name: "cli-doc-live") { configuration, assets, _ in
            try await CLI.cleaningUp(configuration) {
                let flags = CLI.driverFlags(configuration)
                let id = "doc-live-\(getpid())", metered = "doc-metrics-\(getpid())"
                let started = try await CLI.run(["run", "-d", "--id", id] + CLI.vmFlags(configuration, assets) + ["--memory-limit", "100", "--pids", "16", "--cpus", "0.5"])
                #expect(started.status == 0, "\(started)")
                let withMetrics = try await CLI.run(["run", "-d", "--id", metered, "--metrics"] + CLI.vmFlags(configuration, assets))
                #expect(withMetrics.status == 0, "\(withMetrics)")

                var (status, checks, result) = try await Self.doctor([id] + flags)
                #expect(status == 0, "\(result)")
                Self.expect(checks, "process", "ok")
                Self.expect(checks, "api-socket", "ok", seen: "answers")
                Self.expect(checks, "limits-enforced", "ok", seen: "pids.max=16")
                let host = try await Self.doctor(["--chroot-base", configuration.jailer.chrootBase.string, "--firecracker", assets.firecracker, "--jailer", assets.jailer] + flags)
                Self.expect(host.checks, "limits-enforced", "ok", seen: id)

                // stats: no metrics configured is said, not left out; configured: Firecracker's counters.
                let plain = try await CLI.run(["stats", id, "--json"] + flags)
                let plainFigures = try #require(try plain.json() as? [String: Any], "\(plain)")
                let none = try #require(plainFigures["firecracker_metrics"] as? [String: Any], "\(plain)")
                #expect(none["configured"] as? Bool == false && (none["note"] as? String)?.contains("--metrics") == true, "\(none)")
                let table = try await CLI.run(["stats", id] + flags)
                #expect(table.stdout.contains("firecracker metrics: no metrics configured"), "\(table)")
                let stats = try await CLI.run(["stats", metered, "--json"] + flags)
                let figures = try #require(try stats.json() as? [String: Any], "\(stats)")
                let metrics = try #require(figures["firecracker_metrics"] as? [String: Any], "\(stats)")
                #expect(metrics["configured"] as? Bool == true && (metrics["lines"] as? Int ?? 0) >= 1, "\(metrics)")
                #expect(metrics["vcpu_exits"] as? Int != nil && metrics["totals"] as? [String: Any] != nil, "\(metrics)")
                let meteredTable = try await CLI.run(["stats", metered] + flags)
                #expect(meteredTable.stdout.contains("VCPU EXITS") && meteredTable.stdout.contains("firecracker metrics: totals of"), "\(meteredTable)")

                // A limit changed behind the VM's back (real v1 or v2 file names).
                let record = try #require(MicroVM.list(configuration: configuration).first { $0.id == id }?.record)
                let pidsFile = try #require(record.cgroupDirectories.map { $0 + "/pids.max" }.first { FileManager.default.fileExists(atPath: $0) })
                try "20\n".write(toFile: pidsFile, atomically: false, encoding: .utf8)
                (status, checks, result) = try await Self.doctor([id] + flags)
                #expect(status == 3, "\(result)")
                Self.expect(checks, "limits-enforced", "fail", seen: "is '20', the record asks 16", fix: "echo '16' > \(pidsFile)")

                // Killed from outside while nothing was attached.
                let pid = try #require(record.pid)
                kill(pid, SIGKILL)
                try await Task.sleep(for: .milliseconds(300))
                (status, checks, result) = try await Self.doctor([id] + flags)
                #expect(status == 3, "\(result)")
                Self.expect(checks, "process", "fail", seen: "is gone", fix: "microvm rm \(id)")
                Self.expect(checks, "leftovers", "warn", seen: record.jailDirectory)
                // The VM's monitor saw the SIGKILL: the reason is known, not lost.
                Self.expect(checks, "exit-reason", "fail", seen: "SIGKILL")
                #expect(try await CLI.run(["rm", id] + flags).status == 0)
                #expect(try await CLI.run(["stop", metered] + flags).status == 0)
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }
}
