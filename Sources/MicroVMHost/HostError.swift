/// A failure of a host mechanism, with a hint that says what to do about it.
public enum HostError: Error, Sendable, Hashable, CustomStringConvertible {
    case system(SystemCallError, hint: String)
    case invalidArgument(String, hint: String)

    public var hint: String {
        switch self {
        case .system(_, let hint), .invalidArgument(_, let hint): hint
        }
    }

    public var description: String {
        switch self {
        case .system(let error, let hint): "\(error). Hint: \(hint)"
        case .invalidArgument(let message, let hint): "\(message). Hint: \(hint)"
        }
    }
}
