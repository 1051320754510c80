/// Why a VM's Firecracker ended: its exit status read together with what its log said, so a
/// guest that crashed is never reported as a clean stop (Firecracker exits 0 both for a guest
/// reset and for a triple fault; only its log tells them apart).
public struct ExitReason: Sendable, Hashable, Codable, CustomStringConvertible {
    public enum Kind: String, Sendable, Hashable, Codable {
        /// The guest reset or shut the machine down (Ctrl-Alt-Del answered, or its own choice).
        case guestShutdown = "guest-shutdown"
        /// The guest triple-faulted (Firecracker logs KVM_EXIT_SHUTDOWN and exits 0).
        case tripleFault = "triple-fault"
        /// KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR and the like; exit 1).
        case kvmError = "kvm-error"
        /// Firecracker's seccomp filter caught a forbidden syscall (exit 148).
        case seccompViolation = "seccomp-violation"
        /// Firecracker refused its configuration or command line (exit 152, 153).
        case badConfiguration = "bad-configuration"
        /// Firecracker failed for another reason (any other non-zero exit).
        case vmmError = "vmm-error"
        /// The driver killed it (stop escalation, kill, destroy).
        case killedByDriver = "killed-by-driver"
        /// Something else killed it with a signal.
        case killed = "killed"
        /// A lazy restore's page-fault server could not serve the guest's memory (a truncated or
        /// unreadable snapshot memory file) and killed the VMM rather than leave the guest frozen.
        case lazyMemoryFailed = "lazy-memory-failed"
        /// The status could not be collected.
        case unknown = "unknown"
    }

    public var kind: Kind
    /// Firecracker's exit status.
    public var exit: VMMExit
    /// The log lines that decided the kind (Firecracker's words), and the last error lines.
    public var evidence: [String]

    public init(kind: Kind, exit: VMMExit, evidence: [String] = []) {
        self.kind = kind
        self.exit = exit
        self.evidence = evidence
    }

    /// True for an orderly end: the guest shut down, or the driver ended it on request.
    public var isClean: Bool { kind == .guestShutdown || kind == .killedByDriver }

    public var description: String {
        let base: String
        switch kind {
        case .guestShutdown: base = "the guest shut down"
        case .tripleFault: base = "the guest triple-faulted (KVM_EXIT_SHUTDOWN)"
        case .kvmError: base = "KVM could not run the guest"
        case .seccompViolation: base = "Firecracker made a syscall its seccomp filter forbids"
        case .badConfiguration: base = "Firecracker refused its configuration"
        case .vmmError: base = "Firecracker failed"
        case .killedByDriver: base = "stopped by the driver"
        case .killed: base = "killed from outside"
        case .lazyMemoryFailed: base = "its memory could not be served (lazy restore)"
        case .unknown: base = "ended for an unknown reason"
        }
        // The page-fault server's words are the driver's, not Firecracker's.
        let source = kind == .lazyMemoryFailed ? "" : "Firecracker: "
        let detail = evidence.isEmpty ? "" : "; \(source)\(evidence.suffix(kind == .lazyMemoryFailed ? 1 : 2).joined(separator: " | "))"
        return "\(base) (\(exit))\(detail)"
    }

    /// A lazy restore's page-fault server that failed killed the VMM: that, not the signal, is
    /// why the VM ended.
    func adding(lazyMemoryFailure failure: LazyMemoryError?) -> ExitReason {
        guard let failure else { return self }
        return ExitReason(kind: .lazyMemoryFailed, exit: exit, evidence: evidence + ["\(failure)"])
    }

    /// Firecracker's stderr (argument errors) as evidence, when the log said nothing.
    func adding(standardError lines: [String]) -> ExitReason {
        guard evidence.isEmpty, !lines.isEmpty else { return self }
        return ExitReason(kind: kind, exit: exit, evidence: Array(lines.suffix(3)))
    }

    /// Reads the exit status with the log's last lines. `killedByDriver`: the driver sent the
    /// fatal signal itself.
    static func classify(exit: VMMExit, log: [FirecrackerLog.Line], killedByDriver: Bool) -> ExitReason {
        func lines(containing needle: String) -> [String] {
            log.filter { $0.message.containsBytes(needle) }.map(\.message)
        }
        let errors = log.filter { $0.level >= .error }.map(\.message).suffix(3)
        switch exit {
        case .signaled(let signal):
            if killedByDriver { return ExitReason(kind: .killedByDriver, exit: exit) }
            // Ended after its VM had already failed (a hung VMM the driver ended): the log's cause.
            let internalError = lines(containing: "KVM_EXIT_INTERNAL_ERROR")
            if !internalError.isEmpty { return ExitReason(kind: .kvmError, exit: exit, evidence: internalError + errors) }
            return ExitReason(kind: signal == 31 ? .seccompViolation : .killed, exit: exit, evidence: Array(errors))
        case .unknown:
            // Not our child (a VM attached after its driver died): the log is all there is.
            if killedByDriver { return ExitReason(kind: .killedByDriver, exit: exit) }
            let internalError = lines(containing: "KVM_EXIT_INTERNAL_ERROR")
            if !internalError.isEmpty { return ExitReason(kind: .kvmError, exit: exit, evidence: internalError + errors) }
            let shutdown = lines(containing: "KVM_EXIT_SHUTDOWN")
            if !shutdown.isEmpty { return ExitReason(kind: .tripleFault, exit: exit, evidence: shutdown) }
            let success = lines(containing: "Firecracker exiting successfully")
            if !success.isEmpty { return ExitReason(kind: .guestShutdown, exit: exit, evidence: success) }
            let failure = lines(containing: "Firecracker exiting with error")
            if !failure.isEmpty { return ExitReason(kind: .vmmError, exit: exit, evidence: Array(errors)) }
            return ExitReason(kind: .unknown, exit: exit, evidence: Array(errors))
        case .exited(let code):
            let internalError = lines(containing: "KVM_EXIT_INTERNAL_ERROR") + lines(containing: "KVM_EXIT_FAIL_ENTRY")
            if !internalError.isEmpty { return ExitReason(kind: .kvmError, exit: exit, evidence: internalError + errors) }
            let shutdown = lines(containing: "KVM_EXIT_SHUTDOWN")
            if !shutdown.isEmpty { return ExitReason(kind: .tripleFault, exit: exit, evidence: shutdown) }
            // A panic ends in a seccomp kill when the panic handler makes a forbidden syscall
            // (seen jailed, on a config file Firecracker could not build): the panic is the cause.
            let panic = lines(containing: "panicked at")
            if code != 0, !panic.isEmpty {
                return ExitReason(kind: .vmmError, exit: exit, evidence: panic + Array(errors))
            }
            // /dev/kvm that does not open (its permissions, for a user without root) fails the
            // build too, but no configuration would do better (`doctor ID`: kvm-permission).
            let kvm = lines(containing: "Error creating KVM object")
            if code != 0, !kvm.isEmpty { return ExitReason(kind: .vmmError, exit: exit, evidence: kvm) }
            let refusedConfiguration = lines(containing: "Failed to build MicroVM from Json")
            if code != 0, !refusedConfiguration.isEmpty {
                return ExitReason(kind: .badConfiguration, exit: exit, evidence: refusedConfiguration)
            }
            switch code {
            case 0: return ExitReason(kind: .guestShutdown, exit: exit, evidence: lines(containing: "Vmm is stopping").prefix(1).map { $0 })
            case 148: return ExitReason(kind: .seccompViolation, exit: exit, evidence: Array(errors))
            case 152, 153: return ExitReason(kind: .badConfiguration, exit: exit, evidence: Array(errors))
            default: return ExitReason(kind: .vmmError, exit: exit, evidence: Array(errors))
            }
        }
    }
}
