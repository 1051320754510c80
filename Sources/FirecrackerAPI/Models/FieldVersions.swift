/// The release that added each request-body field newer than the baseline (1.12), with the
/// CHANGELOG entry that says so. Types conforming to ``VersionGated`` read this table, so a
/// body sent to an older server fails locally only when such a field is actually set.
///
/// Endpoint (path) minimums live beside the endpoints, in ``FirecrackerEndpoint``.
package enum FieldVersions {
    package typealias Requirement = (version: FirecrackerVersion, feature: String)

    /// `MmdsConfig.imds_compat`: 1.13.0, CHANGELOG #5310. (The 1.13 spec misspelled it
    /// `imds_comat`, fixed in 1.14 by #5418; the server always read `imds_compat`.)
    package static let mmdsImdsCompat: Requirement = (.v1_13, "imds_compat")
    /// `SnapshotLoadParams.track_dirty_pages`: 1.13.0, CHANGELOG #5274 (which deprecates
    /// `enable_diff_snapshots` in its favour).
    package static let snapshotLoadTrackDirtyPages: Requirement = (.v1_13, "track_dirty_pages")
    /// `Balloon.free_page_hinting`: 1.14.0, CHANGELOG #5491.
    package static let balloonFreePageHinting: Requirement = (.v1_14, "free_page_hinting")
    /// `Balloon.free_page_reporting`: 1.14.0, CHANGELOG #5491.
    package static let balloonFreePageReporting: Requirement = (.v1_14, "free_page_reporting")
    /// `NetworkInterface.mtu`: 1.16.0, CHANGELOG #5828.
    package static let networkInterfaceMTU: Requirement = (.v1_16, "mtu")
    /// `SnapshotLoadParams.vsock_override`: 1.16.0, CHANGELOG #5323.
    package static let snapshotLoadVsockOverride: Requirement = (.v1_16, "vsock_override")
    /// `SnapshotLoadParams.clock_realtime`: 1.16.0, CHANGELOG #5809.
    package static let snapshotLoadClockRealtime: Requirement = (.v1_16, "clock_realtime")
    /// `SerialDevice.rate_limiter`: 1.16.0, CHANGELOG #5824.
    package static let serialRateLimiter: Requirement = (.v1_16, "rate_limiter")
    /// `Pmem.rate_limiter`: 1.16.0, CHANGELOG #5789.
    package static let pmemRateLimiter: Requirement = (.v1_16, "rate_limiter")
}
