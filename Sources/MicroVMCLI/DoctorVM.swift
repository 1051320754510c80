import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Post-mortems written by the command line when a VM fails in front of it: the library
/// removes a failed VM's directory (and a failed create everything it made), so this is what
/// `microvm doctor ID` reads once the command that saw the failure has exited.
enum PostMortems {
    private static let context = Mutex<(store: StateStore?, spec: VMSpec?)>((nil, nil))

    /// Called when a command builds its driver configuration (the state root to write into).
    static func use(_ store: StateStore) {
        context.withLock { $0.store = store }
    }

    /// Called when a command builds the spec it creates (named in a create failure's post-mortem).
    static func creating(_ spec: VMSpec) {
        context.withLock { $0.spec = spec }
    }

    /// A failed create: kept for `doctor ID` (a write failure is not worth a second error).
    static func record(_ error: any Error) {
        let (store, spec) = context.withLock { ($0.store, $0.spec) }
        // An interrupted creation is no failure of the VM's: nothing to diagnose.
        guard let error = error as? MicroVMError, !error.isCancellation, let store else { return }
        guard var postMortem = PostMortem(error: error, spec: nil) else { return }
        if spec?.id == postMortem.id { postMortem.spec = spec }
        try? store.writePostMortem(postMortem)
    }

    /// A VM that ended uncleanly while this command was attached.
    static func record(ended reason: ExitReason, vm: MicroVM) {
        let postMortem = PostMortem(
            id: vm.id.rawValue, outcome: .ended, message: "VM \(vm.id) ended uncleanly: \(reason)", exitReason: reason, spec: vm.spec,
            firecrackerLog: reason.evidence)
        try? vm.stateStore.writePostMortem(postMortem)
    }
}

/// `microvm doctor ID`: one VM diagnosed from its record, its post-mortem, its process, its
/// cgroups and its jail. Each finding says what was seen, why it matters and the fix.
enum VMDiagnosis {
    static func findings(id: String, _ context: DoctorContext) async throws -> [Finding] {
        let configuration = context.configuration
        let store = configuration.stateStore
        let listing = MicroVM.list(configuration: configuration).first { $0.id == id }
        // A post-mortem older than the record belongs to an earlier VM of the same id.
        let postMortem = store.postMortem(id: id).flatMap { found in
            listing?.record.map { found.recordedAt >= $0.createdAt ? found : nil } ?? found
        }
        guard listing != nil || postMortem != nil else {
            throw MicroVMError.notFound(id: id, stateRoot: store.root.string)
        }
        var findings: [Finding] = []
        var reason: ExitReason? = postMortem?.exitReason
        var spec = postMortem?.spec
        var record: VMRecord?

        if let listing {
            if let problem = listing.problem {
                findings.append(
                    Finding(
                        check: "record", status: .fail, seen: problem.description, why: "without its record the VM cannot be attached, stopped or cleaned up by id",
                        fix: "cat \(store.directory(for: id).string)/state.json; once its process is gone: rm -r \(store.directory(for: id).string) && microvm gc --state-dir \(store.root.string)"))
            }
            record = listing.record
        }
        if let record {
            spec = record.spec
            reason = record.state.exitReason ?? reason
            findings += process(record, listing: listing!, stateRoot: context.stateRoot, reason: &reason)
            if record.process.isAlive {
                findings.append(await apiSocket(record))
                findings.append(Limits.check(record, context))
            } else {
                if let oom = outOfMemory(record, context) { findings.append(oom) }
                findings.append(leftovers(record, context))
            }
        } else if let postMortem {
            let when = postMortem.recordedAt.formatted(.iso8601)
            findings.append(
                Finding(
                    check: "state", status: .fail,
                    seen: postMortem.outcome == .createFailed
                        ? "create failed at \(when) while \(postMortem.step ?? "creating it"); everything it made was removed"
                        : "ended uncleanly at \(when); its directory was removed",
                    why: "the VM is gone; the findings below say why it failed",
                    // A hint that sends the user here is no fix here.
                    fix: postMortem.hint.flatMap { $0.contains("microvm doctor") ? nil : $0 } ?? "see the findings below"))
        }
        if let spec { findings += files(spec, alive: record?.process.isAlive == true) }
        // A detached VM's monitor kept Firecracker's log in the VM's directory (read for a VM
        // that has ended: a live one's log is not evidence of a failure).
        let monitorLog =
            record?.process.isAlive == true
            ? []
            : (try? String(contentsOfFile: store.directory(for: id).appending("firecracker.log").string, encoding: .utf8))
            .map { $0.split(separator: "\n").suffix(50).map(String.init) } ?? []
        let text = ((reason?.evidence ?? []) + (postMortem?.firecrackerLog ?? []) + monitorLog + [postMortem?.message ?? ""]).joined(separator: "\n")
        for finding in cause(reason: reason, text: text, spec: spec, record: record, postMortem: postMortem, context)
        where finding.check != "kernel" || !findings.contains(where: { $0.check == "kernel" }) {
            findings.append(finding)
        }
        return findings
    }

    // MARK: Process and API socket

    static func process(_ record: VMRecord, listing: VMListing, stateRoot: String, reason: inout ExitReason?) -> [Finding] {
        switch record.process {
        case .alive(let pid):
            return [Finding(check: "process", status: .ok, seen: "Firecracker pid \(pid) is alive (start time and \(record.sandboxed ? "jail root" : "directory") match the record); state \(record.state.name)")]
        case .gone:
            if reason == nil { reason = listing.state?.exitReason }
            // A guest that shut down (or a VMM stopped on purpose) is not a fault: what it
            // left only waits to be removed.
            let status: Finding.Status = reason?.isClean == true ? .warn : .fail
            return [
                Finding(
                    check: "process", status: status,
                    seen: "Firecracker (pid \(record.pid.map(String.init) ?? "?")) is gone; the record still says \(record.state.name)",
                    why: listing.supervised
                        ? "the VMM died; its driver (pid \(record.driverPID)) removes what it left as it notices"
                        : "the VMM died while no microvm command was attached: its jail, cgroups and record stay until removed",
                    fix: "microvm rm \(record.id) --state-dir \(stateRoot)")
            ]
        case .reused(let pid):
            return [
                Finding(
                    check: "process", status: .fail, seen: "pid \(pid) now names another process (start time or root differ): the VM's Firecracker is gone",
                    why: "the VM ended long ago; the other process is never signalled", fix: "microvm rm \(record.id) --state-dir \(stateRoot)")
            ]
        case .neverStarted:
            return [
                Finding(
                    check: "process", status: .fail, seen: "the record has no pid: the driver died before Firecracker started",
                    why: "nothing runs; the id stays taken until the record is removed", fix: "microvm rm \(record.id) --state-dir \(stateRoot)")
            ]
        }
    }

    /// The guide's "API socket not created": the socket must exist where the record says (inside
    /// the jail's `root/`) and answer.
    static func apiSocket(_ record: VMRecord) async -> Finding {
        let path = record.apiSocket
        var info = stat()
        guard stat(path, &info) == 0 else {
            return Finding(
                check: "api-socket", status: .fail, seen: "\(path) does not exist although Firecracker (pid \(record.pid ?? 0)) runs",
                why: "nothing can configure, pause, snapshot or stop the VM gracefully without its API socket (the jail's socket is under <chroot base>/<exec name>/<id>/root/run/, with root/)",
                fix: "microvm kill \(record.id) && microvm rm \(record.id), then run it again (the socket is made by Firecracker at start; a jail whose run/ is not writable by the VM user cannot have it)")
        }
        guard info.st_mode & S_IFMT == S_IFSOCK else {
            return Finding(check: "api-socket", status: .fail, seen: "\(path) is not a socket", why: "Firecracker's API cannot be reached", fix: "microvm kill \(record.id) && microvm rm \(record.id)")
        }
        let client = FirecrackerClient(
            socketPath: record.connectableAPISocket, configuration: .init(requestTimeout: .seconds(2), connectTimeout: .seconds(1)))
        do {
            let instance = try await client.describeInstance()
            await client.close()
            return Finding(check: "api-socket", status: .ok, seen: "\(path) answers (instance \(instance.state.rawValue))")
        } catch {
            await client.close()
            return Finding(
                check: "api-socket", status: .fail, seen: "\(path) exists but does not answer: \(error)",
                why: "a socket that does not answer is stale (left by an earlier Firecracker) or its VMM is stuck",
                fix: "microvm kill \(record.id) && microvm rm \(record.id)")
        }
    }

    // MARK: Dead VMs

    /// The guide's "VM exits immediately" first suspect: a memory limit the VMM outgrew.
    static func outOfMemory(_ record: VMRecord, _ context: DoctorContext) -> Finding? {
        for directory in record.cgroupDirectories {
            var kills = 0
            var file = ""
            for name in ["memory.events", "memory.oom_control"] {
                guard let text = context.read(directory + "/" + name) else { continue }
                for line in text.split(separator: "\n") where line.hasPrefix("oom_kill ") {
                    kills = Int(line.split(separator: " ").last ?? "") ?? 0
                    file = directory + "/" + name
                }
            }
            if kills == 0, let failures = context.read(directory + "/memory.failcnt").flatMap({ Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }), failures > 0,
                record.state.exitReason == nil || record.state.exitReason?.kind == .killed
            {
                kills = failures
                file = directory + "/memory.failcnt"
            }
            guard kills > 0 else { continue }
            let limit = context.read(directory + "/memory.limit_in_bytes") ?? context.read(directory + "/memory.max") ?? "?"
            let guest = record.spec.machine.memoryMiB
            return Finding(
                check: "memory-limit", status: .fail,
                seen: "\(file): oom_kill \(kills); the limit is \(limit.trimmingCharacters(in: .whitespacesAndNewlines)) bytes for \(guest) MiB of guest RAM",
                why: "the kernel's OOM killer ended the VMM: guest RAM plus Firecracker's own memory outgrew the cgroup's limit",
                fix: "microvm rm \(record.id) && microvm run ... --memory-limit \(guest + max(64, guest / 8))   (guest RAM + at least 64 MiB; or leave --memory-limit out for automatic headroom)")
        }
        return nil
    }

    static func leftovers(_ record: VMRecord, _ context: DoctorContext) -> Finding {
        let left = ([record.jailDirectory] + record.cgroupDirectories).filter { access(context.host($0), F_OK) == 0 }
        if left.isEmpty {
            return Finding(check: "leftovers", status: .warn, seen: "only the record is left", why: "the id stays taken until the record is removed", fix: "microvm rm \(record.id) --state-dir \(context.stateRoot)")
        }
        return Finding(
            check: "leftovers", status: .warn, seen: "still on the host: \(left.joined(separator: ", "))",
            why: "a dead VM's jail and cgroups stay until removed; its id cannot be reused", fix: "microvm rm \(record.id) --state-dir \(context.stateRoot)")
    }

    /// The spec's files: the guide's "check kernel and rootfs paths".
    static func files(_ spec: VMSpec, alive: Bool) -> [Finding] {
        var missing: [String] = []
        if !FileManager.default.fileExists(atPath: spec.boot.kernel) { missing.append("boot.kernel \(spec.boot.kernel)") }
        if let initrd = spec.boot.initrd, !FileManager.default.fileExists(atPath: initrd) { missing.append("boot.initrd \(initrd)") }
        for drive in spec.drives where !FileManager.default.fileExists(atPath: drive.path) { missing.append("drive \(drive.id) \(drive.path)") }
        var findings: [Finding] = []
        if let problem = KernelImage.defect(at: spec.boot.kernel) {
            findings.append(
                Finding(
                    check: "kernel", status: .fail, seen: "\(spec.boot.kernel) \(problem)",
                    why: "Firecracker boots an uncompressed ELF vmlinux on x86_64; anything else is refused before the guest runs (1.12.1 with its API on panics instead of saying why, and its seccomp filter turns the panic into exit 148)",
                    fix: "file \(spec.boot.kernel)   (must say 'ELF 64-bit LSB executable, x86-64'); extract one from a bzImage with the kernel tree's scripts/extract-vmlinux bzImage > vmlinux, then microvm run --kernel vmlinux ..."))
        }
        if missing.isEmpty { return findings + [Finding(check: "files", status: .ok, seen: "kernel\(spec.boot.initrd == nil ? "" : ", initrd") and \(spec.drives.count) drive image(s) exist")] }
        return findings + [
            Finding(
                check: "files", status: alive ? .warn : .fail, seen: "missing: \(missing.joined(separator: ", "))",
                why: alive ? "the running VM has its own copies, but it cannot be created again from this spec" : "the VM cannot be created again from this spec",
                fix: "give existing absolute paths: microvm run --kernel /path/to/vmlinux --rootfs /path/to/rootfs.ext4 ...")
        ]
    }


    // MARK: Why it ended

    /// The exit reason and Firecracker's words, read the way the troubleshooting guide would.
    static func cause(
        reason: ExitReason?, text: String, spec: VMSpec?, record: VMRecord?, postMortem: PostMortem?, _ context: DoctorContext
    ) -> [Finding] {
        let lowered = text.lowercased()
        let kernel = spec?.boot.kernel ?? "the kernel"
        let quote = { (needle: String) -> String in
            let line = text.split(separator: "\n").first { $0.lowercased().contains(needle) }.map(String.init) ?? ""
            return line.count > 300 ? String(line.prefix(300)) + "…" : line
        }
        var findings: [Finding] = []
        if lowered.contains("elf") && (lowered.contains("magic") || lowered.contains("invalid")) || lowered.contains("kernel loader") || lowered.contains("cannot load kernel")
            || lowered.contains("kernelloader") || lowered.contains("invalidelf")
        {
            findings.append(
                Finding(
                    check: "kernel", status: .fail, seen: "Firecracker could not load \(kernel): \(quote("elf").isEmpty ? quote("kernel") : quote("elf"))",
                    why: "Firecracker boots an uncompressed ELF vmlinux on x86_64 (a bzImage, a compressed or truncated file, or a file that is not a kernel is refused before the guest runs)",
                    fix: "file \(kernel)   (must say 'ELF 64-bit LSB executable, x86-64'); extract one from a bzImage with the kernel tree's scripts/extract-vmlinux bzImage > vmlinux, then microvm run --kernel vmlinux ..."))
        }
        if lowered.contains("permission denied") && lowered.contains("kvm") {
            let sandboxed = record?.sandboxed ?? true
            findings.append(
                Finding(
                    check: "kvm-permission", status: .fail, seen: "Firecracker could not open /dev/kvm: \(quote("kvm"))",
                    why: "Firecracker needs read-write access to /dev/kvm (jailed: the jailer makes the jail's node for the VM user from the host's /dev/kvm)",
                    fix: sandboxed ? "ls -l /dev/kvm && chmod 0660 /dev/kvm && chown root:kvm /dev/kvm   (and check `microvm doctor`'s kvm check)" : "setfacl -m u:$(id -un):rw /dev/kvm   (or: usermod -aG kvm $(id -un))"))
        }
        let cgroupLine = text.split(separator: "\n").first { line in
            let line = line.lowercased()
            return line.contains("cgroup") && ["fail", "error", "cannot", "could not", "denied", "no space", "invalid", "enoent", "enospc"].contains { line.contains($0) }
        }
        if cgroupLine != nil {
            let v2 = context.read("/proc/mounts")?.contains(" /sys/fs/cgroup cgroup2 ") ?? false
            findings.append(
                Finding(
                    check: "cgroups", status: .fail, seen: "the VM's cgroups could not be set up: \(quote("cgroup"))",
                    why: "the jailer puts the VMM in its cgroups before it runs; a missing controller or a refused value stops the launch",
                    fix: v2
                        ? "echo '+cpu +memory +pids +cpuset' > /sys/fs/cgroup/cgroup.subtree_control; then `microvm doctor` (cgroup-controllers, cgroup-subtree-control)"
                        : "mount the missing v1 hierarchy (mount -t cgroup -o CONTROLLER cgroup /sys/fs/cgroup/CONTROLLER); cpuset.cpus needs cpuset.mems on v1; then `microvm doctor`"))
        }
        if lowered.contains("file exists") || lowered.contains("eexist") {
            findings.append(
                Finding(
                    check: "stale-jail", status: .fail, seen: "something of an earlier VM with this id is in the way: \(quote("exist"))",
                    why: "the jailer refuses a jail whose dev/, run/ or pid file already exist (it never cleans up after itself)",
                    fix: "microvm gc --state-dir \(context.stateRoot)   (or: rm -rf \(record?.jailDirectory ?? "<chroot base>/firecracker/ID"))"))
        }
        // The guide's "API socket not created" only when Firecracker did not exit first (then its
        // exit is the cause, below).
        if reason == nil, lowered.contains("api socket") || lowered.contains("api.sock") || (postMortem?.step?.contains("API") ?? false) {
            findings.append(
                Finding(
                    check: "api-socket", status: .fail, seen: "Firecracker's API socket was never ready: \(quote("sock"))",
                    why: "the guide's \"API socket not created\": Firecracker exited before making it (its log says why), or its run/ directory is not writable in the jail",
                    fix: "microvm doctor (chroot-base: owned by root, mode 0755, not noexec/nodev), then microvm run --verbose ... to see Firecracker's log"))
        }
        guard let reason else {
            if findings.isEmpty, postMortem != nil {
                findings.append(
                    Finding(
                        check: "exit-reason", status: .fail, seen: postMortem!.message, why: "the driver reported this failure", fix: postMortem!.hint))
            }
            return findings
        }
        // A page-fault server's words are the driver's own, not Firecracker's.
        let source = reason.kind == .lazyMemoryFailed ? "; " : "; Firecracker: "
        let evidence = reason.evidence.isEmpty ? "" : source + reason.evidence.suffix(3).joined(separator: " | ")
        let seen = "\(reason.kind.rawValue): \(reason.exit)\(evidence)"
        switch reason.kind {
        case .guestShutdown, .killedByDriver:
            findings.append(Finding(check: "exit-reason", status: .ok, seen: seen))
        case .tripleFault:
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: "the guest triple-faulted: its kernel crashed before it could report a panic (Firecracker still exits 0); a kernel not built for Firecracker, wrong boot arguments, or a CPU feature the template hides",
                    fix: "microvm run --kernel \(kernel) --boot-arg console=ttyS0 --boot-arg earlyprintk=serial --boot-arg reboot=k --boot-arg panic=1   (to see how far the guest gets; use a kernel built with Firecracker's microvm config)"))
        case .kvmError:
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: "KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR: an instruction its emulator cannot handle, common under nested virtualization)",
                    fix: "run on bare metal or a host with full nested virtualization, or use a guest that avoids the instruction (see the guest's last console lines: microvm logs \(postMortem?.id ?? record?.id ?? "ID"))"))
        case .seccompViolation:
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: "Firecracker's seccomp filter killed the VMM (exit 148 / SIGSYS) for a syscall outside its allowlist: binaries of mismatched releases, a custom build, or a Firecracker bug",
                    fix: "dmesg | grep -E 'audit.*(sig=31|syscall=)'   (names the syscall); install firecracker and jailer from one release (microvm doctor: versions-match); report it with microvm doctor --bundle FILE"))
        case .badConfiguration:
            if findings.isEmpty {
                findings.append(
                    Finding(
                        check: "exit-reason", status: .fail, seen: seen,
                        why: "Firecracker refused its configuration or command line before the guest ran",
                        fix: "correct the field Firecracker names above in the spec (microvm run --verbose shows each request)"))
            } else {
                findings.append(Finding(check: "exit-reason", status: .fail, seen: seen, why: "Firecracker refused its configuration (see the finding above)", fix: findings.first?.fix))
            }
        case .vmmError:
            let panic = reason.evidence.contains { $0.contains("panicked at") }
            // 1.12.1 with its API on: a configuration it cannot build (a kernel it cannot load, a
            // drive it cannot open) ends in a panic of the API thread and a seccomp kill.
            if reason.evidence.contains(where: { $0.contains("panicked at") && $0.contains("api_server") }) {
                findings.append(
                    Finding(
                        check: "exit-reason", status: .fail, seen: seen,
                        why: "Firecracker could not build the VM from its configuration; 1.12.1 with its API on panics instead of saying why (and its seccomp filter ends the panic with exit 148)",
                        fix: spec.flatMap { KernelImage.defect(at: $0.boot.kernel) } != nil
                            ? "replace the kernel (see the kernel finding): microvm run --kernel /path/to/vmlinux ..."
                            : "check the spec's kernel (an uncompressed ELF vmlinux), drives (readable images) and memory; firecracker --no-api --config-file CONFIG prints the reason"))
                break
            }
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: panic ? "Firecracker panicked: a bug, or a host it was not built for" : "Firecracker failed (its log line above says why)",
                    fix: panic ? "report it upstream with microvm doctor --bundle FILE (versions, host, log)" : "microvm run --verbose ... shows Firecracker's whole log"))
        case .killed:
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: "something outside microvm killed the VMM (the OOM killer, an operator, a service manager)",
                    fix: "journalctl -k | grep -i -e oom -e 'killed process'   (an OOM kill shows in the VM's memory cgroup: see memory-limit)"))
        case .lazyMemoryFailed:
            findings.append(
                Finding(
                    check: "exit-reason", status: .fail, seen: seen,
                    why: "the VM was restored lazily, and its page-fault server could not serve a page from the snapshot's memory file (truncated, overwritten or unreadable since the restore), so it stopped the VMM rather than leave the guest frozen",
                    fix: "restore it again from an intact snapshot (microvm restore DIR --id NEW, with or without --lazy), and never write into a snapshot's memory file while VMs restored lazily from it run"))
        case .unknown:
            let lost = record != nil && !(record!.process.isAlive)
            findings.append(
                Finding(
                    check: "exit-reason", status: .warn, seen: seen,
                    why: lost
                        ? "Firecracker ended while neither a driver nor its monitor watched it (a library driver without a monitor, or a killed monitor): its exit status and the end of its log are lost"
                        : "the exit status could not be collected",
                    fix: lost ? "run VMs under the per-VM monitor (the microvm command always does; a library sets DriverConfiguration.monitor), then microvm doctor ID" : nil))
        }
        return findings
    }
}
