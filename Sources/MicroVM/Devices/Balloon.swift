public import FirecrackerAPI
import Logging

// The memory balloon of a running VM. Its existence, `deflate_on_oom` and whether statistics
// are collected are fixed before boot (``VMSpec/balloon``); the target and the statistics
// period change at run time.

extension MicroVM {
    /// Asks the guest to inflate (or deflate) the balloon to `targetMiB`: memory the host takes
    /// back. The call returns once Firecracker has told the guest; the guest driver follows in
    /// its own time (``balloonStatistics()`` shows `actualMiB`).
    public func setBalloon(targetMiB: Int) async throws(MicroVMError) {
        try VMOperation.updateDevice.check(in: state, id: id.rawValue)
        try requireBalloon(operation: "PATCH /balloon")
        try await Self.call("PATCH /balloon", id: id.rawValue) { try await client.patchBalloon(BalloonUpdate(amountMiB: targetMiB)) }
        logger.info("balloon target set", metadata: ["target_mib": "\(targetMiB)"])
    }

    /// The balloon's target and actual size and the guest's memory statistics. Needs
    /// `stats_polling_interval_s > 0` in the spec (Firecracker refuses otherwise); figures
    /// the guest never reported are nil.
    public func balloonStatistics() async throws(MicroVMError) -> BalloonStats {
        try VMOperation.updateDevice.check(in: state, id: id.rawValue)
        try requireBalloon(operation: "GET /balloon/statistics")
        return try await Self.request("GET /balloon/statistics", id: id.rawValue) { () throws(FirecrackerAPIError) in
            try await client.getBalloonStatistics()
        }
    }

    /// A new statistics period. Statistics can be neither turned on nor off after boot: the
    /// spec's period must be non-zero, and so must `seconds`.
    public func setBalloonStatisticsInterval(seconds: Int) async throws(MicroVMError) {
        try VMOperation.updateDevice.check(in: state, id: id.rawValue)
        try requireBalloon(operation: "PATCH /balloon/statistics")
        try await Self.call("PATCH /balloon/statistics", id: id.rawValue) {
            try await client.patchBalloonStatistics(BalloonStatsUpdate(statsPollingIntervalSeconds: seconds))
        }
    }

    private nonisolated func requireBalloon(operation: String) throws(MicroVMError) {
        if spec.balloon == nil {
            throw .invalidSpec(
                id: id.rawValue,
                problems: [SpecProblem(field: "balloon", message: "the VM has no balloon device (\(operation))", hint: "add `balloon` to the spec; it cannot be added after boot")])
        }
    }
}
