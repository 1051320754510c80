public import FirecrackerAPI
import Logging

// Network interfaces of a running VM (`PATCH /network-interfaces/{id}`).

extension MicroVM {
    /// Replaces the receive and transmit rate limiters of interface `interfaceID` (running or
    /// paused VM). A nil argument leaves that direction as it is; `RateLimiter()` (no buckets)
    /// removes its limits. Firecracker applies the new buckets to the next frames; frames
    /// already held back wait for the old bucket's timer.
    public func updateNetworkInterface(id interfaceID: String, rx: RateLimiter? = nil, tx: RateLimiter? = nil) async throws(MicroVMError) {
        try VMOperation.updateDevice.check(in: state, id: id.rawValue)
        let update = PartialNetworkInterface(ifaceId: interfaceID, rxRateLimiter: rx, txRateLimiter: tx)
        try await Self.call("PATCH /network-interfaces/\(interfaceID)", id: id.rawValue) {
            try await client.patchNetworkInterface(update)
        }
        logger.info("network rate limiters updated", metadata: ["interface": "\(interfaceID)", "rx": "\(rx != nil)", "tx": "\(tx != nil)"])
    }
}
