import ArgumentParser
import Foundation
import MicroVM

/// `microvm doctor`: the jailer troubleshooting guide, automated.
struct DoctorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "doctor",
        abstract: "Check this host for what Firecracker and the jailer need; each finding says what was seen, why it matters and the fix.",
        discussion: """
            Checks: privileges; jailer and firecracker binaries (found, executable, --version) and \
            matching versions; the exec file name the jailer accepts; the per-VM monitor \
            (microvm-monitor); /dev/kvm (opens, KVM API 12, \
            KVM_CREATE_VM); /dev/net/tun; /dev/userfaultfd; the cgroup version, the controllers the \
            limits need (cpu, memory, pids, cpuset) and, on v2, cgroup.subtree_control; the chroot \
            base (owner root, not group/other-writable, exec and dev allowed); images on the chroot \
            base's filesystem; SMT, KSM, swap and side-channel mitigations (warnings, from \
            Firecracker's production host setup); dead VMs' leftovers under the state root; limits \
            enforced on every running VM (its cgroup files, v1 or v2 names, against its record). \
            Exit status 3 when any check fails, else 0.

            doctor VM-ID diagnoses one VM: its record and process (alive, gone, pid reused), its \
            API socket (exists, answers), its limits, a memory cgroup's OOM kills, leftovers, \
            the spec's files, and why it ended (triple fault, KVM error, seccomp kill (148), \
            Firecracker refusing the kernel or configuration, cgroup or stale-jail failures, \
            kills from outside), read from the exit reason and Firecracker's last log lines. A \
            VM that failed in front of a microvm command leaves a post-mortem under \
            <state dir>/.postmortem/ for this; a detached VM's monitor keeps its exit status and \
            Firecracker's log in the VM's directory. An unknown id exits 5.

            --bundle FILE writes a .tar.gz for bug reports: versions (microvm, firecracker, \
            jailer, kernel), the cgroup lines of /proc/self/mountinfo, /proc/cmdline, the checks \
            (text and JSON), every VM's record and diagnosis, and post-mortems with Firecracker's \
            last log lines. MMDS contents, environment variables and values of token- or \
            key-like arguments are replaced by <redacted>.

            Examples:
              microvm doctor
              microvm doctor web-1 --json
              microvm doctor --bundle /tmp/microvm-doctor.tar.gz
            """
    )

    @OptionGroup var global: GlobalOptions


    @Option(help: ArgumentHelp("The firecracker binary (default: $MICROVM_FIRECRACKER_BIN, else /usr/bin/firecracker).", valueName: "path"))
    var firecracker: String?

    @Option(help: ArgumentHelp("The jailer binary (default: $MICROVM_JAILER_BIN, else /usr/bin/jailer).", valueName: "path"))
    var jailer: String?

    @Option(name: .customLong("chroot-base"), help: ArgumentHelp("The chroot base (default: $MICROVM_JAILER_CHROOT_BASE, else /srv/jailer).", valueName: "dir"))
    var chrootBase: String?

    @Option(name: .customLong("image"), help: ArgumentHelp("An image to compare with the chroot base's filesystem (default: $MICROVM_GUEST_KERNEL, $MICROVM_ROOTFS_IMAGE); repeatable.", valueName: "path"))
    var images: [String] = []

    @Option(name: .customLong("host-root"), help: ArgumentHelp("Read /proc, /sys and /dev under this directory (for tests with fake trees).", valueName: "dir"))
    var hostRoot = "/"

    @Argument(help: ArgumentHelp("Diagnose this VM instead of the host (its record, post-mortem, process, API socket, cgroups).", valueName: "vm-id"))
    var vmID: String?

    @Option(name: .customLong("bundle"), help: ArgumentHelp("Also write the \"Getting help\" archive (.tar.gz) to this file, secrets left out.", valueName: "file"))
    var bundle: String?

    struct Report: Encodable {
        var id: String?
        var checks: [Finding]
        var ok: Int
        var warn: Int
        var fail: Int
    }

    func run() async throws {
        let configuration = try global.driverConfiguration(firecracker: firecracker, jailer: jailer)
        let environment = ProcessInfo.processInfo.environment
        let defaultImages = ["MICROVM_GUEST_KERNEL", "MICROVM_ROOTFS_IMAGE"].compactMap { environment[$0] }.filter { !$0.isEmpty }
        let context = DoctorContext(
            root: Paths.absolute(hostRoot), firecracker: configuration.jailer.firecrackerBinary.string,
            jailer: configuration.jailer.jailerBinary.string,
            chrootBase: chrootBase.map(Paths.absolute) ?? configuration.jailer.chrootBase.string,
            stateRoot: configuration.stateStore.root.string, configuration: configuration,
            images: images.isEmpty ? defaultImages : images.map(Paths.absolute))
        let findings: [Finding]
        if let vmID {
            findings = try await VMDiagnosis.findings(id: vmID, context)
        } else {
            findings = DoctorChecks.all(context)
        }
        let report = Report(
            id: vmID, checks: findings, ok: findings.count { $0.status == .ok }, warn: findings.count { $0.status == .warn },
            fail: findings.count { $0.status == .fail })
        let text = DoctorReport.text(findings)
        let json = JSON.string(report)
        if let bundle {
            let files = try await DoctorBundle.write(to: bundle, context: context, findings: findings, text: text, json: json)
            Output.note("[microvm] wrote \(Paths.absolute(bundle)): \(files.count) files (secrets left out)")
        }
        Output.raw(global.json ? json + "\n" : text)
        if report.fail > 0 { throw ExitCode(ExitStatus.host.rawValue) }
    }
}
