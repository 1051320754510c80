import Foundation
import MicroVM
import MicroVMHost

#if canImport(Glibc)
    import Glibc
#endif

/// The guide's "resource limits not enforced": a running VM's cgroup files compared with the
/// limits its record asks for, file by file, in the names of the hierarchy it lives in (v1 or v2).
enum Limits {
    /// Every live jailed VM under the state root, as one finding.
    static func all(_ context: DoctorContext) -> Finding {
        let live = MicroVM.list(configuration: context.configuration).compactMap { listing -> VMRecord? in
            guard let record = listing.record, listing.process.isAlive else { return nil }
            return record
        }
        guard !live.isEmpty else {
            return Finding(check: "limits-enforced", status: .ok, seen: "no running VM under \(context.stateRoot) to compare")
        }
        let findings = live.map { check($0, context) }
        let bad = findings.filter { $0.status != .ok }
        if bad.isEmpty {
            return Finding(check: "limits-enforced", status: .ok, seen: findings.map(\.seen).joined(separator: "; "))
        }
        return Finding(
            check: "limits-enforced", status: bad.contains { $0.status == .fail } ? .fail : .warn, seen: bad.map(\.seen).joined(separator: "; "),
            why: bad.first?.why, fix: bad.compactMap(\.fix).joined(separator: "; "))
    }

    /// One VM: every `--cgroup` setting its limits give must be in one of its recorded cgroup
    /// directories with that value, and its Firecracker must be in them.
    static func check(_ record: VMRecord, _ context: DoctorContext) -> Finding {
        let id = record.id
        let limits = record.spec.limits?.resourceLimits ?? .recommended
        guard record.sandboxed else {
            return Finding(
                check: "limits-enforced", status: record.spec.limits == nil ? .ok : .warn,
                seen: "\(id) runs unjailed: no cgroups of its own\(record.spec.limits == nil ? "" : ", so its limits are not applied")",
                why: "only the jailer applies cgroup limits", fix: "run it jailed: microvm run --sandbox required ...")
        }
        let mounts = context.read("/proc/mounts") ?? ""
        let host = CgroupHost.parse(procMounts: mounts) { _ in [] }
        let v2 = host.v2Mount.map { mount in record.cgroupDirectories.contains { $0.hasPrefix(mount.directory + "/") } } ?? false
        let version: CgroupVersion = v2 ? .v2 : .v1
        let topology = HostTopology.detect(sysfs: context.host("/sys/devices/system"))
        let expected: [CgroupSetting]
        do {
            expected = try limits.cgroupSettings(
                version: version, guest: GuestResources(memoryMiB: record.spec.machine.memoryMiB, vcpuCount: record.spec.machine.vcpus), topology: topology)
        } catch {
            return Finding(check: "limits-enforced", status: .warn, seen: "\(id): its limits cannot be computed here: \(error)", why: "nothing to compare the cgroup files with", fix: error.hint)
        }
        guard !expected.isEmpty else { return Finding(check: "limits-enforced", status: .ok, seen: "\(id): no limits asked") }
        let pid = record.pid ?? 0
        var problems: [(seen: String, fix: String)] = []
        var matched: [String] = []
        let present = record.cgroupDirectories.filter { access(context.host($0), F_OK) == 0 }
        if present.isEmpty {
            return Finding(
                check: "limits-enforced", status: .fail,
                seen: "\(id): no cgroup directory of the VM exists (\(record.cgroupDirectories.isEmpty ? "none recorded" : record.cgroupDirectories.joined(separator: ", ")))",
                why: "the VMM runs without any of its limits (\(expected.map(\.argument).joined(separator: ", ")))",
                fix: "microvm stop \(id) --state-dir \(context.stateRoot), then run it again jailed (the jailer makes the cgroups as it launches)")
        }
        for setting in expected {
            guard let directory = present.first(where: { access(context.host($0 + "/" + setting.file), F_OK) == 0 }) else {
                problems.append(
                    ("\(setting.file) is in none of \(present.joined(separator: ", "))",
                     "microvm stop \(id) and run it again (its \(setting.controller) cgroup is missing)"))
                continue
            }
            let path = directory + "/" + setting.file
            let actual = (context.read(path) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            if same(setting.file, expected: setting.value, actual: actual) {
                matched.append("\(setting.file)=\(actual)")
            } else {
                problems.append(("\(path) is '\(actual)', the record asks \(setting.value)", "echo '\(setting.value)' > \(path)"))
            }
        }
        for directory in present {
            guard let procs = context.read(directory + "/cgroup.procs") else { continue }
            let pids = procs.split(separator: "\n").compactMap { Int32($0) }
            if !pids.contains(pid) {
                problems.append(("Firecracker (pid \(pid)) is not in \(directory)", "echo \(pid) > \(directory)/cgroup.procs"))
            }
        }
        if problems.isEmpty {
            return Finding(check: "limits-enforced", status: .ok, seen: "\(id) (cgroup \(version)): \(matched.joined(separator: ", "))")
        }
        return Finding(
            check: "limits-enforced", status: .fail, seen: "\(id): " + problems.map(\.seen).joined(separator: "; "),
            why: "the VMM is not held to the limits it was started with: it can take more CPU, memory or tasks than its record says",
            fix: problems.map(\.fix).joined(separator: " && "))
    }

    /// The kernel writes some values back in its own form: memory rounded down to pages, CPU
    /// lists as ranges, `max` for no limit.
    static func same(_ file: String, expected: String, actual: String) -> Bool {
        if expected == actual { return true }
        switch file {
        case "cpuset.cpus", "cpuset.mems":
            return (try? HostTopology.parseList(expected)) == (try? HostTopology.parseList(actual))
        case "memory.limit_in_bytes", "memory.max":
            guard let want = UInt64(expected), let have = UInt64(actual) else { return false }
            return have == want || have == want / 4096 * 4096
        default:
            return expected.split(separator: " ") == actual.split(separator: " ")
        }
    }
}
