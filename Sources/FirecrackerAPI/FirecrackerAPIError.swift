/// Why a call to Firecracker's API failed. Every case says which call it was and carries a hint
/// a user can act on.
public enum FirecrackerAPIError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The socket could not be reached or the exchange broke off.
    case transport(TransportFailure, operation: String, socketPath: String)
    /// Firecracker answered with an error status; `faultMessage` is its text, verbatim.
    case api(status: Int, faultMessage: String, operation: String, requestBody: String?)
    /// The answer did not have the shape the spec promises.
    case decoding(operation: String, type: String, message: String, body: String)
    /// The request could not be encoded.
    case encoding(operation: String, message: String)
    /// The server's version predates what the request needs; nothing was sent.
    case unsupported(feature: String, minimum: FirecrackerVersion, server: FirecrackerVersion)
    /// A value the caller passed can never be valid; nothing was sent.
    case invalidArgument(String, hint: String)

    public enum TransportFailure: Error, Sendable, Hashable, CustomStringConvertible {
        /// No file at the socket path.
        case socketMissing
        /// A file is there, but nothing accepts connections on it (a stale socket, or not yet listening).
        case connectionRefused
        /// No complete answer within the call's timeout.
        case timedOut(milliseconds: Int64)
        /// The server closed the connection before answering.
        case connectionClosed
        /// Any other socket error, with the system's text.
        case io(String)

        public var description: String {
            switch self {
            case .socketMissing: "socket does not exist"
            case .connectionRefused: "connection refused"
            case .timedOut(let ms): "no answer within \(ms) ms"
            case .connectionClosed: "connection closed before an answer"
            case .io(let message): message
            }
        }
    }

    public var description: String {
        switch self {
        case .transport(let failure, let operation, let socketPath):
            "\(operation) on \(socketPath): \(failure). Hint: \(hint)"
        case .api(let status, let faultMessage, let operation, let requestBody):
            "\(operation) failed with HTTP \(status): \(faultMessage)"
                + (requestBody.map { " (request body: \($0))" } ?? "") + ". Hint: \(hint)"
        case .decoding(let operation, let type, let message, let body):
            "\(operation): could not decode \(type): \(message) (body: \(body)). Hint: \(hint)"
        case .encoding(let operation, let message):
            "\(operation): could not encode the request body: \(message). Hint: \(hint)"
        case .unsupported(let feature, let minimum, let server):
            "\(feature) needs Firecracker \(minimum) or newer; the server is \(server). Hint: \(hint)"
        case .invalidArgument(let message, let hint):
            "\(message). Hint: \(hint)"
        }
    }

    public var hint: String {
        switch self {
        case .transport(.socketMissing, _, _):
            "is Firecracker running with --api-sock at this path (inside the jail, under root/)?"
        case .transport(.connectionRefused, _, _):
            "the socket file exists but nobody listens: Firecracker has exited (it leaves its socket behind) or is still starting; wait with waitUntilReady"
        case .transport(.timedOut, _, _):
            "the VMM is busy or hung; raise the call's timeout or check that the process is alive"
        case .transport(.connectionClosed, _, _):
            "Firecracker closed the connection, usually because it exited; check its exit status and log"
        case .transport(.io, _, _):
            "check the socket path and permissions"
        case .api(let status, _, _, _) where status == 413:
            "Firecracker refuses bodies over 51,200 bytes; send less data (for MMDS, split it up)"
        case .api:
            "Firecracker's own message above says what it refused; see its log for more"
        case .decoding:
            "the server's answer does not match the API spec this client implements; check the Firecracker version"
        case .encoding:
            "the value cannot be represented as JSON (for example a non-finite number)"
        case .unsupported(_, let minimum, _):
            "run Firecracker \(minimum) or newer, or leave this field unset"
        case .invalidArgument(_, let hint):
            hint
        }
    }
}
