// How the client reports Firecracker's refusals and warnings, with answers shaped as the real
// Firecracker 1.12.1 sends them (replayed from its integration tests): redacted bodies, the
// payload-limit answer with a raw newline inside its JSON string, the MMDS-full 413, message
// punctuation and the `Deprecation: true` header.

import FirecrackerAPI
import Logging
import Synchronization
import Testing

@Suite("Fault reporting")
struct FaultReportingTests {
    /// Firecracker 1.12.1's answer to a body over 51,200 bytes, byte for byte: `{"error": ...}`
    /// instead of `{"fault_message": ...}`, and a raw newline inside the string.
    static func payloadLimitAnswer(size: Int) -> String {
        "{\"error\": \"Request payload with size \(size) is larger than the limit of 51200 allowed by server.\nAll previous unanswered requests will be dropped.\"}"
    }

    static func apiError(
        _ perform: () async throws -> Void
    ) async -> FirecrackerAPIError? {
        do {
            try await perform()
            Issue.record("the call succeeded")
            return nil
        } catch {
            return error as? FirecrackerAPIError
        }
    }

    /// Two periods in a row, or a period, spaces and a period.
    static func hasDoublePeriod(_ text: String) -> Bool {
        let scalars = Array(text.unicodeScalars)
        for index in scalars.indices where scalars[index] == "." {
            var next = index + 1
            while next < scalars.count, scalars[next] == " " { next += 1 }
            if next < scalars.count, scalars[next] == "." { return true }
        }
        return false
    }

    // MARK: 1. Redaction

    @Test("A large request body is cut to a short excerpt in the description, and kept whole in requestBody")
    func largeBodyExcerpt() async throws {
        let fault = #"{"fault_message":"An error occurred when deserializing the json body of a request: unknown field `x`."}"#
        try await StubAPIServer.with(handler: { _ in .respond(status: 400, body: fault) }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let big = "{\"kernel_image_path\":\"/k\",\"boot_args\":\"" + String(repeating: "a", count: 52_000) + "\"}"
            let error = try #require(
                await Self.apiError {
                    try await client.perform(APIRequest(method: .put, path: "/boot-source", body: Array(big.utf8)))
                })
            #expect(error.requestBody == big)
            #expect(error.status == 400)
            let text = error.description
            #expect(text.count < 700, "description has \(text.count) characters")
            #expect(text.contains("(\(big.utf8.count) bytes in all)"))
            #expect(text.contains(#"{"kernel_image_path":"/k""#))
            #expect(!text.contains("\n"))
        }
    }

    @Test("MMDS bodies never reach the description, only their size", arguments: [HTTPMethod.put, .patch])
    func mmdsBodyWithheld(method: HTTPMethod) async throws {
        let fault = #"{"fault_message":"The MMDS data store is not initialized."}"#
        try await StubAPIServer.with(handler: { _ in .respond(status: 400, body: fault) }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let secret = "AKIA-super-secret-token"
            let contents: JSONValue = ["latest": ["credentials": ["token": .string(secret)]]]
            let error = try #require(
                await Self.apiError {
                    if method == .put {
                        try await client.putMMDS(contents)
                    } else {
                        try await client.patchMMDS(contents)
                    }
                })
            let sent = try #require(server.requests.last?.body)
            #expect(sent.contains(secret))
            #expect(error.requestBody == sent)
            #expect(!error.description.contains(secret))
            #expect(!error.description.contains("credentials"))
            #expect(error.description.contains("withheld (MMDS data, \(sent.utf8.count) bytes)"))
        }
    }

    @Test("A short body is shown whole, on one line")
    func shortBodyShown() {
        let error = FirecrackerAPIError.api(
            status: 400, faultMessage: "Invalid drive.", operation: "PUT /drives/a", requestBody: "{\"a\":\n1}")
        #expect(error.description.contains("Request body: {\"a\": 1}"))
        // /mmds/config carries no MMDS data: it is shown.
        let config = FirecrackerAPIError.api(
            status: 400, faultMessage: "x", operation: "PUT /mmds/config", requestBody: #"{"version":"V2"}"#)
        #expect(config.description.contains(#"{"version":"V2"}"#))
    }

    // MARK: 2. The payload-limit answer

    @Test("The payload-limit answer (raw newline inside the JSON string) becomes the fault message, verbatim")
    func payloadLimitParsed() async throws {
        let answer = Self.payloadLimitAnswer(size: 52_336)
        try await StubAPIServer.with(handler: { _ in .respond(status: 400, body: answer) }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let body = Array(String(repeating: " ", count: 52_336).utf8)
            let error = try #require(
                await Self.apiError { try await client.perform(APIRequest(method: .put, path: "/mmds", body: body)) })
            guard case .api(let status, let message, let operation, _) = error else {
                Issue.record("not an API error: \(error)")
                return
            }
            #expect(status == 400 && operation == "PUT /mmds")
            #expect(
                message
                    == "Request payload with size 52336 is larger than the limit of 51200 allowed by server.\nAll previous unanswered requests will be dropped.")
            #expect(error.isPayloadTooLarge)
            #expect(error.hint.contains("--http-api-max-payload-size"))
            #expect(error.description.contains("size 52336 is larger than the limit of 51200"))
            #expect(!error.description.contains("\n"))
            #expect(!error.description.contains("{\"error\""))
            #expect(!Self.hasDoublePeriod(error.description))
        }
    }

    @Test("Other control characters inside error strings are tolerated too; other shapes are kept whole")
    func faultShapes() async throws {
        let answers: [String: String] = [
            "/tab": "{\"fault_message\": \"a\tb\"}",
            "/plain": #"{"fault_message":"plain."}"#,
            "/other": #"{"something":"else"}"#,
            "/text": "not json",
        ]
        try await StubAPIServer.with(handler: { request in
            .respond(status: 400, body: answers[request.uri] ?? "")
        }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            var messages: [String: String] = [:]
            for path in answers.keys.sorted() {
                let error = await Self.apiError { try await client.perform(APIRequest(method: .get, path: path)) }
                if case .api(_, let message, _, _)? = error { messages[path] = message }
            }
            #expect(messages["/tab"] == "a\tb")
            #expect(messages["/plain"] == "plain.")
            #expect(messages["/other"] == #"{"something":"else"}"#)
            #expect(messages["/text"] == "not json")
        }
    }

    // MARK: 3. 413

    @Test("413 means the MMDS store is full, and the hint says how to fix it")
    func mmdsFullHint() {
        let error = FirecrackerAPIError.api(
            status: 413, faultMessage: "MMDS limit exceeded.", operation: "PATCH /mmds", requestBody: "{}")
        #expect(error.hint.contains("MMDS data store is full"))
        #expect(error.hint.contains("--mmds-size-limit"))
        #expect(error.hint.contains("less data"))
        #expect(!error.hint.contains("51,200 bytes; send less"))
        #expect(!Self.hasDoublePeriod(error.description))
    }

    // MARK: 4. Punctuation

    @Test("No description ever has a double period")
    func noDoublePeriods() {
        let errors: [FirecrackerAPIError] = [
            .api(status: 400, faultMessage: "The kernel file cannot be opened.", operation: "PUT /boot-source", requestBody: nil),
            .api(status: 400, faultMessage: "Invalid request.", operation: "PUT /drives/a", requestBody: #"{"a":1}"#),
            .api(status: 400, faultMessage: "Ends with spaces.  ", operation: "PUT /x", requestBody: "{}"),
            .api(status: 413, faultMessage: "MMDS limit exceeded.", operation: "PUT /mmds", requestBody: "[]"),
            .api(status: 400, faultMessage: "A.\nB.", operation: "PUT /mmds", requestBody: "{}"),
            .transport(.io("Broken pipe."), operation: "GET /", socketPath: "/s"),
            .transport(.socketMissing, operation: "GET /", socketPath: "/s"),
            .decoding(operation: "GET /", type: "InstanceInfo", message: "Missing key.", body: "{}"),
            .encoding(operation: "PUT /x", message: "Not finite."),
            .unsupported(feature: "PUT /serial", minimum: .v1_14, server: FirecrackerVersion(1, 12, 1)),
            .invalidArgument("The value is wrong.", hint: "fix it."),
        ]
        for error in errors {
            #expect(!Self.hasDoublePeriod(error.description), "\(error.description)")
            #expect(error.description.contains(". Hint: ") || error.description.contains("Hint: "))
        }
        let text = FirecrackerAPIError.api(
            status: 400, faultMessage: "The kernel file cannot be opened.", operation: "PUT /boot-source", requestBody: nil
        ).description
        #expect(text == "PUT /boot-source failed with HTTP 400: The kernel file cannot be opened. Hint: Firecracker's own message above says what it refused; see its log for more")
    }

    // MARK: 5. Deprecation

    final class LogCapture: LogHandler, @unchecked Sendable {
        // Guarded by the mutex; the rest is LogHandler boilerplate.
        let records = Mutex<[(Logger.Level, String, Logger.Metadata)]>([])
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            records.withLock { $0.append((event.level, "\(event.message)", event.metadata ?? [:])) }
        }

        var warnings: [String] {
            records.withLock { $0.filter { $0.0 == .warning }.map(\.1) }
        }
    }

    @Test("Deprecation: true is logged, recorded and passed to the handler, naming the deprecated field")
    func deprecationSurfaced() async throws {
        try await StubAPIServer.with(handler: { request in
            request.uri == "/" ? .respond(status: 200, body: "{}")
                : .respondWithHeaders(status: 204, body: "", headers: ["Deprecation": "true"])
        }) { server in
            let capture = LogCapture()
            let seen = Mutex<[DeprecationNotice]>([])
            let client = FirecrackerClient(
                socketPath: server.socketPath, logger: Logger(label: "test") { _ in capture },
                deprecationHandler: { notice in seen.withLock { $0.append(notice) } })

            try await client.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 128, cpuTemplate: .t2))
            try await client.putMMDSConfig(MmdsConfig(networkInterfaces: ["eth0"]))
            try await client.putMMDSConfig(MmdsConfig(networkInterfaces: ["eth0"], version: .v1))
            try await client.putVsock(Vsock(guestCid: 3, udsPath: "/v.sock", vsockId: "vsock0"))
            try await client.loadSnapshot(SnapshotLoadParams(snapshotPath: "/s", memFilePath: "/m", enableDiffSnapshots: true))
            try await client.putDrive(Drive(driveId: "rootfs", isRootDevice: true))

            let notices = await client.deprecationNotices
            #expect(notices.map(\.operation) == [
                "PUT /machine-config", "PUT /mmds/config", "PUT /mmds/config", "PUT /vsock", "PUT /snapshot/load",
                "PUT /drives/rootfs",
            ])
            #expect(notices.map(\.fields) == [
                ["cpu_template"], ["version V1"], ["version V1"], ["vsock_id"], ["mem_file_path", "enable_diff_snapshots"], [],
            ])
            #expect(notices.allSatisfy { $0.status == 204 && $0.headerValue == "true" })
            #expect(seen.withLock { $0 } == notices)
            let warnings = capture.warnings
            #expect(warnings.count == 6)
            #expect(warnings.first?.contains("PUT /machine-config") == true)
            #expect(warnings.first?.contains("cpu_template") == true)
            #expect(warnings.first?.contains("/cpu-config") == true)
            #expect(warnings.last?.contains("a deprecated endpoint or field") == true)

            // An answer without the header records nothing.
            await client.clearDeprecationNotices()
            _ = try await client.send(APIRequest(method: .get, path: "/"))
            #expect(await client.deprecationNotices.isEmpty)
        }
    }

    @Test("The header is read case-insensitively; 'false' or no header is not a deprecation")
    func deprecationHeaderParsing() {
        #expect(APIResponse(status: 204, body: [], headers: ["deprecation": "true"]).isDeprecated)
        #expect(APIResponse(status: 204, body: [], headers: ["deprecation": " @1688169599 "]).isDeprecated)
        #expect(!APIResponse(status: 204, body: [], headers: ["deprecation": "false"]).isDeprecated)
        #expect(!APIResponse(status: 204, body: []).isDeprecated)
    }

    @Test("Response headers reach APIResponse with lowercased names")
    func headersSurface() async throws {
        try await StubAPIServer.with(handler: { _ in
            .respondWithHeaders(status: 204, body: "", headers: ["Deprecation": "true", "X-Other": "1"])
        }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            let response = try await client.send(APIRequest(method: .put, path: "/vsock", body: Array("{}".utf8)))
            #expect(response.headers["deprecation"] == "true")
            #expect(response.headers["x-other"] == "1")
            #expect(response.isDeprecated)
            #expect(await client.deprecationNotices.count == 1)
        }
    }

    // MARK: 6. MMDS takes any JSON value

    @Test("MMDS contents may be any JSON value; dictionaries still pass as before")
    func mmdsAnyValue() async throws {
        try await StubAPIServer.with(handler: { _ in .respond(status: 204, body: "") }) { server in
            let client = FirecrackerClient(socketPath: server.socketPath)
            try await client.putMMDS([1, "two", ["three": 3]])
            try await client.putMMDS(.string("plain"))
            let dictionary: [String: JSONValue] = ["a": 1]
            try await client.putMMDS(dictionary)
            try await client.patchMMDS(dictionary)
            let contents: MMDSContents = ["b": nil]
            try await client.patchMMDS(contents)
            try await client.patchMMDS(["c": true])
            try await client.patchMMDS(.array([]))
            #expect(server.requests.map(\.body) == [
                #"[1,"two",{"three":3}]"#, #""plain""#, #"{"a":1}"#, #"{"a":1}"#, #"{"b":null}"#, #"{"c":true}"#, "[]",
            ])
            #expect(server.requests.map(\.method) == ["PUT", "PUT", "PUT", "PATCH", "PATCH", "PATCH", "PATCH"])
        }
        #expect(try FirecrackerEndpoint.putMMDS(.array([.int(1)])).body == Array("[1]".utf8))
        #expect(try FirecrackerEndpoint.patchMMDS(["k": "v"] as MMDSContents).body == Array(#"{"k":"v"}"#.utf8))
    }
}
