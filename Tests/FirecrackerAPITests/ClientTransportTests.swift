import FirecrackerAPI
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite("Client transport")
struct ClientTransportTests {
    static let version = #"{"firecracker_version":"1.12.1"}"#

    @Test("A missing socket is reported as such")
    func missingSocket() async throws {
        let client = FirecrackerClient(socketPath: "/tmp/microvm-no-such-dir/api.sock")
        await #expect {
            try await client.send(APIRequest(method: .get, path: "/"))
        } throws: { error in
            guard case .transport(.socketMissing, let operation, let path) = error as? FirecrackerAPIError
            else { return false }
            return operation == "GET /" && path == "/tmp/microvm-no-such-dir/api.sock"
        }
    }

    @Test("A stale socket file with no listener is reported as refused")
    func staleSocket() async throws {
        let path = "/tmp/microvm-stale-\(getpid()).sock"
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        close(fd)
        defer { unlink(path) }
        #expect(bound == 0)
        let client = FirecrackerClient(socketPath: path)
        await #expect {
            try await client.send(APIRequest(method: .get, path: "/"))
        } throws: { error in
            guard case .transport(.connectionRefused, _, _) = error as? FirecrackerAPIError else { return false }
            return true
        }
    }

    @Test("A server that never answers times out, and the next call reconnects")
    func timeoutThenReconnect() async throws {
        try await StubAPIServer.with(handler: { request in
            request.uri == "/slow" ? .neverAnswer : .respond(status: 200, body: #"{"state":"Running"}"#)
        }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let start = ContinuousClock.now
            await #expect {
                try await client.send(APIRequest(method: .get, path: "/slow"), timeout: .milliseconds(100))
            } throws: { error in
                guard case .transport(.timedOut(let ms), _, _) = error as? FirecrackerAPIError else { return false }
                return ms == 100
            }
            #expect(ContinuousClock.now - start < .seconds(2))
            let response = try await client.send(APIRequest(method: .get, path: "/"))
            #expect(response.status == 200)
            #expect(server.connections == 2)
        }
    }

    @Test("Calls share one keep-alive connection and are serialized")
    func keepAlive() async throws {
        try await StubAPIServer.with(handler: { _ in .respond(status: 204, body: "") }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<20 {
                    group.addTask {
                        try await client.perform(
                            APIRequest(method: .put, path: "/drives/d\(index)", body: Array("{}".utf8)))
                    }
                }
                try await group.waitForAll()
            }
            #expect(server.connections == 1)
            #expect(server.requests.count == 20)
            #expect(Set(server.requests.map(\.uri)).count == 20)
        }
    }

    @Test("Firecracker's fault message is kept verbatim with the request that caused it")
    func faultMessage() async throws {
        let fault = #"{"fault_message":"The kernel file cannot be opened: No such file or directory (os error 2)"}"#
        try await StubAPIServer.with(handler: { _ in .respond(status: 400, body: fault) }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let body = Array(#"{"kernel_image_path":"/nope"}"#.utf8)
            await #expect {
                try await client.perform(APIRequest(method: .put, path: "/boot-source", body: body))
            } throws: { error in
                guard case .api(let status, let message, let operation, let sent) = error as? FirecrackerAPIError
                else { return false }
                return status == 400
                    && message == "The kernel file cannot be opened: No such file or directory (os error 2)"
                    && operation == "PUT /boot-source" && sent == #"{"kernel_image_path":"/nope"}"#
            }
        }
    }

    @Test("A request newer than the server fails locally, naming the minimum version")
    func versionGate() async throws {
        try await StubAPIServer.with(handler: { request in
            request.uri == "/version" ? .respond(status: 200, body: Self.version) : .respond(status: 204, body: "")
        }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let request = APIRequest(method: .put, path: "/serial", body: Array("{}".utf8), minimumVersion: .v1_14)
            await #expect {
                try await client.perform(request)
            } throws: { error in
                guard case .unsupported(let feature, let minimum, let server) = error as? FirecrackerAPIError
                else { return false }
                return feature == "PUT /serial" && minimum == .v1_14 && server == FirecrackerVersion(1, 12, 1)
            }
            // Only the version was asked, once; the gated request never left the host.
            try await client.perform(APIRequest(method: .put, path: "/drives/x", body: Array("{}".utf8)))
            await #expect(throws: FirecrackerAPIError.self) { try await client.perform(request) }
            #expect(server.requests.map(\.uri) == ["/version", "/drives/x"])
        }
    }

    @Test("A dropped connection is a transport error, and readiness waits through it")
    func droppedConnection() async throws {
        try await StubAPIServer.with(handler: { _ in .closeConnection }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            await #expect {
                try await client.send(APIRequest(method: .get, path: "/"))
            } throws: { error in
                guard case .transport(.connectionClosed, _, _) = error as? FirecrackerAPIError else { return false }
                return true
            }
            await #expect {
                try await client.waitUntilReady(timeout: .milliseconds(200))
            } throws: { error in
                guard case .transport(.timedOut, _, _) = error as? FirecrackerAPIError else { return false }
                return true
            }
        }
    }

    @Test("Readiness waits for a socket that appears later, then answers")
    func readinessAfterDelay() async throws {
        let path = StubAPIServer.makeSocketPath()
        let client = FirecrackerClient(socketPath: path)
        async let ready: Void = client.waitUntilReady(timeout: .seconds(3))
        try await Task.sleep(for: .milliseconds(150))
        let server = try await StubAPIServer(socketPath: path) { _ in .respond(status: 200, body: "{}") }
        do {
            try await ready
            #expect(server.requests.first?.uri == "/")
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test("Versions parse and order")
    func versions() {
        #expect(FirecrackerVersion("v1.12.1") == FirecrackerVersion(1, 12, 1))
        #expect(FirecrackerVersion("1.13.0-dev") == FirecrackerVersion(1, 13, 0))
        #expect(FirecrackerVersion("1.16") == FirecrackerVersion(1, 16, 0))
        #expect(FirecrackerVersion("one") == nil)
        #expect(FirecrackerVersion(1, 12, 1) < .v1_13)
    }
}
