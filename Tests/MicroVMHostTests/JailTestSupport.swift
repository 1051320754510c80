#if canImport(Glibc)
    import Glibc
#endif
import Logging
import SystemPackage
import Testing

@testable import MicroVMHost

/// Host tests run where their prerequisites exist and are skipped elsewhere, except under CI
/// (`CI` set): there a missing prerequisite is a failure, so a CI run cannot pass by skipping.
enum HostPrerequisite {
    struct Missing: Error, CustomStringConvertible {
        var description: String
    }

    static var isCI: Bool { getenv("CI") != nil }
    static var isRoot: Bool { getuid() == 0 }
    static var hasKVM: Bool { access("/dev/kvm", R_OK | W_OK) == 0 }

    /// For `.enabled(if:)`: run when the prerequisite is met, and always under CI.
    static func runnable(_ met: Bool) -> Bool { met || isCI }

    /// Inside the test: fails it when `met` is false (only reachable under CI, where the trait
    /// does not skip).
    static func require(_ met: Bool, _ what: String) throws {
        guard !met else { return }
        throw Missing(description: "prerequisite missing\(isCI ? " (CI is set, so this fails instead of skipping)" : ""): \(what)")
    }
}

let testLogger: Logger = {
    var logger = Logger(label: "microvm.jail.tests")
    logger.logLevel = .critical
    return logger
}()

/// A fresh directory under /tmp, removed (after unmounting anything below it) by `remove()`.
struct ScratchDirectory {
    let path: String

    init(_ label: String) {
        var template = Array("/tmp/microvm-jail-\(label)-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(result != nil, "mkdtemp failed")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func file(_ name: String) -> String { path + "/" + name }

    func remove() {
        // Unmount whatever a test mounted below (deepest first), then delete.
        if let mounts = try? readSmallFile("/proc/mounts") {
            let targets = mounts.split(separator: "\n").compactMap { line -> String? in
                let fields = line.split(separator: " ")
                guard fields.count > 1 else { return nil }
                let target = CgroupHost.unescapeMountField(String(fields[1]))
                return target.hasPrefix(path + "/") ? target : nil
            }
            for target in targets.sorted(by: { $0.count > $1.count }) { umount2(target, Int32(MNT_DETACH)) }
        }
        _ = try? HostCommand.run("/bin/rm", ["-rf", "--one-file-system", path])
    }
}

func writeFile(_ path: String, _ contents: String, mode: mode_t = 0o644) throws {
    let fd = try SystemCallError.check("open", path) { open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode) }
    defer { close(fd) }
    let bytes = Array(contents.utf8)
    _ = try SystemCallError.check("write", path) { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
    try SystemCallError.check("fchmod", path) { fchmod(fd, mode) }
}

func statOf(_ path: String) throws -> stat {
    try JailFileSystem.lstatPath(path)
}

func exists(_ path: String) -> Bool {
    var status = stat()
    return lstat(path, &status) == 0
}

func mountTmpfs(at path: String, options: String = "size=64m", flags: UInt = 0) throws {
    try SystemCallError.check("mount(tmpfs)", path) { mount("tmpfs", path, "tmpfs", flags, options) }
}

/// Runs `body`, then `cleanup` whatever happened (async cleanup cannot live in `defer`).
func withCleanup(_ body: () async throws -> Void, cleanup: () async -> Void) async throws {
    do {
        try await body()
    } catch {
        await cleanup()
        throw error
    }
    await cleanup()
}

/// A unique name for cgroups and ids created by one test.
func uniqueName(_ prefix: String) -> String {
    "\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
}

/// Removes `<mount>/<parent>` in every hierarchy (the tests' parent cgroups; teardown leaves
/// parents alone on purpose).
func removeParentCgroups(_ parent: String, host: CgroupHost) {
    for mount in host.v1Mounts + (host.v2Mount.map { [$0] } ?? []) {
        rmdir(mount.directory + "/" + parent)
    }
}

/// The Firecracker test assets: environment first (MICROVM_JAILER_BIN, MICROVM_FIRECRACKER_BIN,
/// MICROVM_GUEST_KERNEL), then the provisioning script's assets.env.
enum TestAssets {
    static let values: [String: String] = {
        var result: [String: String] = [:]
        let cache = getenv("MICROVM_ASSETS_DIR").map { String(cString: $0) }
            ?? ((getenv("XDG_CACHE_HOME").map { String(cString: $0) } ?? ((getenv("HOME").map { String(cString: $0) } ?? "/root") + "/.cache"))
                + "/microvm/test-assets")
        if let text = try? readSmallFile(cache + "/assets.env") {
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1)
                if parts.count == 2 { result[String(parts[0])] = String(parts[1]) }
            }
        }
        for key in ["MICROVM_JAILER_BIN", "MICROVM_FIRECRACKER_BIN", "MICROVM_GUEST_KERNEL"] {
            if let value = getenv(key), value.pointee != 0 { result[key] = String(cString: value) }
        }
        return result
    }()

    static var jailer: String? { usable(values["MICROVM_JAILER_BIN"]) }
    static var firecracker: String? { usable(values["MICROVM_FIRECRACKER_BIN"]) }
    static var guestKernel: String? {
        guard let path = values["MICROVM_GUEST_KERNEL"], access(path, R_OK) == 0 else { return nil }
        return path
    }

    static func usable(_ path: String?) -> String? {
        guard let path, access(path, X_OK) == 0 else { return nil }
        return path
    }
}
