/// Why a call to Firecracker's API failed. Every case says which call it was and carries a hint
/// a user can act on.
///
/// The ``description`` is meant for logs: it is one line, never ends a sentence with two
/// periods, and never prints a whole request body. Bodies are cut to a short excerpt (at most
/// ``bodyExcerptLimit`` characters), and the body of an MMDS request (`PUT`/`PATCH /mmds`, which
/// often carries credentials) is never printed at all, only its size. Code that needs the full
/// body reads ``requestBody``.
public enum FirecrackerAPIError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The socket could not be reached or the exchange broke off.
    case transport(TransportFailure, operation: String, socketPath: String)
    /// Firecracker answered with an error status; `faultMessage` is its text, verbatim (from
    /// `{"fault_message": ...}`, or from `{"error": ...}` for a body over the payload limit).
    /// `requestBody` is the complete body that was sent; ``description`` prints only an excerpt.
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

    /// The most characters of a request or response body that ``description`` prints.
    public static let bodyExcerptLimit = 200

    /// Firecracker's default limit on the size of an API request body, in bytes
    /// (`--http-api-max-payload-size`).
    public static let defaultPayloadLimit = 51_200

    /// The complete request body of an ``api(status:faultMessage:operation:requestBody:)``
    /// error, unredacted; nil for other cases and for bodyless requests.
    public var requestBody: String? {
        if case .api(_, _, _, let body) = self { body } else { nil }
    }

    /// The HTTP status of an ``api(status:faultMessage:operation:requestBody:)`` error.
    public var status: Int? {
        if case .api(let status, _, _, _) = self { status } else { nil }
    }

    /// True when Firecracker refused the request because its body exceeded the API's payload
    /// limit (HTTP 400 with `{"error": "Request payload with size N is larger than the limit ..."}`).
    public var isPayloadTooLarge: Bool {
        guard case .api(400, let message, _, _) = self else { return false }
        return message.hasPrefix("Request payload with size") && message.contains("larger than the limit")
    }

    public var description: String {
        switch self {
        case .transport(let failure, let operation, let socketPath):
            Self.sentences("\(operation) on \(socketPath): \(failure)", "Hint: \(hint)")
        case .api(let status, let faultMessage, let operation, let requestBody):
            Self.sentences(
                "\(operation) failed with HTTP \(status): \(Self.oneLine(faultMessage))",
                requestBody.map { Self.bodySummary($0, operation: operation) }, "Hint: \(hint)")
        case .decoding(let operation, let type, let message, let body):
            Self.sentences(
                "\(operation): could not decode \(type): \(Self.oneLine(message))",
                Self.isMMDS(operation)
                    ? "Answer body withheld (MMDS data, \(body.utf8.count) bytes)"
                    : "Answer body: \(Self.excerpt(body))",
                "Hint: \(hint)")
        case .encoding(let operation, let message):
            Self.sentences("\(operation): could not encode the request body: \(message)", "Hint: \(hint)")
        case .unsupported(let feature, let minimum, let server):
            Self.sentences("\(feature) needs Firecracker \(minimum) or newer; the server is \(server)", "Hint: \(hint)")
        case .invalidArgument(let message, let hint):
            Self.sentences(message, "Hint: \(hint)")
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
        case .api(413, _, _, _):
            "the MMDS data store is full (Firecracker's \"MMDS limit exceeded\"): store less data, or start Firecracker with a larger --mmds-size-limit (in bytes; it defaults to the API payload limit, 51200)"
        case .api(_, _, let operation, _) where isPayloadTooLarge:
            Self.isMMDS(operation)
                ? "the request body is over Firecracker's API payload limit (51200 bytes unless --http-api-max-payload-size says otherwise): send the MMDS data in smaller PATCH /mmds pieces, or raise --http-api-max-payload-size (and --mmds-size-limit)"
                : "the request body is over Firecracker's API payload limit (51200 bytes unless --http-api-max-payload-size says otherwise): send less data, or start Firecracker with a larger --http-api-max-payload-size"
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

    // MARK: Formatting

    /// Joins sentences with ". ", dropping the trailing periods and spaces of each part first,
    /// so that a part ending in '.' (as Firecracker's messages do) never yields "..".
    static func sentences(_ parts: String?...) -> String {
        parts.compactMap { part -> String? in
            guard var part else { return nil }
            while let last = part.last, last == "." || last.isWhitespace { part.removeLast() }
            return part.isEmpty ? nil : part
        }.joined(separator: ". ")
    }

    /// Control characters (Firecracker's multi-line messages) become spaces, so that a log
    /// line stays one line.
    static func oneLine(_ text: String) -> String {
        var result = ""
        result.unicodeScalars.reserveCapacity(text.unicodeScalars.count)
        var lastWasSpace = false
        for scalar in text.unicodeScalars {
            if scalar.properties.generalCategory == .control {
                if !lastWasSpace { result.unicodeScalars.append(" ") }
                lastWasSpace = true
            } else {
                result.unicodeScalars.append(scalar)
                lastWasSpace = scalar == " "
            }
        }
        return result
    }

    /// At most ``bodyExcerptLimit`` characters of `text`, on one line, saying how much was cut.
    static func excerpt(_ text: String) -> String {
        let flat = oneLine(text)
        guard flat.count > bodyExcerptLimit else { return flat }
        return "\(flat.prefix(bodyExcerptLimit))… (\(text.utf8.count) bytes in all)"
    }

    /// What ``description`` says about a request body.
    static func bodySummary(_ body: String, operation: String) -> String {
        if isMMDS(operation) {
            return "Request body withheld (MMDS data, \(body.utf8.count) bytes)"
        }
        return "Request body: \(excerpt(body))"
    }

    /// Whether `operation` (for example `PUT /mmds`) is a call whose body is MMDS data.
    static func isMMDS(_ operation: String) -> Bool {
        let words = operation.split(separator: " ", maxSplits: 2)
        return words.count >= 2 && words[1] == "/mmds"
    }
}
