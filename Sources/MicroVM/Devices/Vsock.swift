import FirecrackerAPI
import Logging
import MicroVMHost
import NIOCore
import NIOPosix
import Synchronization
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

// vsock between the host and the guest, both directions, over Firecracker's Unix sockets:
//
// - host-initiated: connect to the device's socket (``MicroVM/vsockPath``), send
//   `CONNECT <port>\n`, read `OK <host port>\n`; the rest of the stream is the guest's.
// - guest-initiated: a connection to host port P arrives on `<vsockPath>_P`, where the host
//   must listen; a jailed Firecracker runs as the jail's user and must be able to connect.
//
// Reads are pulled: the socket is read only when the caller asks for more (SwiftNIO with
// auto-read off), so a slow reader holds back the guest instead of buffering without bound.

extension MicroVM {
    /// Opens a connection to `port` in the guest (which must listen on it). Fails if the guest
    /// refuses (Firecracker closes the socket without `OK`) or does not answer within
    /// `timeout`.
    public func connectVsock(port: UInt32, timeout: Duration = .seconds(5)) async throws(MicroVMError) -> VsockConnection {
        let vmID = id.rawValue
        try VMOperation.updateDevice.check(in: state, id: vmID)
        let path = try vsockSocketPath(suffix: "")
        // The socket's directory belongs to the VM user: a compromised VMM could leave a link
        // there to a host socket. Connect only to a socket, never through a link.
        var status = stat()
        guard lstat(path.string, &status) == 0, status.st_mode & S_IFMT == S_IFSOCK else {
            throw .file(id: vmID, SystemCallError(call: "lstat (expecting the vsock device's socket)", subject: path.string, errno: errno == 0 ? EINVAL : errno))
        }
        let connection = try await VsockConnection.connect(path: path.string, port: port, vmID: vmID, timeout: timeout)
        logger.debug("vsock connected (host-initiated)", metadata: ["port": "\(port)", "host_port": "\(connection.hostPort.map(String.init) ?? "-")"])
        return connection
    }

    /// Listens for guest-initiated connections to host port `port` (on `<vsockPath>_<port>`;
    /// a path too long for a socket address is bound through the VMM's working directory).
    ///
    /// The socket is handed to the user Firecracker runs as (the jail's uid and gid for a
    /// jailed VM), which must be able to connect to it. The listener is closed and its socket
    /// removed when the VMM ends; ``VsockListener/close()`` does it earlier.
    public func listenVsock(port: UInt32) async throws(MicroVMError) -> VsockListener {
        let vmID = id.rawValue
        guard state.isLive else {
            throw .invalidState(id: vmID, operation: "listen on vsock port \(port)", state: state, allowed: ["created", "running", "paused"])
        }
        let path = try vsockSocketPath(suffix: "_\(port)")
        let listener = try await VsockListener.listen(path: path, port: port, owner: vmmOwner, vmID: vmID, logger: logger)
        await onTeardown { await listener.close() }
        logger.debug("vsock listening (guest-initiated)", metadata: ["port": "\(port)", "path": "\(path)"])
        return listener
    }

    /// The host path of the device socket plus `suffix`, within `sun_path`'s limit: through the
    /// VMM's working directory (the VM's directory) when the path itself is too long.
    private nonisolated func vsockSocketPath(suffix: String) throws(MicroVMError) -> FilePath {
        guard let base = vsockPath else {
            throw .invalidSpec(
                id: id.rawValue, problems: [SpecProblem(field: "vsock", message: "the VM has no vsock device", hint: "add `vsock: {guest_cid: 3}` to the spec")])
        }
        let path = SocketPath.connectable(base.string + suffix, vmDirectory: directory.string, vmmPID: pid)
        let length = path.utf8.count
        guard length <= Self.vsockSocketPathLimit else {
            throw .sandbox(id: id.rawValue, .socketPathTooLong(path: path, length: length, limit: Self.vsockSocketPathLimit))
        }
        return FilePath(path)
    }

    /// The longest Unix socket path the host side can use (SwiftNIO's limit, stricter than Linux's).
    static let vsockSocketPathLimit = JailLayout.maximumSocketPathLength
}

/// One vsock stream between the host and a guest port. Sendable; one reader and any number of
/// writers at a time. Close it when done; dropping it closes it too. After the VMM ended, reads
/// return nil (end of stream) and writes fail.
public final class VsockConnection: Sendable {
    /// The guest's port.
    public let port: UInt32
    /// For a host-initiated connection, the host-side port Firecracker assigned (`OK <port>`).
    public let hostPort: UInt32?
    let channel: any Channel
    let inbound: VsockInbound
    let vmID: String

    /// False for the handshake's temporary handle, whose channel lives on in the real one.
    private let closesOnDeinit: Bool

    init(channel: any Channel, inbound: VsockInbound, port: UInt32, hostPort: UInt32?, vmID: String, closesOnDeinit: Bool = true) {
        self.channel = channel
        self.inbound = inbound
        self.port = port
        self.hostPort = hostPort
        self.vmID = vmID
        self.closesOnDeinit = closesOnDeinit
    }

    /// A connection dropped without ``close()`` is closed here: with reads pulled, nothing
    /// else would notice that the peer went away, and the descriptor would stay open.
    deinit {
        if closesOnDeinit { channel.close(promise: nil) }
    }

    /// Sends `bytes`; returns once the kernel took them.
    public func write(_ bytes: some Sequence<UInt8>) async throws(MicroVMError) {
        do {
            try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
        } catch {
            throw Self.ioError(error, call: "write", port: port, vmID: vmID)
        }
    }

    /// The next bytes from the guest, as soon as some are there; nil once the stream ended.
    /// Cancelling the task closes the connection.
    public func read() async throws(MicroVMError) -> [UInt8]? {
        while true {
            switch inbound.take() {
            case .data(let bytes): return bytes
            case .ended(nil): return nil
            case .ended(let failure?):
                throw .file(id: vmID, SystemCallError(call: "read", subject: "vsock port \(port): \(failure)", errno: EIO))
            case .empty:
                let channel = self.channel
                let inbound = self.inbound
                let registered = await withTaskCancellationHandler {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
                        switch inbound.wait(continuation) {
                        case .waiting: channel.read()
                        case .ready: continuation.resume(returning: true)
                        case .busy: continuation.resume(returning: false)
                        }
                    }
                } onCancel: {
                    channel.close(promise: nil)
                }
                if !registered {
                    throw .file(id: vmID, SystemCallError(call: "read", subject: "vsock port \(port) (another read is waiting)", errno: EBUSY))
                }
            }
        }
    }

    /// Exactly `count` bytes; fails if the stream ends first.
    public func read(exactly count: Int) async throws(MicroVMError) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        while result.count < count {
            guard let chunk = try await read() else {
                throw .file(id: vmID, SystemCallError(call: "read", subject: "vsock port \(port): stream ended after \(result.count) of \(count) bytes", errno: EPIPE))
            }
            let wanted = count - result.count
            if chunk.count > wanted {
                result += chunk[..<wanted]
                inbound.pushBack(Array(chunk[wanted...]))
            } else {
                result += chunk
            }
        }
        return result
    }

    /// The next line (without its `\n`); nil at the end of the stream (a last line without
    /// `\n` is returned first). Lines over `limit` bytes are an error.
    public func readLine(limit: Int = 64 * 1024) async throws(MicroVMError) -> String? {
        var line: [UInt8] = []
        while true {
            guard let chunk = try await read() else {
                return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
            }
            if let newline = chunk.firstIndex(of: UInt8(ascii: "\n")) {
                line += chunk[..<newline]
                if newline + 1 < chunk.count { inbound.pushBack(Array(chunk[(newline + 1)...])) }
                return String(decoding: line, as: UTF8.self)
            }
            line += chunk
            if line.count > limit {
                throw .file(id: vmID, SystemCallError(call: "read", subject: "vsock port \(port): line over \(limit) bytes", errno: EMSGSIZE))
            }
        }
    }

    /// Closes the stream (the guest sees the peer shut down).
    public func close() async {
        try? await channel.close().get()
    }

    /// Host-initiated: connect, `CONNECT <port>\n`, `OK <host port>\n`.
    static func connect(path: String, port: UInt32, vmID: String, timeout: Duration) async throws(MicroVMError) -> VsockConnection {
        let inbound = VsockInbound()
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelOption(ChannelOptions.autoRead, value: false)
                .connectTimeout(TimeAmount(timeout))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(VsockHandler(inbound)) }
                }
                .connect(unixDomainSocketPath: path).get()
        } catch {
            throw ioError(error, call: "connect", port: port, vmID: vmID, path: path)
        }
        let pending = VsockConnection(channel: channel, inbound: inbound, port: port, hostPort: nil, vmID: vmID, closesOnDeinit: false)
        // The guest may never answer (no vsock driver, or not yet running): bound the handshake.
        let deadline = channel.eventLoop.scheduleTask(in: TimeAmount(timeout)) { inbound.timedOut(); channel.close(promise: nil) }
        defer { deadline.cancel() }
        do throws(MicroVMError) {
            try await pending.write(Array("CONNECT \(port)\n".utf8))
            guard let answer = try await pending.readLine(limit: 64) else {
                throw .file(
                    id: vmID,
                    SystemCallError(
                        call: "vsock CONNECT \(port)",
                        subject: inbound.didTimeOut
                            ? "\(path): no answer within \(timeout)"
                            : "\(path): Firecracker closed the connection without OK (is the guest listening on port \(port)?)",
                        errno: inbound.didTimeOut ? ETIMEDOUT : ECONNREFUSED))
            }
            let parts = answer.split(separator: " ")
            guard parts.count == 2, parts[0] == "OK", let hostPort = UInt32(parts[1]) else {
                throw .file(id: vmID, SystemCallError(call: "vsock CONNECT \(port)", subject: "\(path): unexpected answer '\(answer.prefix(64))'", errno: EPROTO))
            }
            return VsockConnection(channel: channel, inbound: inbound, port: port, hostPort: hostPort, vmID: vmID)
        } catch {
            await pending.close()
            throw error
        }
    }

    static func ioError(_ error: any Error, call: String, port: UInt32, vmID: String, path: String? = nil) -> MicroVMError {
        let code: Int32
        if let error = error as? IOError {
            code = error.errnoCode
        } else if let error = error as? ChannelError, case .connectTimeout = error {
            code = ETIMEDOUT
        } else if error is ChannelError {
            code = EPIPE
        } else {
            code = EIO
        }
        return .file(id: vmID, SystemCallError(call: call, subject: "vsock port \(port)" + (path.map { " (\($0))" } ?? ""), errno: code))
    }
}

/// Accepts the guest's connections to one host port. Sendable.
public final class VsockListener: Sendable {
    /// The host port the guest connects to.
    public let port: UInt32
    /// The socket's host path (`<vsockPath>_<port>`).
    public let path: FilePath
    /// Accepted connections, in order; finishes when the listener closes. One consumer.
    public let connections: AsyncStream<VsockConnection>
    private let continuation: AsyncStream<VsockConnection>.Continuation
    private let channel: any Channel
    private let closed = Mutex(false)

    private init(port: UInt32, path: FilePath, channel: any Channel, connections: AsyncStream<VsockConnection>, continuation: AsyncStream<VsockConnection>.Continuation) {
        self.port = port
        self.path = path
        self.channel = channel
        self.connections = connections
        self.continuation = continuation
    }

    /// The next connection the guest opens; nil once the listener is closed (or the task
    /// cancelled).
    public func accept() async -> VsockConnection? {
        var iterator = connections.makeAsyncIterator()
        return await iterator.next()
    }

    /// Stops listening and removes the socket. Connections already accepted stay open.
    /// Idempotent.
    public func close() async {
        let wasClosed = closed.withLock { closed in
            defer { closed = true }
            return closed
        }
        if wasClosed { return }
        try? await channel.close().get()
        continuation.finish()
        let path = self.path.string
        _ = try? await NIOThreadPool.singleton.runIfActive { unlink(path) }
    }

    static func listen(path: FilePath, port: UInt32, owner: (uid: UInt32, gid: UInt32), vmID: String, logger: Logger) async throws(MicroVMError) -> VsockListener {
        let (connections, continuation) = AsyncStream<VsockConnection>.makeStream()
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(ChannelOptions.backlog, value: 16)
                .childChannelOption(ChannelOptions.autoRead, value: false)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        let inbound = VsockInbound()
                        // Handed out only once active: a read requested on a channel not yet
                        // registered is dropped by NIO, and the reader would wait forever.
                        let connection = VsockConnection(channel: child, inbound: inbound, port: port, hostPort: nil, vmID: vmID)
                        try child.pipeline.syncOperations.addHandler(VsockHandler(inbound) { continuation.yield(connection) })
                    }
                }
                .bind(unixDomainSocketPath: path.string, cleanupExistingSocketFile: true).get()
        } catch {
            continuation.finish()
            throw VsockConnection.ioError(error, call: "bind", port: port, vmID: vmID, path: path.string)
        }
        let listener = VsockListener(port: port, path: path, channel: channel, connections: connections, continuation: continuation)
        // Connecting needs write permission on the socket: give it to Firecracker's user
        // (lchown: never through a link planted in the VM's directory).
        let owned: Int32 = (try? await NIOThreadPool.singleton.runIfActive { () -> Int32 in
            if lchown(path.string, owner.uid, owner.gid) != 0 { return errno }
            return chmod(path.string, 0o600) == 0 ? 0 : errno
        }) ?? ECANCELED
        if owned != 0 {
            await listener.close()
            throw .file(id: vmID, SystemCallError(call: "lchown/chmod", subject: path.string, errno: owned))
        }
        return listener
    }
}

/// What one vsock channel has received and not yet handed out, and the reader waiting for it.
final class VsockInbound: Sendable {
    enum Take {
        case data([UInt8])
        case ended(String?)
        case empty
    }

    enum Wait {
        case waiting, ready, busy
    }

    private struct State {
        var buffer: [UInt8] = []
        var ended = false
        var failure: String?
        var waiter: CheckedContinuation<Bool, Never>?
        var timedOut = false
    }

    private let state = Mutex(State())

    func take() -> Take {
        state.withLock { state in
            if !state.buffer.isEmpty {
                defer { state.buffer = [] }
                return .data(state.buffer)
            }
            return state.ended ? .ended(state.failure) : .empty
        }
    }

    /// Registers the reader unless data or the end is already there (then it goes on at once).
    func wait(_ continuation: CheckedContinuation<Bool, Never>) -> Wait {
        state.withLock { state in
            if !state.buffer.isEmpty || state.ended { return .ready }
            if state.waiter != nil { return .busy }
            state.waiter = continuation
            return .waiting
        }
    }

    /// Bytes read past what the caller wanted, handed out first next time.
    func pushBack(_ bytes: [UInt8]) {
        state.withLock { $0.buffer = bytes + $0.buffer }
    }

    func received(_ bytes: [UInt8]) {
        let waiter = state.withLock { state in
            state.buffer += bytes
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)
    }

    func ended(failure: String?) {
        let waiter = state.withLock { state in
            state.ended = true
            if state.failure == nil { state.failure = failure }
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: true)
    }

    func timedOut() {
        state.withLock { $0.timedOut = true }
    }

    var didTimeOut: Bool { state.withLock { $0.timedOut } }
}

/// Feeds a channel's bytes into its ``VsockInbound``.
final class VsockHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let inbound: VsockInbound
    /// Called once, then dropped: it holds the connection, which holds the channel.
    private let onActive: Mutex<(@Sendable () -> Void)?>

    init(_ inbound: VsockInbound, onActive: (@Sendable () -> Void)? = nil) {
        self.inbound = inbound
        self.onActive = Mutex(onActive)
    }

    func channelActive(context: ChannelHandlerContext) {
        let action = onActive.withLock { action in
            defer { action = nil }
            return action
        }
        action?()
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        onActive.withLock { $0 = nil }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if let bytes = buffer.readBytes(length: buffer.readableBytes), !bytes.isEmpty {
            inbound.received(bytes)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbound.ended(failure: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbound.ended(failure: "\(error)")
        context.close(promise: nil)
    }
}
