public import FirecrackerAPI
import Logging

// The microVM metadata service's data store (`/mmds`): what the guest reads from
// 169.254.169.254. It can be changed at any time the VMM runs, before or after boot.

extension MicroVM {
    /// Replaces the whole store with `value`. Firecracker 1.12.1 serves any JSON value (an
    /// object is what guests expect: paths select its members). The body must stay under
    /// Firecracker's payload limit (51,200 bytes by default); a larger store is refused.
    /// The body is never logged: metadata often carries credentials.
    public func putMetadata(_ value: JSONValue) async throws(MicroVMError) {
        try requireLiveVMM(operation: "PUT /mmds")
        try await Self.call("PUT /mmds", id: id.rawValue) { try await client.putMMDS(value) }
        logger.debug("MMDS store replaced")
    }

    /// Merges `patch` into the store (JSON merge patch, RFC 7396: `null` deletes a member, objects
    /// merge, anything else replaces). The store must exist (``putMetadata(_:)`` or the spec's
    /// `mmds.metadata`); Firecracker refuses a patch of an empty store.
    public func patchMetadata(_ patch: JSONValue) async throws(MicroVMError) {
        try requireLiveVMM(operation: "PATCH /mmds")
        try await Self.call("PATCH /mmds", id: id.rawValue) { try await client.patchMMDS(patch) }
        logger.debug("MMDS store patched")
    }

    /// The whole store as Firecracker holds it (`null` before anything was put).
    public func metadata() async throws(MicroVMError) -> JSONValue {
        try requireLiveVMM(operation: "GET /mmds")
        return try await Self.request("GET /mmds", id: id.rawValue) { () throws(FirecrackerAPIError) in try await client.getMMDS() }
    }

    /// MMDS calls are legal in every state in which the VMM process runs.
    private func requireLiveVMM(operation: String) throws(MicroVMError) {
        guard state.isLive else {
            throw .invalidState(id: id.rawValue, operation: operation, state: state, allowed: ["created", "running", "paused"])
        }
    }
}
