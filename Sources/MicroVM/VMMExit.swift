/// How a Firecracker process ended, with the meaning of its exit code.
public enum VMMExit: Sendable, Hashable, Codable, CustomStringConvertible {
    case exited(code: Int32)
    case signaled(signal: Int32)
    /// The process is gone but its status could not be collected (it was not our child).
    case unknown

    /// Firecracker's documented exit codes (src/firecracker/src/main.rs, v1.12).
    public var reason: String {
        switch self {
        case .exited(let code):
            switch code {
            case 0: "clean stop"
            case 1: "generic error"
            case 2: "unexpected error"
            case 148: "bad syscall (seccomp filter)"
            case 149: "SIGBUS"
            case 150: "SIGSEGV"
            case 151: "SIGXFSZ (a file size limit was hit)"
            case 152: "bad configuration"
            case 153: "bad command-line arguments"
            case 154: "SIGXCPU (a CPU time limit was hit)"
            case 155: "SIGPIPE"
            case 156: "SIGHUP"
            case 157: "SIGILL"
            default: "exit code \(code)"
            }
        case .unknown:
            "ended; exit status unknown (the process was not this process's child)"
        case .signaled(let signal):
            switch signal {
            case 9: "killed (SIGKILL)"
            case 15: "terminated (SIGTERM)"
            default: "killed by signal \(signal)"
            }
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): "exited with code \(code) (\(reason))"
        case .signaled, .unknown: reason
        }
    }
}
