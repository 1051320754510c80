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
            matching versions; the exec file name the jailer accepts; /dev/kvm (opens, KVM API 12, \
            KVM_CREATE_VM); /dev/net/tun; /dev/userfaultfd; the cgroup version, the controllers the \
            limits need (cpu, memory, pids, cpuset) and, on v2, cgroup.subtree_control; the chroot \
            base (owner root, not group/other-writable, exec and dev allowed); images on the chroot \
            base's filesystem; SMT, KSM, swap and side-channel mitigations (warnings, from \
            Firecracker's production host setup); dead VMs' leftovers under the state root. Exit \
            status 3 when any check fails, else 0.
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

    struct Report: Encodable {
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
        let findings = DoctorChecks.all(context)
        let report = Report(
            checks: findings, ok: findings.count { $0.status == .ok }, warn: findings.count { $0.status == .warn },
            fail: findings.count { $0.status == .fail })
        if global.json {
            Output.line(JSON.string(report))
        } else {
            for finding in findings {
                let tag = ["ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"][finding.status.rawValue]!
                Output.line("\(tag) \(finding.check): \(finding.seen)")
                if finding.status != .ok {
                    if let why = finding.why { Output.line("       why: \(why)") }
                    if let fix = finding.fix { Output.line("       fix: \(fix)") }
                }
            }
            Output.line("\(report.ok) ok, \(report.warn) warnings, \(report.fail) failures")
        }
        if report.fail > 0 { throw ExitCode(ExitStatus.host.rawValue) }
    }
}
