import Foundation
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm doctor`: every check ok on this machine, and each failure on fake /proc, /sys and
/// /dev trees (read through --host-root).
@Suite("microvm doctor", .serialized)
struct CLIDoctorTests {
    typealias Checks = [String: [String: Any]]

    static func doctor(_ arguments: [String], environment: [String: String] = [:]) async throws -> (status: Int32, checks: Checks, result: CLI.Result) {
        let result = try await CLI.run(["doctor", "--json"] + arguments, environment: environment)
        let body = try #require(try result.json() as? [String: Any], "\(result)")
        let list = try #require(body["checks"] as? [[String: Any]])
        var checks: Checks = [:]
        for check in list { checks[check["check"] as? String ?? "?"] = check }
        return (result.status, checks, result)
    }

    @Test("On this machine (real binaries, root, KVM, hybrid cgroup v1): no check fails, exit 0", .enabled(if: EndToEnd.enabled))
    func thisMachine() async throws {
        let assets = try EndToEnd.assets()
        try await EndToEnd.withScratchDirectory { directory in
            let base = directory + "/jails"
            mkdir(base, 0o755)
            let (status, checks, result) = try await Self.doctor([
                "--firecracker", assets.firecracker, "--jailer", assets.jailer, "--chroot-base", base, "--state-dir", directory + "/state",
                "--image", assets.kernel,
            ])
            #expect(status == 0, "\(result)")
            for name in ["privileges", "jailer-binary", "firecracker-binary", "versions-match", "exec-file-name", "kvm", "tun", "cgroup-version", "cgroup-controllers", "chroot-base", "leftovers"] {
                #expect(checks[name]?["status"] as? String == "ok", "\(name): \(checks[name] ?? [:])")
            }
            #expect((checks["kvm"]?["seen"] as? String)?.contains("KVM_CREATE_VM works") == true)
            #expect(checks.values.allSatisfy { $0["status"] as? String != "fail" }, "\(result.stdout)")
            let text = try await CLI.run(["doctor", "--firecracker", assets.firecracker, "--jailer", assets.jailer, "--chroot-base", base, "--state-dir", directory + "/state"])
            #expect(text.status == 0 && text.stdout.contains("[ ok ] kvm:"), "\(text)")
        }
    }

    /// A fake host: v2 or v1 cgroups missing controllers, not root, /dev/kvm a plain file, no
    /// /dev/net/tun, SMT and KSM on, swap, an unmitigated CPU.
    static func fakeHost(_ root: String, cgroup: Int) throws {
        let fm = FileManager.default
        func write(_ path: String, _ text: String) throws {
            try fm.createDirectory(atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: root + path, atomically: true, encoding: .utf8)
        }
        try write("/proc/self/status", "Name:\tmicrovm\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\n")
        try write("/dev/kvm", "")
        try write("/proc/misc", "124 userfaultfd\n200 tun\n")
        try write("/sys/devices/system/cpu/smt/control", "on\n")
        try write("/sys/kernel/mm/ksm/run", "1\n")
        try write("/proc/swaps", "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n")
        try write("/sys/devices/system/cpu/vulnerabilities/meltdown", "Vulnerable\n")
        try write("/proc/cmdline", "root=/dev/sda1 mitigations=off\n")
        if cgroup == 2 {
            try write("/proc/mounts", "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec 0 0\n")
            try write("/sys/fs/cgroup/cgroup.controllers", "cpu io hugetlb\n")
            try write("/sys/fs/cgroup/cgroup.subtree_control", "\n")
        } else {
            try write(
                "/proc/mounts",
                "tmpfs /sys/fs/cgroup tmpfs ro 0 0\ncgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
        }
    }

    @Test("Each failure on a fake cgroup v2 host: not root, binaries and the monitor missing or not executable, /dev/kvm not a device, no TUN, controllers, subtree_control, chroot base, SMT/KSM/swap/mitigations; exit 3")
    func fakeV2Host() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let root = directory + "/host"
            try Self.fakeHost(root, cgroup: 2)
            let firecracker = directory + "/bin/fc"
            try FileManager.default.createDirectory(atPath: directory + "/bin", withIntermediateDirectories: true)
            try "not a program".write(toFile: firecracker, atomically: true, encoding: .utf8)
            let base = directory + "/jails"
            mkdir(base, 0o755)
            chown(base, 1000, 1000)
            let (status, checks, result) = try await Self.doctor([
                "--host-root", root, "--firecracker", firecracker, "--jailer", directory + "/bin/no-jailer", "--chroot-base", base,
                "--state-dir", directory + "/state",
            ], environment: ["MICROVM_MONITOR_BIN": directory + "/bin/no-monitor"])
            #expect(status == 3, "any failure exits 3: \(result)")
            func expect(_ name: String, _ state: String, fix: String? = nil, seen: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) {
                let check = checks[name]
                #expect(check?["status"] as? String == state, "\(name): \(check ?? [:])", sourceLocation: sourceLocation)
                if let fix { #expect((check?["fix"] as? String)?.contains(fix) == true, "\(name) fix: \(check?["fix"] ?? "none")", sourceLocation: sourceLocation) }
                if let seen { #expect((check?["seen"] as? String)?.contains(seen) == true, "\(name) seen: \(check?["seen"] ?? "none")", sourceLocation: sourceLocation) }
                if state != "ok" { #expect(check?["why"] as? String != nil, "\(name) says why", sourceLocation: sourceLocation) }
            }
            expect("privileges", "fail", seen: "effective uid 1000")
            expect("jailer-binary", "fail", fix: "install -m 0755", seen: "does not exist")
            expect("firecracker-binary", "fail", fix: "chmod 0755 \(firecracker)", seen: "not executable")
            expect("versions-match", "warn")
            expect("exec-file-name", "fail", fix: "firecracker", seen: "'fc'")
            expect("monitor", "fail", fix: "unset MICROVM_MONITOR_BIN", seen: "does not exist")
            expect("kvm", "fail", seen: "not a character device")
            expect("tun", "fail", fix: "mknod /dev/net/tun c 10 200")
            expect("userfaultfd", "warn", fix: "mknod /dev/userfaultfd c 10 124")
            expect("cgroup-version", "ok", seen: "cgroup v2")
            expect("cgroup-controllers", "fail", seen: "lacks memory, pids, cpuset")
            expect("cgroup-subtree-control", "warn", fix: "echo '+cpu' > /sys/fs/cgroup/cgroup.subtree_control")
            expect("chroot-base", "fail", fix: "chown root:root \(base)")
            expect("smt", "warn", fix: "echo off > /sys/devices/system/cpu/smt/control")
            expect("ksm", "warn", fix: "echo 0 > /sys/kernel/mm/ksm/run")
            expect("swap", "warn", fix: "swapoff -a", seen: "/swapfile")
            expect("mitigations", "warn", seen: "meltdown: Vulnerable")
            expect("leftovers", "ok")
        }
    }

    @Test("A fake cgroup v1 host missing the pids and cpuset hierarchies: the fix mounts them (v1 file names); a group-writable chroot base fails")
    func fakeV1Host() async throws {
        try await EndToEnd.withScratchDirectory { directory in
            let root = directory + "/host"
            try Self.fakeHost(root, cgroup: 1)
            let base = directory + "/jails"
            mkdir(base, 0o775)
            chmod(base, 0o775)
            if getuid() == 0 { chown(base, 0, 0) }
            let (status, checks, result) = try await Self.doctor(["--host-root", root, "--chroot-base", base, "--state-dir", directory + "/state"])
            #expect(status == 3, "\(result)")
            #expect(checks["cgroup-version"]?["seen"] as? String == "cgroup v1 hierarchies (the jailer is given --cgroup-version 1)")
            #expect(checks["cgroup-controllers"]?["status"] as? String == "fail")
            #expect((checks["cgroup-controllers"]?["fix"] as? String)?.contains("mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids") == true, "\(checks["cgroup-controllers"] ?? [:])")
            #expect(checks["cgroup-subtree-control"] == nil, "v1 has no subtree_control")
            if getuid() == 0 {
                #expect(checks["chroot-base"]?["status"] as? String == "fail")
                #expect((checks["chroot-base"]?["fix"] as? String) == "chmod go-w \(base)", "\(checks["chroot-base"] ?? [:])")
            }
        }
    }
}
