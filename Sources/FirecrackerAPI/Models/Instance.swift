// Models for the instance as a whole: its description, synchronous actions, run state, version
// and the error body. Wire names follow the spec; see `SpecCatalog` for the name mapping.

/// What `GET /` answers: which VMM this is and what state its guest is in.
public struct InstanceInfo: Codable, Sendable, Hashable {
    /// The guest's run state as the VMM reports it.
    public enum State: String, Codable, Sendable, CaseIterable {
        case notStarted = "Not started"
        case running = "Running"
        case paused = "Paused"
    }

    public var appName: String
    public var id: String
    public var state: State
    /// The VMM's build version (the same text `GET /version` reports).
    public var vmmVersion: String

    public init(appName: String, id: String, state: State, vmmVersion: String) {
        self.appName = appName
        self.id = id
        self.state = state
        self.vmmVersion = vmmVersion
    }

    enum CodingKeys: String, CodingKey {
        case appName = "app_name"
        case id
        case state
        case vmmVersion = "vmm_version"
    }
}

/// The body of `PUT /actions`. Prefer the typed calls (`startInstance()`, `sendCtrlAltDel()`,
/// `flushMetrics()`), which build it for you.
public struct InstanceActionInfo: Codable, Sendable, Hashable {
    public enum ActionType: String, Codable, Sendable, CaseIterable {
        /// Writes the metrics now instead of at the next 60 s tick. Post-boot only.
        case flushMetrics = "FlushMetrics"
        /// Boots the configured guest. Pre-boot only, once.
        case instanceStart = "InstanceStart"
        /// Presses Ctrl+Alt+Del on the guest's i8042 keyboard controller (x86_64 only).
        case sendCtrlAltDel = "SendCtrlAltDel"
    }

    public var actionType: ActionType

    public init(actionType: ActionType) {
        self.actionType = actionType
    }

    enum CodingKeys: String, CodingKey {
        case actionType = "action_type"
    }
}

/// The body of `PATCH /vm` (spec definition `Vm`): the run state the guest should be put in.
public struct VmState: Codable, Sendable, Hashable {
    public enum State: String, Codable, Sendable, CaseIterable {
        case paused = "Paused"
        case resumed = "Resumed"
    }

    public var state: State

    public init(state: State) {
        self.state = state
    }

    public static let paused = VmState(state: .paused)
    public static let resumed = VmState(state: .resumed)
}

/// What `GET /version` answers (spec definition `FirecrackerVersion`; renamed because
/// ``FirecrackerVersion`` is this module's parsed semantic version).
public struct VersionInfo: Codable, Sendable, Hashable {
    /// The version text exactly as Firecracker sends it (for example `1.12.1`).
    public var firecrackerVersion: String

    public init(firecrackerVersion: String) {
        self.firecrackerVersion = firecrackerVersion
    }

    /// The parsed version, or nil if the server sent something that is not a version.
    public var version: FirecrackerVersion? {
        FirecrackerVersion(firecrackerVersion)
    }

    enum CodingKeys: String, CodingKey {
        case firecrackerVersion = "firecracker_version"
    }
}

/// The body Firecracker sends with an error status (spec definition `Error`; renamed to stay
/// clear of `Swift.Error`).
public struct APIFault: Codable, Sendable, Hashable {
    /// Firecracker's own explanation. Optional in the spec, so an empty body still decodes.
    public var faultMessage: String?

    public init(faultMessage: String? = nil) {
        self.faultMessage = faultMessage
    }

    enum CodingKeys: String, CodingKey {
        case faultMessage = "fault_message"
    }
}
