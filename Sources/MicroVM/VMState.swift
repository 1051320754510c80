/// Where a VM is in its life. Every operation checks it locally first, so an illegal one (pause
/// a stopped VM, snapshot a VM never started) fails with the state named, before any request.
public enum VMState: Sendable, Hashable, Codable, CustomStringConvertible {
    /// Configured, VMM running, guest not started.
    case created
    case running
    case paused
    /// The VMM has ended in an orderly way (the guest shut down, or the driver stopped it).
    case stopped(ExitReason)
    /// The VMM ended on its own in a way that is not a shutdown: a crash, a triple fault, a
    /// KVM error, a kill from outside.
    case failed(ExitReason)

    public var name: String {
        switch self {
        case .created: "created"
        case .running: "running"
        case .paused: "paused"
        case .stopped: "stopped"
        case .failed: "failed"
        }
    }

    /// Whether the VMM process is (believed to be) alive.
    public var isLive: Bool {
        switch self {
        case .created, .running, .paused: true
        case .stopped, .failed: false
        }
    }

    public var exitReason: ExitReason? {
        switch self {
        case .stopped(let reason), .failed(let reason): reason
        default: nil
        }
    }

    public var description: String {
        switch self {
        case .stopped(let reason), .failed(let reason): "\(name) (\(reason))"
        default: name
        }
    }

    /// The state after the VMM ended for `reason`.
    static func ended(_ reason: ExitReason) -> VMState {
        reason.isClean ? .stopped(reason) : .failed(reason)
    }
}

/// The operations whose legality depends on the state; one table for the real VM and its
/// in-memory twin, so both refuse the same things with the same error.
public enum VMOperation: String, Sendable, Hashable, CaseIterable {
    case start, pause, resume, snapshot, sendCtrlAltDel = "send Ctrl-Alt-Del", updateDevice = "update a device"

    /// The states this operation is allowed in.
    public var allowedStates: [String] {
        switch self {
        case .start: ["created"]
        case .pause: ["running"]
        case .resume: ["paused"]
        case .snapshot: ["running", "paused"]
        case .sendCtrlAltDel: ["running"]
        case .updateDevice: ["running", "paused"]
        }
    }

    /// Throws `invalidState` unless `state` allows this operation.
    public func check(in state: VMState, id: String) throws(MicroVMError) {
        guard allowedStates.contains(state.name) else {
            throw .invalidState(id: id, operation: rawValue, state: state, allowed: allowedStates)
        }
    }
}
