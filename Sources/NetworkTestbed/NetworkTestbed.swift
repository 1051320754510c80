#if canImport(Glibc)
    import Glibc
#endif
import CMicroVMSys
public import Logging
public import MicroVMHost
import SystemPackage
import Synchronization

/// A whole VM-network topology built only inside network namespaces it creates, for tests and
/// benchmarks that need real packets without touching the machine's own network:
///
///     "host" netns (the library's host: VM links, nft table)  --up0 192.0.2.1/24--
///         == veth ==  --wan0 192.0.2.2/24-- "internet" netns (echo servers; 198.51.100.1 on lo)
///
/// The machine's root namespace and its firewall are never touched. Names are unique per process
/// and label (names in /var/run/netns are global, and other test runs may share the machine).
public final class NetworkTestbed: Sendable {
    public let tag: String
    public let hostName: String
    public let internetName: String
    /// The VM networks' name prefix: 8 lowercase letters, unique per process, owner and testbed.
    public let prefix: String
    /// Leases and other state of the VM networks (a fresh directory under /tmp).
    public let stateDirectory: String
    public var hostPath: String { VMNetwork.namespaceDirectory + "/" + hostName }
    public var internetPath: String { VMNetwork.namespaceDirectory + "/" + internetName }
    public static let uplinkAddress = IPv4Address(192, 0, 2, 1)
    public static let internetAddress = IPv4Address(192, 0, 2, 2)
    public static let otherAddress = IPv4Address(198, 51, 100, 1)
    private static let made = Atomic<Int>(0)
    public static let uplinkAddress6 = IPv6Address("2001:db8:2::1")!
    public static let internetAddress6 = IPv6Address("2001:db8:2::2")!
    public static let otherAddress6 = IPv6Address("2001:db8:3::1")!

    /// `owner` tells test runs ("test") from benchmark runs ("bench") apart in every name.
    public init(_ label: String, owner: String = "test") throws {
        let pid = String(getpid()).map { Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(String($0))!)) }
        // The second letter counts the testbeds of this process, so two labels with one initial
        // never share VM names.
        let serial = Self.made.add(1, ordering: .relaxed).oldValue % 26
        prefix = String(owner.prefix(1)) + String(Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(serial)))) + String(pid.suffix(6))
        tag = "mv\(owner)-\(label)-\(getpid())"
        hostName = tag + "-host"
        internetName = tag + "-inet"
        var template = Array("/tmp/microvm-net-\(label)-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw CommandFailure(description: "mkdtemp: errno \(errno)") }
        stateDirectory = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        do {
            try runCommand(["ip", "netns", "add", hostName])
            try runCommand(["ip", "netns", "add", internetName])
            try runCommand(["ip", "-n", hostName, "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", internetName])
            try runCommand(["ip", "-n", hostName, "addr", "add", "\(Self.uplinkAddress)/24", "dev", "up0"])
            try runCommand(["ip", "-n", hostName, "link", "set", "up0", "up"])
            try runCommand(["ip", "-n", hostName, "link", "set", "lo", "up"])
            try runCommand(["ip", "-n", hostName, "route", "add", "default", "via", "\(Self.internetAddress)"])
            try runCommand(["ip", "-n", internetName, "addr", "add", "\(Self.internetAddress)/24", "dev", "wan0"])
            try runCommand(["ip", "-n", internetName, "addr", "add", "\(Self.otherAddress)/32", "dev", "lo"])
            try runCommand(["ip", "-n", internetName, "link", "set", "wan0", "up"])
            try runCommand(["ip", "-n", internetName, "link", "set", "lo", "up"])
            try NetworkNamespace.writeSysctl("net.ipv4.ip_forward", "1", in: hostPath)
            // IPv6 beside IPv4 (used when a test gives the VM networks IPv6); nodad: usable at once.
            try NetworkNamespace.writeSysctl("net.ipv6.conf.all.forwarding", "1", in: hostPath)
            try runCommand(["ip", "-n", hostName, "addr", "add", "\(Self.uplinkAddress6)/64", "dev", "up0", "nodad"])
            try runCommand(["ip", "-n", hostName, "route", "add", "::/0", "via", "\(Self.internetAddress6)"])
            try runCommand(["ip", "-n", internetName, "addr", "add", "\(Self.internetAddress6)/64", "dev", "wan0", "nodad"])
            try runCommand(["ip", "-n", internetName, "addr", "add", "\(Self.otherAddress6)/128", "dev", "lo"])
        } catch {
            remove()
            throw error
        }
    }

    public func configuration(uplink: String? = "up0", ipv6: Bool = false) -> VMNetworkConfiguration {
        VMNetworkConfiguration(
            stateDirectory: FilePath(stateDirectory), namePrefix: prefix, hostNamespace: FilePath(hostPath), uplink: uplink,
            ipv6: ipv6 ? IPv6Addressing() : nil)
    }

    public func network(uplink: String? = "up0", ipv6: Bool = false, logger: Logger) throws -> VMNetwork {
        try VMNetwork(configuration: configuration(uplink: uplink, ipv6: ipv6), logger: logger)
    }

    /// Removes everything the testbed made: VM namespaces of its prefix, its two namespaces and
    /// its state directory. Idempotent; safe to call from another thread (e.g. on a signal).
    public func remove() {
        if let dir = opendir(VMNetwork.namespaceDirectory) {
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name.hasPrefix(prefix) { names.append(name) }
            }
            closedir(dir)
            for name in names { _ = try? runCommand(["ip", "netns", "del", name]) }
        }
        for name in [hostName, internetName] where access(VMNetwork.namespaceDirectory + "/" + name, F_OK) == 0 {
            _ = try? runCommand(["ip", "netns", "del", name])
        }
        _ = try? runCommand(["rm", "-rf", "--one-file-system", stateDirectory])
    }
}

public struct CommandFailure: Error, CustomStringConvertible {
    public var description: String
    public init(description: String) { self.description = description }
}

/// Runs a command (found in the usual sbin/bin directories) inside `namespace` and returns its
/// stdout; a failure carries its stderr.
@discardableResult
public func runCommand(_ arguments: [String], in namespace: String? = nil) throws -> String {
    let tool = NetworkTools.locate(arguments[0]) ?? arguments[0]
    let output = try NetworkNamespace.run(in: namespace) { () throws(NetworkError) -> HostCommand.Output in
        do throws(SystemCallError) { return try HostCommand.run(tool, Array(arguments.dropFirst())) } catch { throw .system(vm: nil, error) }
    }
    guard output.termination == .exited(0) else {
        throw CommandFailure(description: "\(arguments.joined(separator: " ")): \(output.termination): \(output.standardError)")
    }
    return output.standardOutput
}

/// UDP and TCP echo servers on one namespace's sockets, counting what arrives per port.
public final class EchoServer: @unchecked Sendable {
    private let sockets: [(fd: Int32, port: UInt16, tcp: Bool)]
    private let counts = Mutex<[String: Int]>([:])
    private let stop = Atomic<Bool>(false)
    private var thread: pthread_t?

    /// UDP and TCP listeners on `ports` (all addresses) inside the namespace at `path`.
    public init(namespace path: String, ports: [UInt16]) throws {
        var sockets: [(Int32, UInt16, Bool)] = []
        for port in ports {
            for tcp in [false, true] {
                let fd = try boundSocket(in: path, stream: tcp, port: port)
                if tcp { listen(fd, 64) }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                sockets.append((fd, port, tcp))
            }
        }
        self.sockets = sockets
        thread = startThread { [self] in loop() }
    }

    /// Packets (UDP) or connections (TCP) per "udp/7", "tcp/7" etc.
    public func count(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }

    private func loop() {
        var clients: [Int32] = []
        var buffer = [UInt8](repeating: 0, count: 2048)
        while !stop.load(ordering: .relaxed) {
            var fds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
                + clients.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
            guard poll(&fds, nfds_t(fds.count), 50) > 0 else { continue }
            let polledClients = clients
            for (i, entry) in sockets.enumerated() where fds[i].revents != 0 {
                if entry.tcp {
                    let client = accept(entry.fd, nil, nil)
                    if client >= 0 {
                        counts.withLock { $0["tcp/\(entry.port)", default: 0] += 1 }
                        clients.append(client)
                    }
                } else {
                    var from = sockaddr_storage()
                    var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    let n = withUnsafeMutablePointer(to: &from) { pointer in
                        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(entry.fd, &buffer, buffer.count, 0, $0, &length) }
                    }
                    guard n > 0 else { continue }
                    counts.withLock { $0["udp/\(entry.port)", default: 0] += 1 }
                    _ = withUnsafePointer(to: &from) { pointer in
                        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(entry.fd, buffer, n, 0, $0, length) }
                    }
                }
            }
            for (offset, client) in polledClients.enumerated().reversed() where fds[sockets.count + offset].revents != 0 {
                let n = read(client, &buffer, buffer.count)
                if n > 0 { _ = write(client, buffer, n) } else { close(client); clients.removeAll { $0 == client } }
            }
        }
        for client in clients { close(client) }
    }

    public func shutdown() {
        stop.store(true, ordering: .relaxed)
        if let thread { pthread_join(thread, nil) }
        for entry in sockets { close(entry.fd) }
    }
}

/// A socket made inside the namespace at `path`, bound to `port` on all its IPv4 and IPv6
/// addresses (one dual-stack socket).
func boundSocket(in path: String, stream: Bool, port: UInt16) throws -> Int32 {
    let fd = cmv_netns_socket(path, AF_INET6, stream ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue), 0)
    guard fd >= 0 else { throw CommandFailure(description: "socket in \(path): errno \(errno)") }
    var one: Int32 = 1
    var zero: Int32 = 0
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in6()
    address.sin6_family = sa_family_t(AF_INET6)
    address.sin6_port = port.bigEndian
    let bound = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
    }
    guard bound == 0 else {
        let error = errno
        close(fd)
        throw CommandFailure(description: "bind port \(port) in \(path): errno \(error)")
    }
    return fd
}

/// Runs `body` on a thread of its own (a blocking loop must not occupy a concurrency thread).
func startThread(_ body: @escaping () -> Void) -> pthread_t {
    final class Box {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }
    var handle = pthread_t()
    pthread_create(&handle, nil, { raw in
        Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue().body()
        return nil
    }, Unmanaged.passRetained(Box(body)).toOpaque())
    return handle
}
