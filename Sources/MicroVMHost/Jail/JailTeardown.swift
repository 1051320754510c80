#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
public import Logging
import SystemPackage

/// Whether a jail directory is in use.
public enum JailOccupancy: Sendable, Hashable {
    /// No jail directory.
    case absent
    /// The directory exists and no live process uses it (`pid`: what the pid file said, if any).
    case stale(pid: Int32?)
    /// A live process is inside the jail.
    case live(pid: Int32)
}

public struct TeardownOptions: Sendable, Hashable {
    /// Time between SIGTERM and SIGKILL (SIGTERM is skipped for a `--new-pid-ns` VMM, which
    /// ignores it).
    public var grace: Duration
    /// How long to wait for the process to die after SIGKILL.
    public var killTimeout: Duration
    /// How long to retry `rmdir` of a cgroup that is still busy (its last task not yet reaped).
    public var cgroupTimeout: Duration
    /// Reap the VMM's zombie when this process is its parent or child subreaper.
    public var reap: Bool
    /// Also remove `<base>/<exec file name>` when it is left empty, so the last VM leaves the
    /// chroot base as it found it. A VM being staged at that moment makes the directory again
    /// (the stager retries on ENOENT); turn this off when other tools make jails under the same
    /// base without retrying.
    public var removeEmptyExecDirectory: Bool
    /// Look through `/proc` for any other process whose root or working directory is the jail.
    /// A caller that supervised the VMM and has seen it exit can skip it (the scan is most of a
    /// teardown's CPU time): Firecracker does not fork, a `--new-pid-ns` VMM's namespace dies
    /// with it, and a process left in the VM's cgroup still makes its removal fail, reported.
    public var searchForProcesses: Bool

    public init(
        grace: Duration = .milliseconds(500), killTimeout: Duration = .seconds(5), cgroupTimeout: Duration = .seconds(2),
        reap: Bool = true, removeEmptyExecDirectory: Bool = true, searchForProcesses: Bool = true
    ) {
        self.grace = grace
        self.killTimeout = killTimeout
        self.cgroupTimeout = cgroupTimeout
        self.reap = reap
        self.removeEmptyExecDirectory = removeEmptyExecDirectory
        self.searchForProcesses = searchForProcesses
    }
}

/// What a teardown did. Every step runs even when an earlier one failed.
public struct TeardownReport: Sendable, Hashable {
    public var id: VMIdentifier
    public var stopped: [StopOutcome] = []
    /// True when a jail directory existed and is gone now.
    public var removedJailDirectory = false
    public var removedCgroups: [String] = []
    public var failures: [JailError] = []

    public var isComplete: Bool { failures.isEmpty }

    /// Throws `teardownIncomplete` listing every failure.
    public func check() throws(JailError) {
        if !failures.isEmpty { throw .teardownIncomplete(id: id.rawValue, failures: failures) }
    }
}

/// Removes everything a jailed launch leaves behind: the VMM process, the jail directory (with
/// the staged per-VM copies and the jailer's device nodes) and the VM's cgroups. The jailer never
/// cleans up, so this is the only cleanup there is; it is idempotent.
public enum JailTeardown {
    /// Tears down the jail of `layout`. `pid` is the VMM pid if the caller knows it; the pid file
    /// and a scan of `/proc` for processes rooted in the jail are used as well.
    public static func run(
        layout: JailLayout, parentCgroup: String, cgroupHost: CgroupHost, pid: Int32? = nil,
        options: TeardownOptions = TeardownOptions(), logger: Logger
    ) async -> TeardownReport {
        var report = TeardownReport(id: layout.id)
        let id = layout.id.rawValue
        // What is on disk decides: a stale jail found where an unjailed VM is about to start
        // still has its jail's processes and cgroups removed.
        let layout = layout.matchingDisk()

        // 1. Stop every process of the jail.
        var pids: [Int32] = []
        if let pid { pids.append(pid) }
        do {
            if let filePID = try JailedVMM.readPIDFile(layout: layout), !pids.contains(filePID) { pids.append(filePID) }
        } catch {
            report.failures.append(error)
        }
        if options.searchForProcesses {
            for jailed in JailedVMM.processesInJail(layout: layout) where !pids.contains(jailed) { pids.append(jailed) }
        }
        for candidate in pids {
            do {
                let outcome = try await JailedVMM(pid: candidate, layout: layout).stop(
                    grace: options.grace, timeout: options.killTimeout, reap: options.reap, logger: logger)
                report.stopped.append(outcome)
            } catch {
                report.failures.append(error)
            }
        }

        // 2. Remove the jail directory.
        do {
            report.removedJailDirectory = try removeJailDirectory(
                layout: layout, removeEmptyExecDirectory: options.removeEmptyExecDirectory, failures: &report.failures)
        } catch {
            report.failures.append(error)
        }

        // 3. Remove the VM's cgroups in every hierarchy. An unjailed VM has none: no jailer made
        //    any (ten `rmdir`s that fail with ENOENT on a cgroup v1 host).
        if layout.kind == .directory {
            // Nothing to remove.
        } else if let problem = JailerConfiguration.parentCgroupProblem(parentCgroup) {
            report.failures.append(
                .invalidSetting(
                    name: "parent cgroup", value: parentCgroup, reason: problem,
                    fix: "pass the parent cgroup the launch used"))
        } else {
            for directory in cgroupHost.everyCandidateDirectory(parent: parentCgroup, id: layout.id) {
                switch await removeCgroup(directory, timeout: options.cgroupTimeout) {
                case .success(true): report.removedCgroups.append(directory)
                case .success(false): break
                case .failure(let error): report.failures.append(error)
                }
            }
        }

        if report.isComplete {
            logger.debug(
                "jail torn down",
                metadata: [
                    "vm": "\(id)", "jail": "\(layout.jailDirectory)", "cgroups": "\(report.removedCgroups)",
                ])
        } else {
            logger.warning(
                "jail teardown incomplete",
                metadata: ["vm": "\(id)", "failures": "\(report.failures.map(\.summary))"])
        }
        return report
    }

    /// Whether the jail of `layout` exists and is in use. A pid from the pid file counts only if
    /// that process really is the jail's (pid reuse); processes rooted in the jail count too.
    /// The directory is judged by what is in it (``JailLayout/matchingDisk()``): a jail's
    /// process is looked for in a jail, whatever kind of VM is about to use the id.
    public static func occupancy(of layout: JailLayout) -> JailOccupancy {
        var status = stat()
        if lstat(layout.jailDirectory.string, &status) != 0, errno == ENOENT { return .absent }
        let layout = layout.matchingDisk()
        let filePID = (try? JailedVMM.readPIDFile(layout: layout)) ?? nil
        if let filePID, JailedVMM.identify(pid: filePID, layout: layout) == .jailed { return .live(pid: filePID) }
        if let jailed = JailedVMM.processesInJail(layout: layout).first { return .live(pid: jailed) }
        return .stale(pid: filePID)
    }

    /// Makes the jail of `layout` ready for a launch: refuses when a live process uses it,
    /// removes it (and its cgroups) when it is stale. The jailer fails on a reused id otherwise.
    public static func prepareForLaunch(
        layout: JailLayout, parentCgroup: String, cgroupHost: CgroupHost, logger: Logger
    ) async throws(JailError) {
        switch occupancy(of: layout) {
        case .absent:
            return
        case .live(let pid):
            throw .jailBusy(id: layout.id.rawValue, pid: pid, jailDirectory: layout.jailDirectory.string)
        case .stale(let pid):
            logger.info(
                "removing stale jail",
                metadata: [
                    "vm": "\(layout.id)", "jail": "\(layout.jailDirectory)", "old_pid": "\(pid.map(String.init) ?? "none")",
                ])
            let report = await run(layout: layout, parentCgroup: parentCgroup, cgroupHost: cgroupHost, logger: logger)
            try report.check()
        }
    }

    /// Removes `<base>/<exec>/<id>` through descriptors opened with O_NOFOLLOW: nothing outside
    /// the chroot base is reachable (the id and exec name are single validated components) and
    /// links inside the jail are unlinked, never followed. Returns whether a directory was there.
    static func removeJailDirectory(
        layout: JailLayout, removeEmptyExecDirectory: Bool, failures: inout [JailError]
    ) throws(JailError) -> Bool {
        let base: Int32
        do {
            base = try JailFileSystem.openDirectory(layout.chrootBase.string)
        } catch {
            if error.errno == ENOENT { return false }
            throw .unsafeJailPath(path: layout.chrootBase.string, reason: "cannot open the chroot base: \(error)")
        }
        defer { close(base) }
        let execName = layout.execFileName
        guard !execName.isEmpty, !execName.contains("/"), execName != ".", execName != ".." else {
            throw .unsafeJailPath(path: layout.execDirectory.string, reason: "the exec file name is not a single path component")
        }
        let exec: Int32
        do {
            exec = try JailFileSystem.openDirectory(at: base, execName, display: layout.execDirectory.string)
        } catch {
            if error.errno == ENOENT { return false }
            throw .unsafeJailPath(
                path: layout.execDirectory.string,
                reason: error.errno == ELOOP || error.errno == ENOTDIR ? "not a directory (a symlink?)" : error.description)
        }
        defer { close(exec) }
        var execStatus = stat()
        guard fstat(exec, &execStatus) == 0 else {
            throw .system(id: layout.id.rawValue, SystemCallError(call: "fstat", subject: layout.execDirectory.string, errno: errno))
        }
        var jailStatus = stat()
        guard fstatat(exec, layout.id.rawValue, &jailStatus, AT_SYMLINK_NOFOLLOW) == 0 else {
            if errno == ENOENT { return false }
            throw .system(id: layout.id.rawValue, SystemCallError(call: "fstatat", subject: layout.jailDirectory.string, errno: errno))
        }
        var local: [JailError] = []
        JailFileSystem.removeTree(
            at: exec, layout.id.rawValue, display: layout.jailDirectory.string, device: UInt64(execStatus.st_dev),
            failures: &local)
        failures += local.map { failure in
            if case .system(nil, let error) = failure { return .system(id: layout.id.rawValue, error) }
            return failure
        }
        if removeEmptyExecDirectory {
            _ = unlinkat(base, execName, AT_REMOVEDIR)  // ENOTEMPTY: other VMs still use it
        }
        return local.isEmpty
    }

    /// `rmdir` of one cgroup directory (cgroup directories are removed with rmdir even though they
    /// list control files), retried while the kernel says EBUSY. Returns whether it existed.
    static func removeCgroup(_ directory: String, timeout: Duration) async -> Result<Bool, JailError> {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        while true {
            if rmdir(directory) == 0 { return .success(true) }
            let code = errno
            switch code {
            case ENOENT:
                return .success(false)
            case EBUSY where clock.now < deadline:
                await pause(.milliseconds(5))
            case EBUSY:
                let tasks = ((try? readSmallFile(directory + "/cgroup.procs")) ?? "")
                    .split(separator: "\n").joined(separator: ",")
                return .failure(
                    .cgroupRemovalFailed(
                        path: directory,
                        detail: "still busy after \(timeout) (processes: \(tasks.isEmpty ? "none listed; an unreaped zombie?" : tasks))"))
            default:
                return .failure(.cgroupRemovalFailed(path: directory, detail: SystemCallError(call: "rmdir", subject: directory, errno: code).description))
            }
        }
    }
}
