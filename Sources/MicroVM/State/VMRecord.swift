public import Foundation
import MicroVMHost

/// What the driver keeps on disk about one VM (`<state root>/<id>/state.json`): enough to find
/// it again after the driver itself is gone, judge whether its process is still the one that
/// was started, and remove what it left.
public struct VMRecord: Codable, Sendable, Hashable {
    public static let currentFormat = 1

    public var format: Int
    public var id: String
    public var spec: VMSpec
    /// The last state the driver knew.
    public var state: VMState
    /// Firecracker's pid and start time (`/proc/PID/stat` field 22): together they name it.
    public var pid: Int32?
    public var processStartTime: UInt64?
    public var sandboxed: Bool
    /// The VM's directory (the jail's `root/`) and the jail directory teardown removes.
    public var directory: String
    public var jailDirectory: String
    public var chrootBase: String
    public var execFileName: String
    public var parentCgroup: String
    public var cgroupDirectories: [String]
    public var apiSocket: String
    /// `apiSocket` as this process connects to it: the path itself, or through the VMM's
    /// working directory when it is too long for a socket address (a long id).
    public var connectableAPISocket: String { SocketPath.connectable(apiSocket, vmDirectory: directory, vmmPID: pid) }
    public var firecrackerBinary: String
    /// The driver process that supervises the VM (pid and start time); another driver may take
    /// it over only once that process is gone.
    public var driverPID: Int32
    public var driverStartTime: UInt64?
    public var createdAt: Date
    public var updatedAt: Date
    /// The VM's monitor (detached VMs): its pid and start time.
    public var monitorPID: Int32? = nil
    public var monitorStartTime: UInt64? = nil
    /// Firecracker's log as a pipe (an unjailed VM without a monitor): the pipe's inode, found
    /// again among the VMM's descriptors by a later driver. Nil: the log is the FIFO
    /// `firecracker.log` in the VM's directory.
    public var logPipeInode: UInt64? = nil
    /// The snapshot memory file a lazily restored VM's pages come from (``RestoreMemory/lazy``),
    /// served by its monitor, or without one by the driver: when that driver is gone, the guest
    /// hangs at its next first touch of a page.
    public var lazyMemoryFile: String? = nil

    enum CodingKeys: String, CodingKey {
        case format, id, spec, state, pid
        case processStartTime = "process_start_time"
        case sandboxed, directory
        case jailDirectory = "jail_directory"
        case chrootBase = "chroot_base"
        case execFileName = "exec_file_name"
        case parentCgroup = "parent_cgroup"
        case cgroupDirectories = "cgroup_directories"
        case apiSocket = "api_socket"
        case firecrackerBinary = "firecracker_binary"
        case driverPID = "driver_pid"
        case driverStartTime = "driver_start_time"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case monitorPID = "monitor_pid"
        case monitorStartTime = "monitor_start_time"
        case logPipeInode = "log_pipe_inode"
        case lazyMemoryFile = "lazy_memory_file"
    }

    /// Firecracker's metrics file, when the spec asks for metrics.
    public var metricsPath: String? {
        spec.logging?.metrics == true ? directory + VMFiles.metrics.string : nil
    }

    /// The jail layout the record describes (an unjailed VM's directory has no `root/`).
    var layout: JailLayout? {
        guard let id = try? VMIdentifier(id) else { return nil }
        return JailLayout(chrootBase: .init(chrootBase), execFileName: execFileName, id: id, kind: layoutKind)
    }

    /// What the record's directory is: a jail root, or an unjailed VM's own directory.
    var layoutKind: JailLayout.Kind {
        !sandboxed && directory == jailDirectory ? .directory : .jail
    }

    /// Whether the driver that wrote it is still running.
    var driverIsAlive: Bool {
        driverPID == getpid() || (ProcFS.startTime(of: driverPID).map { $0 == driverStartTime } ?? false)
    }
}

extension VMRecord {
    /// For tools and tests that write records of their own (a driver writes its VMs' records).
    public init(
        id: String, spec: VMSpec, state: VMState, pid: Int32?, processStartTime: UInt64?, sandboxed: Bool, directory: String,
        jailDirectory: String, chrootBase: String, execFileName: String, parentCgroup: String, cgroupDirectories: [String],
        apiSocket: String, firecrackerBinary: String, driverPID: Int32, driverStartTime: UInt64?, createdAt: Date = Date(),
        updatedAt: Date = Date()
    ) {
        self.init(
            format: Self.currentFormat, id: id, spec: spec, state: state, pid: pid, processStartTime: processStartTime, sandboxed: sandboxed,
            directory: directory, jailDirectory: jailDirectory, chrootBase: chrootBase, execFileName: execFileName, parentCgroup: parentCgroup,
            cgroupDirectories: cgroupDirectories, apiSocket: apiSocket, firecrackerBinary: firecrackerBinary, driverPID: driverPID,
            driverStartTime: driverStartTime, createdAt: createdAt, updatedAt: updatedAt)
    }
}

/// What a VM's process is now, compared with its record.
public enum RecordedProcess: Sendable, Hashable {
    /// The recorded pid is the recorded Firecracker (start time and jail or directory match).
    case alive(pid: Int32)
    /// No such process, or a zombie: the VM has ended.
    case gone
    /// The pid now names another process: it is never signalled.
    case reused(pid: Int32)
    /// The record has no pid (the driver died before the launch).
    case neverStarted

    public var isAlive: Bool {
        if case .alive = self { return true }
        return false
    }
}

extension VMRecord {
    /// Whether the recorded monitor is still the process it was.
    public var monitorIsAlive: Bool {
        guard let monitorPID, let startTime = ProcFS.startTime(of: monitorPID) else { return false }
        let state = ProcFS.state(of: monitorPID)
        return state != "Z" && state != "X" && startTime == monitorStartTime
    }

    /// Checks the recorded pid against `/proc`: its start time, and its root (jailed) or working
    /// directory (unjailed) must be the VM's.
    public var process: RecordedProcess {
        guard let pid else { return .neverStarted }
        guard let startTime = ProcFS.startTime(of: pid) else { return .gone }
        let state = ProcFS.state(of: pid)
        if state == "Z" || state == "X" { return .gone }
        guard startTime == processStartTime else { return .reused(pid: pid) }
        let link = sandboxed ? "root" : "cwd"
        guard let target = ProcFS.sameFile("/proc/\(pid)/\(link)", directory) else { return .gone }
        return target ? .alive(pid: pid) : .reused(pid: pid)
    }
}
