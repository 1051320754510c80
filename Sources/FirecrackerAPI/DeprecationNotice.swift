import struct Foundation.Data
import class Foundation.JSONDecoder

/// Firecracker answered a request with `Deprecation: true`: the call worked, but it used an
/// endpoint or a field that a later release will remove.
///
/// ``FirecrackerClient`` logs each notice as a warning through its logger, keeps the most recent
/// ones in ``FirecrackerClient/deprecationNotices`` and passes each to the client's
/// deprecation handler, if one was given.
public struct DeprecationNotice: Sendable, Hashable, CustomStringConvertible {
    /// The call, for example `PUT /machine-config`.
    public var operation: String
    /// The HTTP status of the answer that carried the header (usually 204).
    public var status: Int
    /// The deprecated fields the request set, as far as the client can tell from the body it
    /// sent (`cpu_template`, `version V1`, `vsock_id`, `mem_file_path`,
    /// `enable_diff_snapshots`); empty when it cannot tell.
    public var fields: [String]
    /// The header's value as Firecracker sent it (`true`).
    public var headerValue: String

    public init(operation: String, status: Int, fields: [String], headerValue: String = "true") {
        self.operation = operation
        self.status = status
        self.fields = fields
        self.headerValue = headerValue
    }

    /// What to use instead, when the deprecated fields are known.
    public var replacement: String? {
        let advice = fields.compactMap { Self.advice[$0] }
        return advice.isEmpty ? nil : advice.joined(separator: "; ")
    }

    public var description: String {
        let what = fields.isEmpty
            ? "a deprecated endpoint or field"
            : "deprecated " + fields.map { "'\($0)'" }.joined(separator: ", ")
        return "\(operation) uses \(what) (Firecracker answered 'Deprecation: \(headerValue)')"
            + (replacement.map { "; \($0)" } ?? "")
    }

    static let advice: [String: String] = [
        "cpu_template": "use a custom CPU template (PUT /cpu-config) instead of cpu_template",
        "version V1": "set the MMDS version to V2 (session tokens)",
        "vsock_id": "leave vsock_id unset (Firecracker ignores it)",
        "mem_file_path": "use mem_backend {backend_type: File, backend_path: ...} instead of mem_file_path",
        "enable_diff_snapshots": "use track_dirty_pages (Firecracker 1.13+) instead of enable_diff_snapshots",
    ]

    /// The deprecated fields `body` sets for a call to `path`, as far as the client knows them.
    static func deprecatedFields(method: HTTPMethod, path: String, body: [UInt8]?) -> [String] {
        guard let body, let json = try? JSONDecoder().decode(JSONValue.self, from: Data(body)),
            let object = json.objectValue
        else { return [] }
        func isSet(_ key: String) -> Bool {
            if let value = object[key], value != .null { true } else { false }
        }
        switch path {
        case "/machine-config":
            return isSet("cpu_template") ? ["cpu_template"] : []
        case "/mmds/config":
            // Firecracker reads a missing version as V1, and flags that too.
            let version = object["version"]?.stringValue
            return version == nil || version == "V1" ? ["version V1"] : []
        case "/vsock":
            return isSet("vsock_id") ? ["vsock_id"] : []
        case "/snapshot/load":
            return ["mem_file_path", "enable_diff_snapshots"].filter(isSet)
        default:
            return []
        }
    }
}
