import Foundation
import Logging
import MicroVM
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
        logger.logLevel = ProcessInfo.processInfo.environment["MICROVM_TEST_LOG"] == nil ? .warning : .debug
        return logger
    }()

    /// A private scratch directory, removed with everything in it when `body` ends.
    static func withScratchDirectory<T>(_ body: (String) async throws -> T) async throws -> T {
        let path = NSTemporaryDirectory() + "microvm-e2e-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try await body(path)
    }

    /// Starts an unjailed Firecracker with its socket in a scratch directory and guarantees that
    /// the process, socket and directory are gone when `body` ends, whether it passed or threw.
    @discardableResult
    ///
    /// Unless `logToFile` is false (for a test that configures the logger through the API),
    /// Firecracker logs to `<directory>/firecracker.log`: on stdout its lines would cut console lines.
    static func withFirecracker<T>(
        arguments: [String] = [], logToFile: Bool = true,
        _ body: (FirecrackerInstance, String) async throws -> T
    ) async throws -> T {
        let assets = try assets()
        return try await withScratchDirectory { directory in
            var arguments = arguments
            if logToFile {
                let logPath = directory + "/firecracker.log"
                _ = FileManager.default.createFile(atPath: logPath, contents: nil)
                arguments += ["--log-path", logPath, "--level", "Info"]
            }
            let instance = try await FirecrackerInstance.start(
                firecracker: FilePath(assets.firecracker), socketPath: directory + "/api.sock",
                arguments: arguments, logger: logger)
            do {
                let result = try await body(instance, directory)
                await instance.kill()
                return result
            } catch {
                await instance.kill()
                throw error
            }
        }
    }

    /// A TAP device name unique to this test process, within the 15-byte limit.
    static func tapName(_ suffix: String) -> String {
        "mvmt\(getpid() % 100_000)\(suffix)"
    }
}
