// Encoding and decoding of the shapes most likely to go wrong.

import FirecrackerAPI
import Foundation
import Testing

@Suite("Model round trips")
struct ModelRoundTripTests {
    static func encoded<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func decoded<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
        try JSONDecoder().decode(T.self, from: Data(json.utf8))
    }

    static func roundTrips<T: Codable & Equatable>(_ value: T) throws -> Bool {
        try decoded(T.self, encoded(value)) == value
    }

    @Test("Rate limiters: nested buckets, optional burst, 64-bit sizes")
    func rateLimiter() throws {
        let limiter = RateLimiter(
            bandwidth: TokenBucket(size: 1 << 40, refillTime: 1000, oneTimeBurst: 1 << 33),
            ops: TokenBucket(size: 100, refillTime: 10))
        #expect(
            try Self.encoded(limiter)
                == #"{"bandwidth":{"one_time_burst":8589934592,"refill_time":1000,"size":1099511627776},"ops":{"refill_time":10,"size":100}}"#)
        #expect(try Self.roundTrips(limiter))
        #expect(try Self.encoded(RateLimiter()) == "{}")
        #expect(try Self.decoded(RateLimiter.self, #"{"bandwidth":null}"#) == RateLimiter())
    }

    @Test("CPU configuration: nested modifier lists with string numbers and bitmaps")
    func cpuConfig() throws {
        #expect(try Self.roundTrips(SpecSamples.fullCpuConfig))
        let json = #"""
            {"cpuid_modifiers":[{"leaf":"0x7","subleaf":"0x0","flags":1,"modifiers":[{"register":"ebx","bitmap":"0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx0"}]}],
             "msr_modifiers":[{"addr":"0x10a","bitmap":"0b0000_0001"}],"kvm_capabilities":["!56"]}
            """#
        let config = try Self.decoded(CpuConfig.self, json)
        #expect(config.cpuidModifiers?.first?.modifiers.first?.register == .ebx)
        #expect(config.cpuidModifiers?.first?.flags == 1)
        #expect(config.msrModifiers?.first?.bitmap == "0b0000_0001")
        #expect(config.regModifiers == nil && config.vcpuFeatures == nil)
        #expect(throws: (any Error).self) {
            try Self.decoded(CpuidRegisterModifier.self, #"{"register":"EAX","bitmap":"0b1"}"#)
        }
    }

    @Test("Memory backends and the snapshot-load body")
    func memoryBackend() throws {
        #expect(try Self.encoded(MemoryBackend.file("/m")) == #"{"backend_path":"/m","backend_type":"File"}"#)
        let uffd = try Self.decoded(MemoryBackend.self, #"{"backend_type":"Uffd","backend_path":"/uffd.sock"}"#)
        #expect(uffd == .uffd("/uffd.sock"))
        #expect(throws: (any Error).self) { try Self.decoded(MemoryBackend.self, #"{"backend_type":"Mmap","backend_path":"/x"}"#) }
        let load = SnapshotLoadParams(
            snapshotPath: "/s", memBackend: .file("/m"), resumeVm: true,
            networkOverrides: [NetworkOverride(ifaceId: "eth0", hostDevName: "tap7")],
            vsockOverride: VsockOverride(udsPath: "/v.sock"))
        #expect(
            try Self.encoded(load)
                == #"{"mem_backend":{"backend_path":"/m","backend_type":"File"},"network_overrides":[{"host_dev_name":"tap7","iface_id":"eth0"}],"resume_vm":true,"snapshot_path":"/s","vsock_override":{"uds_path":"/v.sock"}}"#)
        #expect(try Self.roundTrips(load))
    }

    @Test("MMDS contents: arbitrary JSON, integers kept exact")
    func mmdsJSON() throws {
        let contents: MMDSContents = [
            "latest": ["meta-data": ["ami-id": "ami-1", "ids": [9_007_199_254_740_993, -1], "ratio": 0.25]],
            "flag": true, "nothing": nil, "empty": [:], "list": [],
        ]
        #expect(try Self.roundTrips(contents))
        let text = try Self.encoded(contents)
        #expect(text.contains("9007199254740993"), "an integer beyond 2^53 must not pass through Double")
        let value = try Self.decoded(JSONValue.self, #"{"a":[1,2.5,"x",false,null,{"b":{}}]}"#)
        #expect(value["a"]?.arrayValue == [.int(1), .double(2.5), .string("x"), .bool(false), .null, .object(["b": .object([:])])])
        #expect(value["missing"] == nil)
        #expect(try Self.decoded(JSONValue.self, "true") == .bool(true))
    }

    @Test("Enums use the wire spelling; the log level reads Firecracker's variants")
    func enums() throws {
        #expect(try Self.encoded(InstanceInfo.State.notStarted) == #""Not started""#)
        #expect(try Self.encoded(HugePages.hugetlbfs2M) == #""2M""#)
        #expect(try Self.decoded(LogLevel.self, #""warn""#) == .warning)
        #expect(try Self.decoded(LogLevel.self, #""Warn""#) == .warning)
        #expect(try Self.decoded(LogLevel.self, #""DEBUG""#) == .debug)
        #expect(try Self.encoded(LogLevel.warning) == #""Warning""#)
        #expect(throws: (any Error).self) { try Self.decoded(LogLevel.self, #""loud""#) }
    }

    @Test("Answers as Firecracker sends them decode (nulls, unknown extra fields)")
    func realisticAnswers() throws {
        let info = try Self.decoded(
            InstanceInfo.self, #"{"id":"anonymous-instance","state":"Not started","vmm_version":"1.12.1","app_name":"Firecracker"}"#)
        #expect(info.state == .notStarted && info.vmmVersion == "1.12.1")
        #expect(try Self.decoded(VersionInfo.self, #"{"firecracker_version":"1.12.1"}"#).version == FirecrackerVersion(1, 12, 1))
        // GET /vm/config reports unset resources as null and may carry fields newer than this client.
        let config = try Self.decoded(
            FullVmConfiguration.self,
            #"""
            {"balloon":null,"drives":[{"drive_id":"rootfs","partuuid":null,"is_root_device":true,"cache_type":"Unsafe",
              "is_read_only":false,"path_on_host":"/r.ext4","io_engine":"Sync","rate_limiter":null,"socket":null}],
             "boot-source":{"kernel_image_path":"/k","initrd_path":null,"boot_args":"console=ttyS0"},
             "cpu-config":null,"logger":null,"machine-config":{"vcpu_count":2,"mem_size_mib":128,"smt":false,
              "track_dirty_pages":false,"huge_pages":"None"},"metrics":null,"mmds-config":null,
             "network-interfaces":[],"vsock":null,"entropy":null,"serial":{"serial_out_path":null},"future":1}
            """#)
        #expect(config.drives?.first?.cacheType == .unsafe)
        #expect(config.machineConfig == MachineConfiguration(vcpuCount: 2, memSizeMiB: 128, smt: false, trackDirtyPages: false, hugePages: HugePages.none))
        #expect(config.bootSource?.bootArgs == "console=ttyS0")
        #expect(try Self.decoded(APIFault.self, #"{"fault_message":"The requested operation is not supported after starting the microVM."}"#).faultMessage?.hasPrefix("The requested") == true)
    }

    @Test("Gated fields report the newest requirement among those set")
    func gatingTable() {
        #expect(NetworkInterface(ifaceId: "a", hostDevName: "t").requiredVersion == nil)
        let all = SnapshotLoadParams(snapshotPath: "/s", trackDirtyPages: true, vsockOverride: VsockOverride(udsPath: "/v"))
        #expect(all.requiredVersion?.version == .v1_16)
        #expect(all.requiredVersion?.feature == "vsock_override")
        #expect(SnapshotLoadParams(snapshotPath: "/s", enableDiffSnapshots: true).requiredVersion == nil)
        #expect(Balloon(amountMiB: 1, deflateOnOom: false, freePageHinting: true).requiredVersion?.version == .v1_14)
        #expect(MmdsConfig(networkInterfaces: [], imdsCompat: true).requiredVersion?.version == .v1_13)
        #expect(Pmem(id: "p", pathOnHost: "/p", rateLimiter: RateLimiter()).requiredVersion?.version == .v1_16)
        #expect(SerialDevice(serialOutPath: "/o").requiredVersion == nil)
    }
}
