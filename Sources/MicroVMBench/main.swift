import FirecrackerAPI
let client = FirecrackerClient(socketPath: CommandLine.arguments[1], configuration: .init(requestTimeout: .seconds(2)))
do {
    let r = try await client.send(APIRequest(method: .get, path: "/"))
    print(r.status, String(decoding: r.body, as: UTF8.self))
} catch { print("ERR", error) }
