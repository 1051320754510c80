public import Logging
public import NIOCore
public import NIOPosix

import struct Foundation.Data
import class Foundation.JSONDecoder

/// A typed client for one Firecracker process's API socket.
///
/// Calls are sent one at a time over a single keep-alive connection (Firecracker serves one
/// connection sequentially; pipelining buys nothing). Every call has a timeout. Requests that
/// need a newer Firecracker than the server fail locally, before anything is sent; the server's
/// version is asked once, and only when a request needs more than ``FirecrackerVersion/baseline``.
///
/// Answers that carry `Deprecation: true` (a deprecated endpoint or field was used) are
/// reported three ways: a warning through the client's logger naming the call and, where the
/// client can tell from the body it sent, the deprecated fields; the
/// ``deprecationNotices`` list (the last ``maximumDeprecationNotices``); and the optional
/// `deprecationHandler` given to the initializer.
public actor FirecrackerClient {
    public struct Configuration: Sendable, Hashable {
        /// Time allowed for one complete exchange unless the call names its own.
        public var requestTimeout: Duration
        /// Time allowed to establish the connection.
        public var connectTimeout: Duration

        public init(requestTimeout: Duration = .seconds(10), connectTimeout: Duration = .seconds(2)) {
            self.requestTimeout = requestTimeout
            self.connectTimeout = connectTimeout
        }
    }

    /// The socket path on this host (for a jailed VMM: the path under the jail's `root/`).
    public nonisolated let socketPath: String
    public nonisolated let configuration: Configuration
    private let logger: Logger
    private let group: any EventLoopGroup
    private var connection: UnixSocketHTTPConnection?
    private var knownServerVersion: FirecrackerVersion?
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private let deprecationHandler: (@Sendable (DeprecationNotice) -> Void)?

    /// How many deprecation notices ``deprecationNotices`` keeps.
    public static let maximumDeprecationNotices = 32

    /// The most recent answers marked `Deprecation: true`, oldest first (at most
    /// ``maximumDeprecationNotices``).
    public private(set) var deprecationNotices: [DeprecationNotice] = []

    /// - Parameter deprecationHandler: called (on the client's actor, so keep it short) for
    ///   every answer marked `Deprecation: true`, after the warning is logged.
    public init(
        socketPath: String,
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "microvm.firecracker-api"),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        deprecationHandler: (@Sendable (DeprecationNotice) -> Void)? = nil
    ) {
        self.socketPath = socketPath
        self.configuration = configuration
        self.logger = logger
        self.group = eventLoopGroup
        self.deprecationHandler = deprecationHandler
    }

    /// Forgets the recorded deprecation notices.
    public func clearDeprecationNotices() {
        deprecationNotices.removeAll()
    }

    // MARK: Sending

    /// Sends a request and returns whatever status came back. Only transport failures and
    /// version gating throw; use ``perform(_:timeout:)`` for calls that must succeed.
    public func send(
        _ request: APIRequest, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) -> APIResponse {
        if request.minimumVersion > .baseline {
            let server = try await serverVersion()
            if server < request.minimumVersion {
                throw .unsupported(
                    feature: request.feature, minimum: request.minimumVersion, server: server)
            }
        }
        return try await exchange(request, timeout: timeout ?? configuration.requestTimeout)
    }

    /// Sends a request that must succeed (2xx); its body, if any, is ignored.
    public func perform(
        _ request: APIRequest, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) {
        let response = try await send(request, timeout: timeout)
        try check(response, for: request)
    }

    /// Sends a request that must answer 200 with a JSON body of type `R`.
    public func perform<R: Decodable & Sendable>(
        _ request: APIRequest, as type: R.Type, timeout: Duration? = nil
    ) async throws(FirecrackerAPIError) -> R {
        let response = try await send(request, timeout: timeout)
        try check(response, for: request)
        return try Self.decode(R.self, from: response.body, operation: request.feature)
    }

    /// The version of the Firecracker behind the socket, asked once and remembered.
    public func serverVersion() async throws(FirecrackerAPIError) -> FirecrackerVersion {
        if let knownServerVersion { return knownServerVersion }
        let request = APIRequest(method: .get, path: "/version")
        let response = try await exchange(request, timeout: configuration.requestTimeout)
        try check(response, for: request)
        struct Reply: Decodable, Sendable {
            let firecracker_version: FirecrackerVersion
        }
        let version = try Self.decode(Reply.self, from: response.body, operation: request.feature)
            .firecracker_version
        knownServerVersion = version
        return version
    }

    /// Waits until Firecracker answers on the socket, polling with exponential backoff.
    ///
    /// The socket file appears before the server listens, so only an answer proves readiness.
    /// A missing socket, a refused or dropped connection are retried until `timeout`; any other
    /// failure is final. Honours task cancellation.
    public func waitUntilReady(
        timeout: Duration = .seconds(5), initialBackoff: Duration = .milliseconds(1),
        maximumBackoff: Duration = .milliseconds(50)
    ) async throws(FirecrackerAPIError) {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var backoff = initialBackoff
        let probe = APIRequest(method: .get, path: "/")
        while true {
            let remaining = deadline - clock.now
            do {
                let response = try await exchange(
                    probe, timeout: min(configuration.requestTimeout, max(remaining, .milliseconds(10))))
                try check(response, for: probe)
                return
            } catch {
                guard case .transport(let failure, _, _) = error else { throw error }
                switch failure {
                case .socketMissing, .connectionRefused, .connectionClosed, .timedOut: break
                case .io: throw error
                }
                if clock.now + backoff >= deadline {
                    throw .transport(
                        .timedOut(milliseconds: timeout.nanoseconds / 1_000_000),
                        operation: "waiting for the API (last: \(failure))", socketPath: socketPath)
                }
            }
            do {
                try await Task.sleep(for: backoff)
            } catch {
                throw .transport(.io("cancelled"), operation: "waiting for the API", socketPath: socketPath)
            }
            backoff = min(backoff * 2, maximumBackoff)
        }
    }

    /// Closes the connection. The client can still be used; the next call reconnects.
    public func close() async {
        let connection = self.connection
        self.connection = nil
        await connection?.close()
    }

    // MARK: Internals

    private func exchange(
        _ request: APIRequest, timeout: Duration
    ) async throws(FirecrackerAPIError) -> APIResponse {
        await acquire()
        defer { release() }
        do {
            let connection = try await currentConnection()
            let response = try await connection.exchange(
                method: request.method, path: request.path, body: request.body, timeout: timeout)
            logger.trace(
                "firecracker api", metadata: ["call": "\(request.feature)", "status": "\(response.status)"])
            if response.isDeprecated {
                noteDeprecation(request, response)
            }
            return response
        } catch {
            let stale = self.connection
            self.connection = nil
            await stale?.close()
            throw .transport(error, operation: request.feature, socketPath: socketPath)
        }
    }

    private func currentConnection() async throws(FirecrackerAPIError.TransportFailure)
        -> UnixSocketHTTPConnection
    {
        if let connection, connection.isActive { return connection }
        let fresh = try await UnixSocketHTTPConnection.connect(
            socketPath: socketPath, group: group, connectTimeout: configuration.connectTimeout)
        connection = fresh
        return fresh
    }

    /// One exchange at a time: the actor is reentrant across the network wait.
    private func acquire() async {
        if !busy {
            busy = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    private func release() {
        if waiters.isEmpty {
            busy = false
        } else {
            waiters.removeFirst().resume()
        }
    }

    private func noteDeprecation(_ request: APIRequest, _ response: APIResponse) {
        let notice = DeprecationNotice(
            operation: "\(request.method.rawValue) \(request.path)", status: response.status,
            fields: DeprecationNotice.deprecatedFields(method: request.method, path: request.path, body: request.body),
            headerValue: response.headers["deprecation"]?.trimmingSpaces ?? "true")
        logger.warning(
            "Firecracker reports a deprecated API use: \(notice)",
            metadata: [
                "call": "\(notice.operation)",
                "deprecated_fields": "\(notice.fields.joined(separator: ","))",
            ])
        deprecationNotices.append(notice)
        if deprecationNotices.count > Self.maximumDeprecationNotices {
            deprecationNotices.removeFirst(deprecationNotices.count - Self.maximumDeprecationNotices)
        }
        deprecationHandler?(notice)
    }

    private func check(_ response: APIResponse, for request: APIRequest) throws(FirecrackerAPIError) {
        guard !(200..<300).contains(response.status) else { return }
        throw .api(
            status: response.status,
            faultMessage: Self.faultMessage(in: response.body),
            operation: request.feature,
            requestBody: request.body.map { String(decoding: $0, as: UTF8.self) })
    }

    /// Firecracker's text from an error body: `{"fault_message": "..."}` (the usual shape) or
    /// `{"error": "..."}` (its HTTP layer's answer to a body over the payload limit, which puts a
    /// raw newline inside the string: strict JSON parsers reject that, so raw control characters
    /// inside strings are escaped before a second attempt). The text is returned verbatim; a
    /// body of neither shape is returned whole, as text.
    static func faultMessage(in body: [UInt8]) -> String {
        struct Fault: Decodable {
            let fault_message: String?
            let error: String?
        }
        for candidate in [body, escapingControlCharactersInStrings(body)] {
            if let fault = try? JSONDecoder().decode(Fault.self, from: Data(candidate)),
                let message = fault.fault_message ?? fault.error
            {
                return message
            }
        }
        return String(decoding: body, as: UTF8.self)
    }

    /// `json` with every raw control character (U+0000 to U+001F) inside a string replaced by
    /// its JSON escape. Characters outside strings are left alone (there they are whitespace or
    /// an error either way).
    static func escapingControlCharactersInStrings(_ json: [UInt8]) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(json.count + 16)
        var inString = false
        var escaped = false
        let hex = Array("0123456789abcdef".utf8)
        for byte in json {
            if inString {
                if escaped {
                    escaped = false
                } else if byte == UInt8(ascii: "\\") {
                    escaped = true
                } else if byte == UInt8(ascii: "\"") {
                    inString = false
                } else if byte < 0x20 {
                    switch byte {
                    case 0x0A: result += Array("\\n".utf8)
                    case 0x0D: result += Array("\\r".utf8)
                    case 0x09: result += Array("\\t".utf8)
                    default: result += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
                    }
                    continue
                }
            } else if byte == UInt8(ascii: "\"") {
                inString = true
            }
            result.append(byte)
        }
        return result
    }

    static func decode<R: Decodable>(
        _ type: R.Type, from body: [UInt8], operation: String
    ) throws(FirecrackerAPIError) -> R {
        do {
            return try JSONDecoder().decode(R.self, from: Data(body))
        } catch {
            throw .decoding(
                operation: operation, type: String(describing: R.self), message: "\(error)",
                body: String(decoding: body.prefix(2048), as: UTF8.self))
        }
    }
}
