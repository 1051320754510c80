import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// One keep-alive HTTP/1.1 connection to a Unix socket, carrying one exchange at a time.
///
/// Firecracker's API server answers requests in order on one connection; the client keeps a
/// single connection open (connection setup costs more than the exchange itself) and
/// reconnects only after a failure or a timeout, when the stream's state is unknown.
final class UnixSocketHTTPConnection: Sendable {
    let channel: any Channel
    private let collector: ResponseCollector

    private init(channel: any Channel, collector: ResponseCollector) {
        self.channel = channel
        self.collector = collector
    }

    static func connect(
        socketPath: String, group: any EventLoopGroup, connectTimeout: Duration
    ) async throws(FirecrackerAPIError.TransportFailure) -> UnixSocketHTTPConnection {
        let collector = ResponseCollector()
        do {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.nanoseconds(Int64(connectTimeout.nanoseconds)))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHTTPClientHandlers()
                        try channel.pipeline.syncOperations.addHandler(collector)
                    }
                }
                .connect(unixDomainSocketPath: socketPath)
                .get()
            return UnixSocketHTTPConnection(channel: channel, collector: collector)
        } catch {
            throw Self.classify(error)
        }
    }

    /// Sends one request and waits for its complete response, failing after `timeout`.
    func exchange(
        method: HTTPMethod, path: String, body: [UInt8]?, timeout: Duration
    ) async throws(FirecrackerAPIError.TransportFailure) -> APIResponse {
        let channel = self.channel
        let promise = channel.eventLoop.makePromise(of: APIResponse.self)
        let collector = self.collector
        let timeoutNanos = Int64(timeout.nanoseconds)
        channel.eventLoop.execute {
            var head = HTTPRequestHead(
                version: .http1_1, method: NIOHTTP1.HTTPMethod(rawValue: method.rawValue), uri: path)
            head.headers.add(name: "Host", value: "localhost")
            head.headers.add(name: "Accept", value: "application/json")
            if let body {
                head.headers.add(name: "Content-Type", value: "application/json")
                head.headers.add(name: "Content-Length", value: String(body.count))
            } else if method != .get {
                head.headers.add(name: "Content-Length", value: "0")
            }
            collector.expect(promise)
            let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(timeoutNanos)) {
                promise.fail(TransportError(.timedOut(milliseconds: timeoutNanos / 1_000_000)))
                channel.close(promise: nil)
            }
            promise.futureResult.whenComplete { _ in timer.cancel() }
            channel.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body, !body.isEmpty {
                channel.write(
                    HTTPClientRequestPart.body(.byteBuffer(channel.allocator.buffer(bytes: body))),
                    promise: nil)
            }
            channel.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure { error in
                promise.fail(error)
            }
        }
        do {
            return try await promise.futureResult.get()
        } catch {
            throw Self.classify(error)
        }
    }

    var isActive: Bool { channel.isActive }

    func close() async {
        try? await channel.close()
    }

    private struct TransportError: Error {
        let failure: FirecrackerAPIError.TransportFailure
        init(_ failure: FirecrackerAPIError.TransportFailure) { self.failure = failure }
    }

    private static func classify(_ error: any Error) -> FirecrackerAPIError.TransportFailure {
        if let error = error as? TransportError { return error.failure }
        if let error = error as? IOError {
            switch error.errnoCode {
            case ENOENT: return .socketMissing
            case ECONNREFUSED: return .connectionRefused
            case EPIPE, ECONNRESET: return .connectionClosed
            default: return .io("\(error)")
            }
        }
        if error is ChannelError {
            switch error as! ChannelError {
            case .ioOnClosedChannel, .eof, .alreadyClosed, .outputClosed: return .connectionClosed
            case .connectTimeout(let amount):
                return .timedOut(milliseconds: amount.nanoseconds / 1_000_000)
            default: return .io("\(error)")
            }
        }
        return .io("\(error)")
    }

    /// Gathers the parts of one response and completes the waiting exchange.
    private final class ResponseCollector: ChannelInboundHandler, @unchecked Sendable {
        // Only touched on the channel's event loop.
        typealias InboundIn = HTTPClientResponsePart

        private var pending: EventLoopPromise<APIResponse>?
        private var status = 0
        private var headers: [String: String] = [:]
        private var body: [UInt8] = []

        func expect(_ promise: EventLoopPromise<APIResponse>) {
            pending?.fail(TransportError(.io("a new request replaced one still waiting")))
            pending = promise
            status = 0
            headers = [:]
            body.removeAll(keepingCapacity: true)
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                status = Int(head.status.code)
                headers = [:]
                for (name, value) in head.headers {
                    let key = name.lowercased()
                    headers[key] = headers[key].map { "\($0), \(value)" } ?? value
                }
            case .body(var buffer):
                body.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
            case .end:
                let response = APIResponse(status: status, body: body, headers: headers)
                body = []
                headers = [:]
                let promise = pending
                pending = nil
                promise?.succeed(response)
            }
        }

        func channelInactive(context: ChannelHandlerContext) {
            pending?.fail(TransportError(.connectionClosed))
            pending = nil
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            pending?.fail(error)
            pending = nil
            context.close(promise: nil)
        }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}
