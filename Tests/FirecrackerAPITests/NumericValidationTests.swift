// Numeric fields have Firecracker's own (unsigned) types, and values it can never take are
// refused locally, with `.invalidArgument`, before a request exists.

import FirecrackerAPI
import Foundation
import Testing

@Suite("Numeric types and local validation")
struct NumericValidationTests {
    static func refusal(_ build: () throws(FirecrackerAPIError) -> APIRequest) -> String? {
        do {
            _ = try build()
            return nil
        } catch {
            guard case .invalidArgument = error else {
                Issue.record("not .invalidArgument: \(error)")
                return nil
            }
            return error.description
        }
    }

    @Test("Balloon and vsock treat a negative number alike: refused before sending")
    func negativesRefusedAlike() throws {
        let balloon = Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: -1, deflateOnOom: true))
        }
        #expect(balloon?.contains("Balloon.amount_mib = -1 is outside 0...4294967295") == true)
        let vsock = Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putVsock(Vsock(guestCid: -1, udsPath: "/v.sock"))
        }
        #expect(vsock?.contains("Vsock.guest_cid = -1 is outside 0...4294967295") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in try FirecrackerEndpoint.patchBalloon(BalloonUpdate(amountMiB: -5)) } != nil)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.patchBalloonStatistics(BalloonStatsUpdate(statsPollingIntervalSeconds: 70_000))
        }?.contains("0...65535") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: 1, deflateOnOom: true, statsPollingIntervalSeconds: -1))
        } != nil)
        // The stored value is typed as Firecracker reads it.
        let typed: UInt32 = Balloon(amountMiB: 64, deflateOnOom: false).amountMiB
        #expect(typed == 64)
    }

    @Test("Fixing a field after an out-of-range Int clears the refusal")
    func assignmentClears() throws {
        var balloon = Balloon(amountMiB: -1, deflateOnOom: true)
        #expect(throws: FirecrackerAPIError.self) { try balloon.validate() }
        balloon.amountMiB = 16
        #expect(throws: Never.self) { try balloon.validate() }
        #expect(try FirecrackerEndpoint.putBalloon(balloon).body == Array(#"{"amount_mib":16,"deflate_on_oom":true}"#.utf8))
        var machine = MachineConfiguration(vcpuCount: 1, memSizeMiB: -128)
        #expect(throws: FirecrackerAPIError.self) { try machine.validate() }
        machine.memSizeMiB = 128
        #expect(throws: Never.self) { try machine.validate() }
    }

    @Test("Spec ranges are enforced locally: vsock cid >= 3, vcpus 1...32, memory >= 1, MTU 68...65535, hot-plug minimums")
    func specRanges() {
        #expect(Self.refusal { () throws(FirecrackerAPIError) in try FirecrackerEndpoint.putVsock(Vsock(guestCid: 2, udsPath: "/v")) }?
            .contains("guest_cid = 2 is below the minimum of 3") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 0, memSizeMiB: 128))
        }?.contains("vcpu_count = 0 is outside 1...32") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 33, memSizeMiB: 128))
        } != nil)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: 0))
        } != nil)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 1, memSizeMiB: -1))
        }?.contains("mem_size_mib = -1") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.patchMachineConfiguration(MachineConfigurationUpdate(vcpuCount: 64))
        } != nil)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putNetworkInterface(NetworkInterface(ifaceId: "eth0", hostDevName: "tap0", mtu: 67))
        }?.contains("mtu = 67") == true)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMemoryHotplug(MemoryHotplugConfig(totalSizeMiB: 1024, slotSizeMiB: 64))
        } != nil)
        #expect(Self.refusal { () throws(FirecrackerAPIError) in
            try FirecrackerEndpoint.putMemoryHotplug(MemoryHotplugConfig(totalSizeMiB: 1024, blockSizeMiB: 1))
        } != nil)
        // Boundaries pass.
        #expect(throws: Never.self) {
            _ = try FirecrackerEndpoint.putVsock(Vsock(guestCid: 3, udsPath: "/v"))
            _ = try FirecrackerEndpoint.putVsock(Vsock(guestCid: UInt32.max, udsPath: "/v"))
            _ = try FirecrackerEndpoint.putMachineConfiguration(MachineConfiguration(vcpuCount: 32, memSizeMiB: 1))
            _ = try FirecrackerEndpoint.putNetworkInterface(NetworkInterface(ifaceId: "e", hostDevName: "t", mtu: 68))
            _ = try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: 0, deflateOnOom: false))
            _ = try FirecrackerEndpoint.putBalloon(Balloon(amountMiB: UInt32.max, deflateOnOom: false))
        }
    }

    @Test("Memory sizes hold what Firecracker's usize holds: a PATCH of UInt64.max encodes, and GET's answer decodes")
    func memorySizeRange() throws {
        let patch = try FirecrackerEndpoint.patchMachineConfiguration(MachineConfigurationUpdate(memSizeMiB: UInt64.max))
        #expect(patch.body == Array(#"{"mem_size_mib":18446744073709551615}"#.utf8))
        let answer = #"{"vcpu_count":2,"mem_size_mib":18446744073709551615,"smt":false,"track_dirty_pages":false,"huge_pages":"None"}"#
        let decoded = try JSONDecoder().decode(MachineConfiguration.self, from: Data(answer.utf8))
        #expect(decoded.memSizeMiB == UInt64.max)
        #expect(decoded == MachineConfiguration(vcpuCount: 2, memSizeMiB: UInt64.max, smt: false, trackDirtyPages: false, hugePages: HugePages.none))
        // An Int caller still compiles and gets the same value.
        let memoryMiB = 256
        #expect(MachineConfiguration(vcpuCount: 1, memSizeMiB: memoryMiB).memSizeMiB == 256)
    }

    @Test("Token buckets and statistics are unsigned, as in Firecracker (u64 / u32)")
    func unsignedCounters() throws {
        let bucket = TokenBucket(size: UInt64.max, refillTime: 1)
        #expect(try JSONDecoder().decode(TokenBucket.self, from: JSONEncoder().encode(bucket)) == bucket)
        let stats = try JSONDecoder().decode(
            BalloonStats.self,
            from: Data(#"{"target_pages":4294967295,"actual_pages":0,"target_mib":1,"actual_mib":0,"free_memory":18446744073709551615}"#.utf8))
        #expect(stats.targetPages == UInt32.max)
        #expect(stats.freeMemory == UInt64.max)
        #expect(throws: (any Error).self) {
            try JSONDecoder().decode(BalloonUpdate.self, from: Data(#"{"amount_mib":-1}"#.utf8))
        }
    }
}
