import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// A tiny HTTP/1.1 server on a Unix socket that plays Firecracker for transport tests: faults
/// the real binary cannot be made to produce on demand (a server that never answers, one that
/// drops the connection) and a record of exactly what the client sent.
final class StubAPIServer: Sendable {
    struct Request: Sendable, Hashable {
        let method: String
        let uri: String
        let body: String
    }

    enum Reply: Sendable {
        case respond(status: Int, body: String)
        /// An answer with extra headers (for example `Deprecation: true`); the body is sent
        /// byte for byte, so it may be JSON a strict parser rejects, as Firecracker's can be.
        case respondWithHeaders(status: Int, body: String, headers: [String: String])
        case neverAnswer
        case closeConnection
    }

    let socketPath: String
    private let channel: any Channel
    private let recorder = Recorder()

    /// What the server saw, shared with the connection handlers.
    private final class Recorder: Sendable {
        let state = Mutex<(requests: [Request], connections: Int)>(([], 0))
    }

    var requests: [Request] { recorder.state.withLock { $0.requests } }
    var connections: Int { recorder.state.withLock { $0.connections } }

    /// A fresh socket path in a directory of its own (removed by `shutdown`).
    static func makeSocketPath() -> String {
        let directory = "/tmp/microvm-stub-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(directory, 0o700)
        return directory + "/api.sock"
    }

    init(socketPath: String = StubAPIServer.makeSocketPath(), handler: @escaping @Sendable (Request) -> Reply) async throws {
        self.socketPath = socketPath
        let recorder = self.recorder
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                recorder.state.withLock { $0.connections += 1 }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(Handler(recorder: recorder, handler: handler))
                }
            }
            .bind(unixDomainSocketPath: socketPath)
            .get()
    }

    func shutdown() async {
        try? await channel.close()
        unlink(socketPath)
        rmdir(String(socketPath.dropLast("/api.sock".count)))
    }

    /// Runs `body` with a server and always shuts it down.
    static func with<T>(
        handler: @escaping @Sendable (Request) -> Reply,
        _ body: (StubAPIServer) async throws -> T
    ) async throws -> T {
        let server = try await StubAPIServer(handler: handler)
        do {
            let result = try await body(server)
            await server.shutdown()
            return result
        } catch {
            await server.shutdown()
            throw error
        }
    }

    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let recorder: Recorder
        let handler: @Sendable (Request) -> Reply
        var head: HTTPRequestHead?
        var body: [UInt8] = []

        init(recorder: Recorder, handler: @escaping @Sendable (Request) -> Reply) {
            self.recorder = recorder
            self.handler = handler
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let head):
                self.head = head
                body = []
            case .body(var buffer):
                body += buffer.readBytes(length: buffer.readableBytes) ?? []
            case .end:
                guard let head else { return }
                let request = Request(
                    method: head.method.rawValue, uri: head.uri, body: String(decoding: body, as: UTF8.self))
                recorder.state.withLock { $0.requests.append(request) }
                switch handler(request) {
                case .neverAnswer:
                    break
                case .closeConnection:
                    context.close(promise: nil)
                case .respond(let status, let text):
                    respond(context: context, status: status, text: text, extra: [:])
                case .respondWithHeaders(let status, let text, let extra):
                    respond(context: context, status: status, text: text, extra: extra)
                }
            }
        }

        private func respond(context: ChannelHandlerContext, status: Int, text: String, extra: [String: String]) {
            var headers = HTTPHeaders()
            headers.add(name: "Content-Length", value: String(text.utf8.count))
            if !text.isEmpty { headers.add(name: "Content-Type", value: "application/json") }
            for (name, value) in extra.sorted(by: { $0.key < $1.key }) { headers.add(name: name, value: value) }
            let responseHead = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers)
            context.write(wrapOutboundOut(.head(responseHead)), promise: nil)
            if !text.isEmpty {
                context.write(
                    wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))),
                    promise: nil)
            }
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }
}
