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

    public init(
        socketPath: String,
        configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "microvm.firecracker-api"),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) {
        self.socketPath = socketPath
        self.configuration = configuration
        self.logger = logger
        self.group = eventLoopGroup
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

    private func check(_ response: APIResponse, for request: APIRequest) throws(FirecrackerAPIError) {
        guard !(200..<300).contains(response.status) else { return }
        throw .api(
            status: response.status,
            faultMessage: Self.faultMessage(in: response.body),
            operation: request.feature,
            requestBody: request.body.map { String(decoding: $0, as: UTF8.self) })
    }

    /// Firecracker's `{"fault_message": "..."}`, or the raw body when it is not that shape.
    static func faultMessage(in body: [UInt8]) -> String {
        struct Fault: Decodable { let fault_message: String }
        if let fault = try? JSONDecoder().decode(Fault.self, from: Data(body)) {
            return fault.fault_message
        }
        return String(decoding: body, as: UTF8.self)
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
