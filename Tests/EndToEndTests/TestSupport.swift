import Foundation
import Logging
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// Where the end-to-end tests find the real Firecracker, the jailer and the test guest.
///
/// Each path comes from its environment variable if set, else from the `assets.env` that
/// `scripts/provision-test-assets.sh` writes into the asset cache.
struct TestAssets: Sendable {
    let firecracker: String
    let jailer: String
    let kernel: String
    let rootfsImage: String
    let dataImage: String

    static let cacheDirectory: String = {
        let environment = ProcessInfo.processInfo.environment
        if let explicit = environment["MICROVM_ASSETS_DIR"], !explicit.isEmpty { return explicit }
        let cacheHome = environment["XDG_CACHE_HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (NSHomeDirectory() + "/.cache")
        return cacheHome + "/microvm/test-assets"
    }()

    /// The assets, or a sentence saying what is missing and how to get it.
    static let resolved: Result<TestAssets, PrerequisiteMissing> = {
        var values: [String: String] = [:]
        if let text = try? String(contentsOfFile: cacheDirectory + "/assets.env", encoding: .utf8) {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { values[String(parts[0])] = String(parts[1]) }
            }
        }
        for (key, value) in ProcessInfo.processInfo.environment where key.hasPrefix("MICROVM_") && !value.isEmpty {
            values[key] = value
        }
        var missing: [String] = []
        func path(_ key: String) -> String {
            guard let value = values[key], FileManager.default.fileExists(atPath: value) else {
                missing.append(key + (values[key].map { " (\($0) does not exist)" } ?? ""))
                return ""
            }
            return value
        }
        let assets = TestAssets(
            firecracker: path("MICROVM_FIRECRACKER_BIN"), jailer: path("MICROVM_JAILER_BIN"),
            kernel: path("MICROVM_GUEST_KERNEL"), rootfsImage: path("MICROVM_ROOTFS_IMAGE"),
            dataImage: path("MICROVM_DATA_IMAGE"))
        if !missing.isEmpty {
            return .failure(PrerequisiteMissing(
                "test assets missing: \(missing.joined(separator: ", ")); run scripts/provision-test-assets.sh (cache: \(cacheDirectory))"))
        }
        if access("/dev/kvm", R_OK | W_OK) != 0 {
            return .failure(PrerequisiteMissing("/dev/kvm is missing or not accessible; end-to-end tests need KVM"))
        }
        if getuid() != 0 {
            return .failure(PrerequisiteMissing("end-to-end tests need root (TAP devices, jailer, cgroups); run them as root"))
        }
        return .success(assets)
    }()
}

struct PrerequisiteMissing: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum EndToEnd {
    /// CI must run the end-to-end tests: there a missing prerequisite fails, it never skips.
    static let inCI: Bool = {
        let value = ProcessInfo.processInfo.environment["CI"] ?? ""
        return !value.isEmpty && value != "0" && value.lowercased() != "false"
    }()

    /// Whether the suite runs: always in CI (to fail loudly), elsewhere when it can.
    static let enabled: Bool = {
        if inCI { return true }
        if case .success = TestAssets.resolved { return true }
        return false
    }()

    /// The assets; records a failure naming what is missing when they are not there.
    static func assets() throws -> TestAssets {
        switch TestAssets.resolved {
        case .success(let assets): return assets
        case .failure(let missing):
            Issue.record("prerequisite missing: \(missing)")
            throw missing
        }
    }

    static let logger: Logger = {
        var logger = Logger(label: "microvm.e2e")
        logger.logLevel = ProcessInfo.processInfo.environment["MICROVM_TEST_LOG"] == nil ? .error : .debug
        return logger
    }()

    /// A logger whose messages at `level` and above are kept in `messages` as well.
    final class CapturedLog: LogHandler, @unchecked Sendable {
        private let lock = NSLock()
        private var kept: [(level: Logger.Level, message: String)] = []
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .warning

        var messages: [(level: Logger.Level, message: String)] { lock.withLock { kept } }
        var logger: Logger { Logger(label: "microvm.e2e.captured") { _ in self } }

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            lock.withLock { kept.append((event.level, "\(event.message)")) }
        }
    }

    /// A private scratch directory, removed with everything in it when `body` ends.
    static func withScratchDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let path = NSTemporaryDirectory() + "microvm-e2e-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try await body(path)
    }

    /// A TAP device name unique to this test process, within the 15-byte limit.
    static func tapName(_ suffix: String) -> String {
        "mvmt\(getpid() % 100_000)\(suffix)"
    }
}

extension EndToEnd {
    static let uid: UInt32 = 123
    static let gid: UInt32 = 100
    static let heartbeatArgs = ["console=ttyS0", "microvm.heartbeat_ms=100"]

    /// The test guest as a spec.
    static func spec(_ assets: TestAssets, id: String, args: [String] = heartbeatArgs, memoryMiB: Int = 64) -> VMSpec {
        VMSpec(id: id, machine: .init(vcpus: 1, memoryMiB: memoryMiB), boot: .init(kernel: assets.kernel, args: args))
    }

    /// A driver whose chroot base (under `directory`) and parent cgroup belong to one test.
    static func configuration(
        _ assets: TestAssets, policy: SandboxPolicy, base: String, parent: String, jailer: String? = nil, firecracker: String? = nil
    ) -> DriverConfiguration {
        DriverConfiguration(
            jailer: JailerConfiguration(
                jailerBinary: FilePath(jailer ?? assets.jailer), firecrackerBinary: FilePath(firecracker ?? assets.firecracker),
                uid: uid, gid: gid, chrootBase: FilePath(base), parentCgroup: parent),
            policy: policy, stateStore: StateStore(root: FilePath(base + "/../state")))
    }

    /// Runs `body` with a driver for `policy` whose jails and cgroups belong to this test alone,
    /// then checks, whether `body` passed or threw, that nothing is left: no jail or VM
    /// directory, no cgroup, no pidfd, no child process. A leak is a test failure.
    static func withDriver<T>(
        _ policy: SandboxPolicy, name: String,
        _ body: (DriverConfiguration, TestAssets, String) async throws -> T
    ) async throws -> T {
        let assets = try assets()
        return try await withScratchDirectory { directory in
            let base = directory + "/jails"
            try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
            let parent = "microvm-e2e-\(getpid())-\(name)"
            let configuration = configuration(assets, policy: policy, base: base, parent: parent)
            let pidfdsBefore = pidfdCount()
            defer {
                let jails = (try? FileManager.default.subpathsOfDirectory(atPath: base))?.filter { $0.split(separator: "/").count >= 2 } ?? []
                #expect(jails.isEmpty, "VM directories left behind: \(jails)")
                let records = ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/state")) ?? []).filter { !$0.hasPrefix(".") }
                #expect(records.isEmpty, "VM records left behind: \(records)")
                for hierarchy in cgroupHierarchies {
                    let parentDirectory = hierarchy + "/" + parent
                    let children = ((try? FileManager.default.contentsOfDirectory(atPath: parentDirectory)) ?? []).filter { name in
                        var isDirectory: ObjCBool = false
                        return FileManager.default.fileExists(atPath: parentDirectory + "/" + name, isDirectory: &isDirectory) && isDirectory.boolValue
                    }
                    #expect(children.isEmpty, "cgroups left behind in \(parentDirectory): \(children)")
                    rmdir(parentDirectory)
                }
                #expect(pidfdCount() <= pidfdsBefore, "pidfds left open: \(pidfdCount()) after, \(pidfdsBefore) before")
                let children = liveChildren()
                #expect(children.isEmpty, "child processes left running: \(children)")
            }
            return try await body(configuration, assets, directory)
        }
    }

    /// Kills `vm` if `body` throws (the VM's own teardown then removes everything).
    static func using<T>(_ vm: MicroVM, _ body: (MicroVM) async throws -> T) async throws -> T {
        do {
            return try await body(vm)
        } catch {
            await vm.kill()
            throw error
        }
    }

    static var cgroupHierarchies: [String] {
        ["cpu", "cpuacct", "cpuset", "memory", "pids", "unified"].map { "/sys/fs/cgroup/" + $0 } + ["/sys/fs/cgroup"]
    }

    /// Open pidfds of this process.
    static func pidfdCount() -> Int {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return entries.filter { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + $0)) == "anon_inode:[pidfd]" }.count
    }

    /// Open descriptors of this process.
    static func descriptorCount() -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
    }

    /// Children of this process that are still running (not zombies).
    static func liveChildren() -> [String] {
        let me = getpid()
        return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap { entry -> String? in
            guard Int32(entry) != nil, let status = try? String(contentsOfFile: "/proc/\(entry)/status", encoding: .utf8) else { return nil }
            let fields = Dictionary(status.split(separator: "\n").compactMap { line -> (String, String)? in
                let parts = line.split(separator: ":", maxSplits: 1)
                return parts.count == 2 ? (String(parts[0]), parts[1].trimmingCharacters(in: .whitespaces)) : nil
            }, uniquingKeysWith: { first, _ in first })
            guard fields["PPid"] == "\(me)", fields["State"]?.hasPrefix("Z") == false else { return nil }
            return "\(entry) \(fields["Name"] ?? "?")"
        }
    }

    /// True for a line Firecracker's logger would write (`<RFC 3339 time> [<instance>:...]`).
    static func looksLikeFirecrackerLog(_ line: String) -> Bool {
        line.range(of: #"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+ \["#, options: .regularExpression) != nil
    }
}

extension EndToEnd {
    /// Reads `fd` on a plain thread until end of file, handing each complete line to `line`,
    /// then calls `end`. The descriptor is closed at the end.
    static func readLines(from fd: Int32, _ line: @escaping @Sendable (String) -> Void, end: @escaping @Sendable () -> Void = {}) {
        DispatchQueue.global().async {
            let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            var pending = Data()
            while true {
                let chunk = handle.availableData
                if chunk.isEmpty { break }
                pending += chunk
                while let newline = pending.firstIndex(of: 10) {
                    line(String(decoding: pending[pending.startIndex..<newline], as: UTF8.self))
                    pending = pending[(newline + 1)...]
                }
            }
            end()
        }
    }
}
