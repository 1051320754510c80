public import FirecrackerAPI
public import MicroVMHost

/// What went wrong with a VM, with the VM's id, Firecracker's or the jailer's own words where
/// they exist, and a hint.
public enum MicroVMError: Error, Sendable, CustomStringConvertible {
    /// The spec is not usable; every problem names its field. Nothing on the host was touched.
    case invalidSpec(id: String?, problems: [SpecProblem])
    /// The operation is not allowed in the VM's current state.
    case invalidState(id: String, operation: String, state: VMState, allowed: [String])
    /// The sandbox (jailer, jail, cgroups, staging) refused or failed.
    case sandbox(id: String, JailError)
    /// Firecracker refused a request or could not be reached; its fault message is kept verbatim.
    case api(id: String, operation: String, FirecrackerAPIError)
    /// Creating the VM failed at `step`; everything done before that step was undone.
    case createFailed(id: String, step: String, cause: any Error, exit: ExitReason?)
    /// A snapshot could not be written or moved to its destination.
    case snapshotFailed(id: String, step: String, detail: String)
    /// A host file operation failed.
    case file(id: String, SystemCallError)
    /// The VM's network could not be made (namespace, TAP, firewall, lease).
    case network(id: String, NetworkError)
    /// The state root already has this id (a live VM, or leftovers for `gc`).
    case stateConflict(id: String, path: String, detail: String)
    /// A VM's record cannot be read; other VMs are unaffected.
    case corruptRecord(id: String, path: String, detail: String)
    /// No VM with this id under the state root.
    case notFound(id: String, stateRoot: String)
    /// Another live driver supervises this VM, or its process is not the recorded one.
    case notAttachable(id: String, reason: String)
    /// Another live driver holds this VM (supervises it, or is still creating it), so this one
    /// must not `operation` it (remove its files, for instance).
    case heldByAnotherDriver(id: String, operation: String, reason: String)
    /// The warm pool was shut down: it hands out no more VMs.
    case poolClosed(pool: String)
    /// The VM ended while `operation` was under way (Firecracker closed the request's
    /// connection as it went): how it ended.
    case vmEnded(id: String, operation: String, reason: ExitReason)

    public var id: String? {
        switch self {
        case .invalidSpec(let id, _): id
        case .poolClosed: nil
        case .invalidState(let id, _, _, _), .sandbox(let id, _), .api(let id, _, _), .createFailed(let id, _, _, _),
            .snapshotFailed(let id, _, _), .file(let id, _), .network(let id, _), .stateConflict(let id, _, _), .corruptRecord(let id, _, _),
            .notFound(let id, _), .notAttachable(let id, _), .heldByAnotherDriver(let id, _, _), .vmEnded(let id, _, _):
            id
        }
    }

    /// A snapshot refused for its destination (not empty, not a directory, no parent) before
    /// anything was written: the caller's to correct, not the VM's failure.
    public var isSnapshotDestinationProblem: Bool {
        guard case .snapshotFailed(_, let step, _) = self else { return false }
        return SnapshotFiles.isDestinationStep(step)
    }

    public var description: String {
        let vm = id.flatMap { $0.isEmpty ? nil : "VM \($0): " } ?? ""  // a Firecracker config file names no VM
        switch self {
        case .invalidSpec(_, let problems):
            // A problem with the file itself (no field) has its hint as the error's hint.
            let fileLevel = problems.allSatisfy(\.field.isEmpty)
            return "\(vm)invalid spec: " + problems.map { fileLevel ? $0.message : $0.description }.joined(separator: "; ")
        case .invalidState(_, let operation, let state, let allowed):
            return "\(vm)cannot \(operation) while \(state.name) (only when \(allowed.joined(separator: " or ")))"
        case .sandbox(_, let error):
            return "\(vm)\(error)"
        case .api(_, let operation, let error):
            // Firecracker's error names its request already ("PUT /snapshot/create failed with
            // HTTP 400: ..."): the operation is not said twice.
            let text = "\(error)"
            return text.hasPrefix(operation) ? "\(vm)\(text)" : "\(vm)\(operation): \(text)"
        case .createFailed(_, let step, let cause, _) where cause is CancellationError:
            return "\(vm)create cancelled while \(step); everything it had made was removed"
        case .createFailed(_, let step, let cause, let exit):
            // How the VMM ended, which names Firecracker where it quotes it.
            let exitText = exit.map { "; \($0)" } ?? ""
            // The cause's own words, without its "VM id:" prefixes or its hint: the error
            // names the VM once and its hint is the cause's.
            var causeText = (cause as? JailError)?.summary ?? "\(cause)"
            while causeText.hasPrefix(vm), !vm.isEmpty { causeText.removeFirst(vm.count) }
            if let hint = (cause as? MicroVMError)?.hint ?? (cause as? JailError)?.hint ?? (cause as? LaunchFailure)?.hint
                ?? (cause as? LazyMemoryError)?.hint,
                causeText.hasSuffix(". Hint: \(hint)")
            {
                causeText.removeLast(". Hint: \(hint)".count)
            }
            return "\(vm)create failed while \(step): \(causeText)\(exitText); everything it had made was removed"
        case .snapshotFailed(_, let step, let detail):
            return "\(vm)snapshot failed while \(step): \(detail)"
        case .file(_, let error):
            return "\(vm)\(error)"
        case .network(_, let error):
            return "\(vm)network: \(error.summary)"
        case .stateConflict(_, let path, let detail):
            return "\(vm)already exists in the state root (\(path)): \(detail)"
        case .corruptRecord(_, let path, let detail):
            return "\(vm)the record \(path) cannot be read: \(detail)"
        case .notFound(_, let root):
            return "\(vm)no such VM under \(root)"
        case .notAttachable(_, let reason):
            return "\(vm)cannot attach: \(reason)"
        case .heldByAnotherDriver(_, let operation, let reason):
            return "\(vm)cannot \(operation): \(reason)"
        case .poolClosed(let pool):
            return "the warm pool \(pool) is shut down"
        case .vmEnded(_, let operation, let reason):
            return "\(vm)\(operation): the VM ended while it was under way: \(reason)"
        }
    }

    /// A transport failure of the API (the VMM went away before answering).
    private static func isLostConnection(_ cause: any Error) -> Bool {
        if case .api(_, _, .transport)? = cause as? MicroVMError { return true }
        return false
    }

    /// Whether the operation ended because its task was cancelled; a cancelled creation has
    /// removed everything it made, as a failed one does.
    public var isCancellation: Bool {
        if case .createFailed(_, _, let cause, _) = self { return cause is CancellationError }
        return false
    }

    /// What to do about it.
    public var hint: String {
        switch self {
        case .invalidSpec(_, let problems):
            problems.allSatisfy(\.field.isEmpty) ? (problems.first?.hint ?? "correct the spec file")
                : problems.count == 1 ? (problems[0].hint ?? "correct the field named above") : "correct the fields named above"
        case .invalidState(_, _, let state, _):
            state.isLive ? "wait for or bring about the state the operation needs" : "the VM has ended; create a new one (or restore a snapshot)"
        case .sandbox(_, let error): error.hint
        case .api(_, _, let error): error.hint
        case .createFailed(_, _, let cause, _) where cause is CancellationError:
            "the task that created it was cancelled (an interrupted command); create it again"
        case .createFailed(_, _, let cause, let exit?) where Self.isLostConnection(cause) && !exit.isClean:
            // Firecracker ended before it answered: its exit and its own words, not the lost
            // connection, say what to fix.
            "Firecracker's own words follow the cause; `microvm doctor ID` reads them and names the fix"
        case .createFailed(_, _, let cause, _):
            (cause as? MicroVMError)?.hint ?? (cause as? JailError)?.hint ?? (cause as? FirecrackerAPIError)?.hint
                ?? (cause as? LaunchFailure)?.hint ?? (cause as? LazyMemoryError)?.hint
                ?? (cause is MonitoredLaunchFailure
                    ? "Firecracker's own words follow the cause; `microvm doctor ID` reads them and names the fix"
                    : "see the cause above")
        case .snapshotFailed where isSnapshotDestinationProblem:
            "give a new directory whose parent exists, or an empty one (nothing of an earlier snapshot is overwritten)"
        case .snapshotFailed: "check the destination's free space and permissions"
        case .file: "check the path and its permissions"
        case .network(_, let error): error.hint
        case .stateConflict: "choose another id, stop that VM, or run gc to remove a dead VM's leftovers"
        case .corruptRecord: "inspect the file; gc removes the VM's leftovers once its process is gone"
        case .notFound: "list the VMs of this state root, or give the state root the VM was created with"
        case .notAttachable: "stop it from the driver that supervises it, or wait until that driver has exited"
        case .heldByAnotherDriver: "wait until the driver that holds it has finished with it (or has exited), or stop the VM from that driver"
        case .poolClosed: "make a new pool, or restore the snapshot directly"
        case .vmEnded(_, _, let reason):
            reason.isClean ? "the guest shut down first; create or restore a new VM" : "`microvm doctor ID` reads how it ended and names the fix"
        }
    }
}
