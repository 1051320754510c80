/// Firecracker's log level. Firecracker reads it case-insensitively and also accepts `Warn`,
/// so decoding does the same; encoding always sends the spec's spelling.
public enum LogLevel: String, Codable, Sendable, CaseIterable {
    case error = "Error"
    case warning = "Warning"
    case info = "Info"
    case debug = "Debug"
    case trace = "Trace"
    case off = "Off"

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        let text = try container.decode(String.self)
        let lowered = text.lowercased()
        if lowered == "warn" {
            self = .warning
        } else if let level = LogLevel.allCases.first(where: { $0.rawValue.lowercased() == lowered }) {
            self = level
        } else {
            throw DecodingError.dataCorruptedError(
                in: container, debugDescription: "'\(text)' is not a Firecracker log level (\(LogLevel.allCases.map(\.rawValue).joined(separator: ", ")), in any case, or Warn)")
        }
    }
}

/// Where and how Firecracker logs (`PUT /logger`, pre-boot only, once per process; spec
/// definition `Logger`, renamed to stay clear of logging libraries' `Logger`).
public struct LoggerConfiguration: Codable, Sendable, Hashable {
    /// Info when unset.
    public var level: LogLevel?
    /// A file or named pipe; Firecracker 1.14+ creates a missing file, older releases need it
    /// to exist.
    public var logPath: String?
    public var showLevel: Bool?
    public var showLogOrigin: Bool?
    /// Keep only messages from this Rust module path (for example `api_server::request`).
    public var module: String?

    public init(
        logPath: String? = nil, level: LogLevel? = nil, showLevel: Bool? = nil,
        showLogOrigin: Bool? = nil, module: String? = nil
    ) {
        self.logPath = logPath
        self.level = level
        self.showLevel = showLevel
        self.showLogOrigin = showLogOrigin
        self.module = module
    }

    enum CodingKeys: String, CodingKey {
        case level
        case logPath = "log_path"
        case showLevel = "show_level"
        case showLogOrigin = "show_log_origin"
        case module
    }
}

/// Where Firecracker writes its metrics (`PUT /metrics`, pre-boot only, once per process; spec
/// definition `Metrics`). Each flush writes one JSON object per line, with counters as deltas
/// since the previous flush.
public struct MetricsConfiguration: Codable, Sendable, Hashable {
    /// A file or named pipe; Firecracker 1.14+ creates a missing file.
    public var metricsPath: String

    public init(metricsPath: String) {
        self.metricsPath = metricsPath
    }

    enum CodingKeys: String, CodingKey {
        case metricsPath = "metrics_path"
    }
}

/// The metadata service's protocol version.
public enum MmdsVersion: String, Codable, Sendable, CaseIterable {
    /// Plain GETs; deprecated by Firecracker, which answers a `PUT /mmds/config` that selects it
    /// (or leaves the version unset) with `Deprecation: true`.
    case v1 = "V1"
    /// Session tokens (`PUT /latest/api/token` first).
    case v2 = "V2"
}

/// The metadata service's setup (`PUT /mmds/config`, pre-boot only).
public struct MmdsConfig: Codable, Sendable, Hashable, VersionGated {
    /// V1 (deprecated) when unset.
    public var version: MmdsVersion?
    /// Interfaces on which the guest can reach the MMDS; they must already be configured.
    public var networkInterfaces: [String]
    /// A link-local IPv4 address (169.254.0.0/16); 169.254.169.254 when unset.
    public var ipv4Address: String?
    /// Answer in EC2 IMDS style (plain text whatever the Accept header). Firecracker 1.13+.
    public var imdsCompat: Bool?

    public init(
        networkInterfaces: [String], version: MmdsVersion? = nil, ipv4Address: String? = nil,
        imdsCompat: Bool? = nil
    ) {
        self.networkInterfaces = networkInterfaces
        self.version = version
        self.ipv4Address = ipv4Address
        self.imdsCompat = imdsCompat
    }

    public var requiredVersion: (version: FirecrackerVersion, feature: String)? {
        Self.newest(imdsCompat == nil ? nil : FieldVersions.mmdsImdsCompat)
    }

    enum CodingKeys: String, CodingKey {
        case version
        case networkInterfaces = "network_interfaces"
        case ipv4Address = "ipv4_address"
        case imdsCompat = "imds_compat"
    }
}
