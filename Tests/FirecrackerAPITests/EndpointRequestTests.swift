// Request building without a server: paths, ids, bodies, local refusals and version gating.

import FirecrackerAPI
import Foundation
import Testing

@Suite("Endpoint requests")
struct EndpointRequestTests {
    static func body(_ request: APIRequest) throws -> String {
        String(decoding: try #require(request.body), as: UTF8.self)
    }

    static func isInvalidArgument(_ error: any Error) -> Bool {
        if case .invalidArgument? = error as? FirecrackerAPIError { true } else { false }
    }

    @Test("Path ids outside [A-Za-z0-9_] are refused before a request exists", arguments: ["a-b", "a/b", "", "a b", "é", "../x", "a?b"])
    func badIdsRefused(id: String) {
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.putDrive(Drive(driveId: id, isRootDevice: false)) }
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.patchDrive(PartialDrive(driveId: id)) }
        #expect(throws: FirecrackerAPIError.self) {
            try FirecrackerEndpoint.putNetworkInterface(NetworkInterface(ifaceId: id, hostDevName: "tap0"))
        }
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.patchNetworkInterface(PartialNetworkInterface(ifaceId: id)) }
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.putPmem(Pmem(id: id, pathOnHost: "/p")) }
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.patchPmem(PartialPmem(id: id)) }
        do throws(FirecrackerAPIError) {
            _ = try FirecrackerEndpoint.putDrive(Drive(driveId: id, isRootDevice: false))
            Issue.record("'\(id)' was accepted")
        } catch {
            #expect(Self.isInvalidArgument(error))
            #expect(error.description.contains("drive id"))
        }
    }

    @Test("Ids go into the path; the body carries the same id")
    func idsInPath() throws {
        let drive = try FirecrackerEndpoint.putDrive(Drive(driveId: "root_fs9", isRootDevice: true, pathOnHost: "/r.ext4", isReadOnly: false))
        #expect(drive.method == .put)
        #expect(drive.path == "/drives/root_fs9")
        #expect(try Self.body(drive) == #"{"drive_id":"root_fs9","is_read_only":false,"is_root_device":true,"path_on_host":"/r.ext4"}"#)
        #expect(try FirecrackerEndpoint.patchNetworkInterface(PartialNetworkInterface(ifaceId: "eth0")).path == "/network-interfaces/eth0")
        #expect(try FirecrackerEndpoint.patchPmem(PartialPmem(id: "pm")).path == "/pmem/pm")
    }

    @Test("Bodyless calls have no body")
    func bodyless() {
        for request in [
            FirecrackerEndpoint.describeInstance(), FirecrackerEndpoint.version(), FirecrackerEndpoint.getVMConfiguration(),
            FirecrackerEndpoint.getMachineConfiguration(), FirecrackerEndpoint.getBalloon(),
            FirecrackerEndpoint.getBalloonStatistics(), FirecrackerEndpoint.getBalloonHintingStatus(),
            FirecrackerEndpoint.stopBalloonHinting(), FirecrackerEndpoint.getMMDS(), FirecrackerEndpoint.getMemoryHotplug(),
        ] {
            #expect(request.body == nil, "\(request.feature)")
        }
        #expect(FirecrackerEndpoint.describeInstance().path == "/")
        #expect(FirecrackerEndpoint.stopBalloonHinting().method == .patch)
    }

    @Test("Actions and VM state bodies")
    func actionsAndState() throws {
        #expect(try Self.body(FirecrackerEndpoint.action(InstanceActionInfo(actionType: .instanceStart))) == #"{"action_type":"InstanceStart"}"#)
        #expect(try Self.body(FirecrackerEndpoint.action(InstanceActionInfo(actionType: .sendCtrlAltDel))) == #"{"action_type":"SendCtrlAltDel"}"#)
        let pause = try FirecrackerEndpoint.patchVM(.paused)
        #expect(pause.method == .patch && pause.path == "/vm")
        #expect(try Self.body(pause) == #"{"state":"Paused"}"#)
        #expect(try Self.body(FirecrackerEndpoint.startBalloonHinting()) == "{}")
    }

    @Test("An unset optional field is not sent at all")
    func unsetFieldsOmitted() throws {
        let request = try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 128))
        #expect(try Self.body(request) == #"{"mem_size_mib":128,"vcpu_count":1}"#)
        let logger = try FirecrackerEndpoint.putLogger(LoggerConfiguration(logPath: "/a/b.log", level: .warning))
        #expect(try Self.body(logger) == #"{"level":"Warning","log_path":"/a/b.log"}"#)
    }

    @Test("An empty machine-config PATCH is refused locally")
    func emptyPatchRefused() throws {
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.patchMachineConfiguration(MachineConfigurationUpdate()) }
        let request = try FirecrackerEndpoint.patchMachineConfiguration(MachineConfigurationUpdate(memSizeMiB: 256))
        #expect(try Self.body(request) == #"{"mem_size_mib":256}"#)
    }

    @Test("A snapshot load needs exactly one memory source")
    func snapshotLoadMemorySource() throws {
        #expect(throws: FirecrackerAPIError.self) { try FirecrackerEndpoint.loadSnapshot(SnapshotLoadParams(snapshotPath: "/s")) }
        #expect(throws: FirecrackerAPIError.self) {
            try FirecrackerEndpoint.loadSnapshot(SnapshotLoadParams(snapshotPath: "/s", memBackend: .file("/m"), memFilePath: "/m"))
        }
        let request = try FirecrackerEndpoint.loadSnapshot(
            SnapshotLoadParams(snapshotPath: "/s", memBackend: .uffd("/u.sock"), resumeVm: true))
        #expect(try Self.body(request) == #"{"mem_backend":{"backend_path":"/u.sock","backend_type":"Uffd"},"resume_vm":true,"snapshot_path":"/s"}"#)
        #expect(request.minimumVersion == .baseline)
        #expect(throws: Never.self) { try FirecrackerEndpoint.loadSnapshot(SnapshotLoadParams(snapshotPath: "/s", memFilePath: "/m")) }
    }

    // MARK: Version gating

    @Test("A newer field raises the minimum version only when set")
    func fieldGating() throws {
        let plain = try FirecrackerEndpoint.putNetworkInterface(NetworkInterface(ifaceId: "eth0", hostDevName: "tap0"))
        #expect(plain.minimumVersion == .baseline)
        let mtu = try FirecrackerEndpoint.putNetworkInterface(NetworkInterface(ifaceId: "eth0", hostDevName: "tap0", mtu: 1500))
        #expect(mtu.minimumVersion == .v1_16)
        #expect(mtu.feature.contains("'mtu'"))

        #expect(try FirecrackerEndpoint.putMMDSConfig(MmdsConfig(networkInterfaces: ["eth0"])).minimumVersion == .baseline)
        #expect(try FirecrackerEndpoint.putMMDSConfig(MmdsConfig(networkInterfaces: ["eth0"], imdsCompat: false)).minimumVersion == .v1_13)

        let load = SnapshotLoadParams(snapshotPath: "/s", memBackend: .file("/m"))
        #expect(try FirecrackerEndpoint.loadSnapshot(load).minimumVersion == .baseline)
        var tracked = load
        tracked.trackDirtyPages = true
        #expect(try FirecrackerEndpoint.loadSnapshot(tracked).minimumVersion == .v1_13)
        var both = tracked
        both.clockRealtime = true
        let newest = try FirecrackerEndpoint.loadSnapshot(both)
        #expect(newest.minimumVersion == .v1_16)
        #expect(newest.feature.contains("clock_realtime"))

        #expect(try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: 1, deflateOnOom: true)).minimumVersion == .baseline)
        #expect(try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: 1, deflateOnOom: true, freePageReporting: true)).minimumVersion == .v1_14)
    }

    @Test("A newer endpoint carries its own minimum, and a newer field on it can raise it further")
    func endpointGating() throws {
        let serial = try FirecrackerEndpoint.putSerial(SerialDevice(serialOutPath: "/out"))
        #expect(serial.minimumVersion == .v1_14)
        #expect(serial.feature == "PUT /serial")
        let limited = try FirecrackerEndpoint.putSerial(SerialDevice(rateLimiter: TokenBucket(size: 1, refillTime: 1)))
        #expect(limited.minimumVersion == .v1_16)
        #expect(try FirecrackerEndpoint.putPmem(Pmem(id: "p", pathOnHost: "/p")).minimumVersion == .v1_14)
        #expect(try FirecrackerEndpoint.patchPmem(PartialPmem(id: "p")).minimumVersion == .v1_16)
        #expect(FirecrackerEndpoint.getMemoryHotplug().minimumVersion == .v1_14)
        #expect(FirecrackerEndpoint.stopBalloonHinting().minimumVersion == .v1_14)
        #expect(FirecrackerEndpoint.describeInstance().minimumVersion == .baseline)
    }

    @Test("Every operation's request method and path template agree with its builder")
    func operationTable() {
        #expect(FirecrackerOperation.allCases.count == 38)
        #expect(Set(FirecrackerOperation.allCases.map { "\($0.method.rawValue) \($0.pathTemplate)" }).count == 38)
        #expect(FirecrackerOperation.putGuestDriveByID.pathParameter == "drive_id")
        #expect(FirecrackerOperation.putGuestDriveByID.path(id: "x") == "/drives/x")
        #expect(FirecrackerOperation.putGuestVsock.pathParameter == nil)
    }
}
