import struct Foundation.Data
import class Foundation.JSONEncoder

/// The HTTP methods Firecracker's API uses.
public enum HTTPMethod: String, Sendable, Hashable {
    case get = "GET"
    case put = "PUT"
    case patch = "PATCH"
}

/// One call to Firecracker's API, fully prepared: path, encoded body and the oldest release
/// that understands it. Built by the typed methods on ``FirecrackerClient``; public so that
/// callers can send a call the typed surface does not cover yet.
public struct APIRequest: Sendable, Hashable {
    public var method: HTTPMethod
    public var path: String
    /// The JSON body, already encoded; nil for a bodyless request.
    public var body: [UInt8]?
    /// The oldest Firecracker that accepts this call with this body.
    public var minimumVersion: FirecrackerVersion
    /// What needs `minimumVersion` (the endpoint, or the field of the body), for the error.
    public var feature: String

    public init(
        method: HTTPMethod, path: String, body: [UInt8]? = nil,
        minimumVersion: FirecrackerVersion = .baseline, feature: String? = nil
    ) {
        self.method = method
        self.path = path
        self.body = body
        self.minimumVersion = minimumVersion
        self.feature = feature ?? "\(method.rawValue) \(path)"
    }

    /// A request with a JSON body. The endpoint's own minimum version and the body's (when its
    /// type is ``VersionGated``) are combined. A body that is ``LocallyValidated`` is checked
    /// first, so a value Firecracker can never accept fails here, with `.invalidArgument`.
    public static func json<Body: Encodable>(
        _ method: HTTPMethod, _ path: String, _ body: Body,
        since endpointVersion: FirecrackerVersion = .baseline
    ) throws(FirecrackerAPIError) -> APIRequest {
        if let checked = body as? any LocallyValidated {
            try checked.validate()
        }
        let encoded: Data
        do {
            encoded = try APIRequest.encoder.encode(body)
        } catch {
            throw .encoding(operation: "\(method.rawValue) \(path)", message: "\(error)")
        }
        var request = APIRequest(
            method: method, path: path, body: Array(encoded), minimumVersion: endpointVersion)
        if let gated = body as? any VersionGated, let need = gated.requiredVersion,
            need.version > endpointVersion
        {
            request.minimumVersion = need.version
            request.feature = "\(method.rawValue) \(path) field '\(need.feature)'"
        }
        return request
    }

    /// Path ids (drive, network interface, pmem) are placed in the URL; Firecracker accepts only
    /// `[A-Za-z0-9_]`, so anything else is refused before a request is built.
    public static func pathComponent(_ id: String, kind: String) throws(FirecrackerAPIError) -> String {
        let valid = !id.isEmpty && id.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A)
                || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F
        }
        guard valid else {
            throw .invalidArgument(
                "\(kind) id '\(id)' is not accepted by Firecracker",
                hint: "use only letters, digits and '_' (for example 'rootfs' or 'eth0')")
        }
        return id
    }

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
}

/// What came back for an ``APIRequest``.
public struct APIResponse: Sendable, Hashable {
    public var status: Int
    public var body: [UInt8]
    /// The response headers, by lowercased name; a header sent more than once has its values
    /// joined with ", ".
    public var headers: [String: String]

    public init(status: Int, body: [UInt8], headers: [String: String] = [:]) {
        self.status = status
        self.body = body
        self.headers = headers
    }

    /// True when Firecracker marked the answer with `Deprecation: true` (RFC 9745; any value
    /// other than `false` counts): the request used a deprecated endpoint or field.
    public var isDeprecated: Bool {
        guard let value = headers["deprecation"]?.trimmingSpaces else { return false }
        return !value.isEmpty && value.lowercased() != "false"
    }
}

extension String {
    var trimmingSpaces: String {
        var text = Substring(self)
        while let first = text.first, first.isWhitespace { text.removeFirst() }
        while let last = text.last, last.isWhitespace { text.removeLast() }
        return String(text)
    }
}
