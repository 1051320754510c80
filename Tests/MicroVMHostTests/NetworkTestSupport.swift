#if canImport(Glibc)
    import Glibc
#endif
import CMicroVMSys
import Logging
import SystemPackage
import Synchronization
import Testing

@testable import MicroVMHost

/// The whole topology of a network test, built only inside namespaces the test creates:
///
///     "host" netns (the library's host: VM links, nft table)  --up0 192.0.2.1/24--
///         == veth ==  --wan0 192.0.2.2/24-- "internet" netns (echo servers; 198.51.100.1 on lo)
///
/// The machine's root namespace and its firewall are never touched.
final class NetworkTopology {
    let tag: String
    let hostName: String
    let internetName: String
    let prefix: String
    let state: ScratchDirectory
    var hostPath: String { VMNetwork.namespaceDirectory + "/" + hostName }
    var internetPath: String { VMNetwork.namespaceDirectory + "/" + internetName }
    static let uplinkAddress = IPv4Address(192, 0, 2, 1)
    static let internetAddress = IPv4Address(192, 0, 2, 2)
    static let otherAddress = IPv4Address(198, 51, 100, 1)

    init(_ label: String) throws {
        // Lowercase letters only, unique per process and label: names in /var/run/netns are global.
        let pid = String(getpid()).map { Character(Unicode.Scalar(UInt8(ascii: "a") + UInt8(String($0))!)) }
        prefix = "t" + String(label.prefix(1)) + String(pid.suffix(6))
        tag = "mvtest-\(label)-\(getpid())"
        hostName = tag + "-host"
        internetName = tag + "-inet"
        state = ScratchDirectory("net-\(label)")
        try sh(["ip", "netns", "add", hostName])
        try sh(["ip", "netns", "add", internetName])
        try sh(["ip", "-n", hostName, "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", internetName])
        try sh(["ip", "-n", hostName, "addr", "add", "\(Self.uplinkAddress)/24", "dev", "up0"])
        try sh(["ip", "-n", hostName, "link", "set", "up0", "up"])
        try sh(["ip", "-n", hostName, "link", "set", "lo", "up"])
        try sh(["ip", "-n", hostName, "route", "add", "default", "via", "\(Self.internetAddress)"])
        try sh(["ip", "-n", internetName, "addr", "add", "\(Self.internetAddress)/24", "dev", "wan0"])
        try sh(["ip", "-n", internetName, "addr", "add", "\(Self.otherAddress)/32", "dev", "lo"])
        try sh(["ip", "-n", internetName, "link", "set", "wan0", "up"])
        try sh(["ip", "-n", internetName, "link", "set", "lo", "up"])
        try NetworkNamespace.writeSysctl("net.ipv4.ip_forward", "1", in: hostPath)
    }

    func configuration(uplink: String? = "up0") -> VMNetworkConfiguration {
        VMNetworkConfiguration(
            stateDirectory: FilePath(state.path), namePrefix: prefix, hostNamespace: FilePath(hostPath), uplink: uplink)
    }

    func network(uplink: String? = "up0") throws -> VMNetwork {
        try VMNetwork(configuration: configuration(uplink: uplink), logger: testLogger)
    }

    /// Removes everything the test made: VM namespaces of this prefix, the two namespaces, state.
    func remove() {
        if let dir = opendir(VMNetwork.namespaceDirectory) {
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name.hasPrefix(prefix) { names.append(name) }
            }
            closedir(dir)
            for name in names { _ = try? sh(["ip", "netns", "del", name]) }
        }
        _ = try? sh(["ip", "netns", "del", hostName])
        _ = try? sh(["ip", "netns", "del", internetName])
        state.remove()
    }
}

struct CommandFailure: Error, CustomStringConvertible {
    var description: String
}

@discardableResult
func sh(_ arguments: [String], in namespace: String? = nil) throws -> String {
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
final class EchoServer: @unchecked Sendable {
    private let sockets: [(fd: Int32, port: UInt16, tcp: Bool)]
    private let counts = Mutex<[String: Int]>([:])
    private let stop = Atomic<Bool>(false)
    private var thread: pthread_t?

    /// UDP and TCP listeners on `ports` (all addresses) inside the namespace at `path`.
    init(namespace path: String, ports: [UInt16]) throws {
        var sockets: [(Int32, UInt16, Bool)] = []
        for port in ports {
            for tcp in [false, true] {
                let fd = cmv_netns_socket(path, AF_INET, tcp ? Int32(SOCK_STREAM.rawValue) : Int32(SOCK_DGRAM.rawValue), 0)
                guard fd >= 0 else { throw CommandFailure(description: "socket in \(path): errno \(errno)") }
                var one: Int32 = 1
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
                var address = sockaddr_in()
                address.sin_family = sa_family_t(AF_INET)
                address.sin_port = port.bigEndian
                let bound = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard bound == 0 else { throw CommandFailure(description: "bind port \(port): errno \(errno)") }
                if tcp { listen(fd, 64) }
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                sockets.append((fd, port, tcp))
            }
        }
        self.sockets = sockets
        let box = Unmanaged.passRetained(self)
        var handle = pthread_t()
        pthread_create(&handle, nil, { raw in
            let server = Unmanaged<EchoServer>.fromOpaque(raw!).takeRetainedValue()
            server.loop()
            return nil
        }, box.toOpaque())
        thread = handle
    }

    /// Packets (UDP) or connections (TCP) per "udp/7", "tcp/7" etc.
    func count(_ key: String) -> Int { counts.withLock { $0[key] ?? 0 } }

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
                    var from = sockaddr_in()
                    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
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

    func shutdown() {
        stop.store(true, ordering: .relaxed)
        if let thread { pthread_join(thread, nil) }
        for entry in sockets { close(entry.fd) }
    }
}
