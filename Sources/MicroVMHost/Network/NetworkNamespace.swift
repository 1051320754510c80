#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys

/// Runs code with the calling thread inside another network namespace. Everything here blocks
/// and must stay synchronous: the thread is moved with setns(2) and moved back before return,
/// so no `await` may happen inside (the body is not async).
package enum NetworkNamespace {
    /// Runs `body` inside the namespace bound at `path` (nil: where the thread already is).
    /// Processes spawned inside start in that namespace; /proc/sys/net opened inside is its.
    package static func run<T>(in path: String?, _ body: () throws(NetworkError) -> T) throws(NetworkError) -> T {
        guard let path else { return try body() }
        let previous: Int32
        do {
            previous = try SystemCallError.check("setns(CLONE_NEWNET)", path) { cmv_netns_enter(path) }
        } catch {
            throw error.errno == ENOENT ? .hostNamespaceMissing(path: path) : .system(vm: nil, error)
        }
        defer {
            // Failing to return would leave a pool thread in the wrong namespace.
            precondition(cmv_netns_restore(previous) == 0, "setns back to the original network namespace failed")
        }
        return try body()
    }

    /// Reads a /proc/sys value in the namespace at `path` (nil: this thread's).
    package static func readSysctl(_ key: String, in path: String?) throws(NetworkError) -> String {
        try run(in: path) { () throws(NetworkError) -> String in
            let file = "/proc/sys/" + key.replacing(".", with: "/")
            do throws(SystemCallError) {
                return try readSmallFile(file, limit: 256).trimmingNetworkWhitespace()
            } catch {
                throw .system(vm: nil, error)
            }
        }
    }

    /// Writes a /proc/sys value in the namespace at `path` (nil: this thread's).
    package static func writeSysctl(_ key: String, _ value: String, in path: String?) throws(NetworkError) {
        try run(in: path) { () throws(NetworkError) in
            let file = "/proc/sys/" + key.replacing(".", with: "/")
            do throws(SystemCallError) {
                let fd = try SystemCallError.check("open", file) { open(file, O_WRONLY | O_CLOEXEC) }
                defer { close(fd) }
                let bytes = Array(value.utf8)
                try SystemCallError.check("write", file) { bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
            } catch {
                throw .system(vm: nil, error)
            }
        }
    }
}

/// Finds and runs `ip` and `nft`. Blocking.
package struct NetworkTools: Sendable {
    let ip: String
    let nft: String

    package static let searchDirectories = ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/local/bin"]

    package static func locate(_ tool: String) -> String? {
        searchDirectories.map { "\($0)/\(tool)" }.first { access($0, X_OK) == 0 }
    }

    static func find() throws(NetworkError) -> NetworkTools {
        guard let ip = locate("ip") else { throw .toolMissing(tool: "ip", searched: searchDirectories) }
        guard let nft = locate("nft") else { throw .toolMissing(tool: "nft", searched: searchDirectories) }
        return NetworkTools(ip: ip, nft: nft)
    }

    /// Runs `tool arguments` (inside `namespace` when given) and returns its stdout; a non-zero
    /// exit is `commandFailed` with stderr verbatim.
    @discardableResult
    static func run(
        _ tool: String, _ arguments: [String], in namespace: String? = nil, vm: String? = nil
    ) throws(NetworkError) -> String {
        let output = try NetworkNamespace.run(in: namespace) { () throws(NetworkError) -> HostCommand.Output in
            do throws(SystemCallError) {
                return try HostCommand.run(tool, arguments, limit: 4 << 20)
            } catch {
                throw .system(vm: vm, error)
            }
        }
        guard output.termination == .exited(0) else {
            let shown = ([tool.split(separator: "/").last.map(String.init) ?? tool] + arguments.map { $0.count > 60 ? "'...'" : $0 })
                .joined(separator: " ")
            throw .commandFailed(
                vm: vm, command: shown, termination: output.termination,
                message: output.standardError.isEmpty ? output.standardOutput : output.standardError)
        }
        return output.standardOutput
    }

    static func json(_ tool: String, _ arguments: [String], in namespace: String? = nil) throws(NetworkError) -> JSONValue {
        let text = try run(tool, arguments, in: namespace)
        if text.trimmingNetworkWhitespace().isEmpty { return .array([]) }
        do {
            return try JSONValue.parse(text)
        } catch {
            throw .unexpectedOutput(command: ([tool] + arguments).joined(separator: " "), detail: error.description)
        }
    }
}
