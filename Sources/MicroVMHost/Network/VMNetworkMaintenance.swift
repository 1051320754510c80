#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import Logging

/// What `garbageCollect` found and removed.
public struct NetworkGarbageReport: Sendable, Hashable {
    /// VMs whose lease was released (they were not in `keeping`).
    public var releasedVMs: [VMIdentifier] = []
    /// Namespaces, interfaces and nft chains of ours that no lease claimed.
    public var orphanNamespaces: [String] = []
    public var orphanInterfaces: [String] = []
    public var orphanChains: [String] = []
    /// Lease files that could not be read (removed).
    public var damagedLeases: [String] = []
    /// Steps that failed; gc can be run again.
    public var failures: [NetworkError] = []
}

/// What the host looks like to VM networking. `problems` break isolation or connectivity;
/// `warnings` may, depending on what else the host does.
public struct NetworkPreflightReport: Sendable, Hashable {
    public var problems: [NetworkError] = []
    public var warnings: [NetworkError] = []
    public var isReady: Bool { problems.isEmpty }

    /// Throws `hostNotReady` with every problem when there is one.
    public func requireReady() throws(NetworkError) {
        if !problems.isEmpty { throw .hostNotReady(problems: problems) }
    }
}

extension VMNetwork {
    /// Releases every lease whose VM is not in `keeping` (its VMM is gone) with a full teardown,
    /// then removes namespaces, interfaces and nft chains of ours that no lease claims (a driver
    /// killed between steps). Live plumbing is listed before the leases are read, so a VM being
    /// set up concurrently (lease first, then plumbing) is never taken for an orphan. Blocks.
    public func garbageCollect(keeping: Set<VMIdentifier>) throws(NetworkError) -> NetworkGarbageReport {
        var report = NetworkGarbageReport()
        let namespaces = ourNamespaces()
        let interfaces = try ourInterfaces()
        let chains = try ourChains()

        let (leased, damaged) = try leases.all()
        for case .leaseCorrupt(let path, _) in damaged {
            if let index = path.split(separator: "/").last.flatMap({ Int($0) }) {
                do { try leases.removeIndex(index, whenLast: { removeHostTable(logger: logger) }) } catch { report.failures.append(error) }
                report.damagedLeases.append(path)
            }
        }
        var claimed = Set<Int>()
        for lease in leased {
            if keeping.contains(lease.vm) {
                claimed.insert(lease.index)
                continue
            }
            do {
                try tearDown(lease.vm)
                report.releasedVMs.append(lease.vm)
            } catch {
                report.failures.append(error)
                claimed.insert(lease.index)
            }
        }
        let released = Set(leased.filter { !keeping.contains($0.vm) }.map(\.index))
        var orphanIndices = Set<Int>()
        for (name, index) in namespaces where !claimed.contains(index) && !released.contains(index) {
            report.orphanNamespaces.append(name)
            orphanIndices.insert(index)
        }
        for (name, index) in interfaces where !claimed.contains(index) && !released.contains(index) {
            report.orphanInterfaces.append(name)
            orphanIndices.insert(index)
        }
        for (name, index) in chains where !claimed.contains(index) && !released.contains(index) {
            report.orphanChains.append(name)
            orphanIndices.insert(index)
        }
        for index in orphanIndices.sorted() {
            do { try removePlumbing(index: index, vm: nil) } catch { report.failures.append(error) }
            do {
                try NetworkTools.run(tools.nft, [removeHostRulesScript(index: index)], in: hostNamespace)
            } catch {
                report.failures.append(error)
            }
        }
        // A host with no networked VM keeps no table (its rules drop traffic of every
        // interface named with the prefix) and no lease files.
        do { try leases.ifNoLease { removeHostTable(logger: logger) } } catch { report.failures.append(error) }
        if !(report.releasedVMs.isEmpty && orphanIndices.isEmpty && report.damagedLeases.isEmpty) {
            logger.info(
                "network gc",
                metadata: [
                    "released": "\(report.releasedVMs.map(\.rawValue))", "orphan_indices": "\(orphanIndices.sorted())",
                    "failures": "\(report.failures.count)",
                ])
        }
        return report
    }

    /// Our namespaces in /var/run/netns, by index.
    func ourNamespaces() -> [(String, Int)] {
        guard let dir = opendir(Self.namespaceDirectory) else { return [] }
        defer { closedir(dir) }
        var result: [(String, Int)] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let index = configuration.index(ofName: name) { result.append((name, index)) }
        }
        return result
    }

    /// Our interfaces in the host namespace (`ip -j link show`), by index.
    func ourInterfaces() throws(NetworkError) -> [(String, Int)] {
        let links = try NetworkTools.json(tools.ip, ["-j", "link", "show"], in: hostNamespace)
        return (links.array ?? []).compactMap { link in
            guard let name = link["ifname"]?.string, let index = configuration.index(ofName: name) else { return nil }
            return (name, index)
        }
    }

    /// Our per-VM chains in the host table (`nft -j list table`), by index; none if no table.
    func ourChains() throws(NetworkError) -> [(String, Int)] {
        let listing: JSONValue
        do {
            listing = try NetworkTools.json(tools.nft, ["-j", "list", "table", "inet", configuration.tableName], in: hostNamespace)
        } catch {
            if case .commandFailed(_, _, _, let message) = error, message.contains("No such file or directory") { return [] }
            throw error
        }
        var result: [(String, Int)] = []
        for item in listing["nftables"]?.array ?? [] {
            guard let chain = item["chain"], let name = chain["name"]?.string, chain["hook"] == nil else { continue }
            for suffix in ["_out", "_in"] where name.hasSuffix(suffix) {
                if let index = configuration.index(ofName: String(name.dropLast(suffix.count))) { result.append((name, index)) }
            }
        }
        return result
    }

    /// Checks what makes VM networking fail or leak in the host namespace: the tools, the host
    /// namespace itself, /dev/net/tun, IPv4 forwarding, a foreign forward chain with policy drop
    /// (it drops what our chain accepts: every base chain on a hook must accept), a legacy
    /// iptables FORWARD chain that drops VM traffic (nft cannot see it), br_netfilter, and the
    /// uplink. Blocks.
    public func preflight() -> NetworkPreflightReport {
        var report = NetworkPreflightReport()
        let namespaceLabel = hostNamespace ?? "the host namespace"
        if let path = hostNamespace, !FileSystem.exists(path) {
            report.problems.append(.hostNamespaceMissing(path: path))
            return report
        }
        var device = stat()
        if stat("/dev/net/tun", &device) != 0 || (device.st_mode & S_IFMT) != S_IFCHR {
            report.problems.append(.tunUnavailable("missing or not a character device"))
        }
        do {
            if try NetworkNamespace.readSysctl("net.ipv4.ip_forward", in: hostNamespace) != "1" {
                report.problems.append(.forwardingDisabled(namespace: namespaceLabel))
            }
            if configuration.ipv6 != nil, try NetworkNamespace.readSysctl("net.ipv6.conf.all.forwarding", in: hostNamespace) != "1" {
                report.problems.append(.ipv6ForwardingDisabled(namespace: namespaceLabel))
            }
        } catch {
            report.problems.append(error)
        }
        if let uplink = configuration.uplink {
            do {
                if try !interfaceExists(uplink, in: hostNamespace) {
                    report.problems.append(.uplinkMissing(name: uplink, namespace: namespaceLabel))
                }
            } catch {
                report.problems.append(error)
            }
        }
        do {
            let ruleset = try NetworkTools.json(tools.nft, ["-j", "list", "ruleset"], in: hostNamespace)
            for item in ruleset["nftables"]?.array ?? [] {
                guard let chain = item["chain"], chain["hook"]?.string == "forward", chain["policy"]?.string == "drop",
                    let family = chain["family"]?.string, let table = chain["table"]?.string,
                    let name = chain["name"]?.string
                else { continue }
                if family == "inet" && table == configuration.tableName { continue }
                report.problems.append(.foreignForwardDrop(family: family, table: table, chain: name))
            }
        } catch {
            report.problems.append(error)
        }
        checkLegacyIptables(into: &report)
        if FileSystem.exists("/sys/module/br_netfilter") {
            let value = (try? NetworkNamespace.readSysctl("net.bridge.bridge-nf-call-iptables", in: hostNamespace)) ?? "?"
            report.warnings.append(
                .bridgeNetfilter(detail: "net.bridge.bridge-nf-call-iptables = \(value) in \(namespaceLabel): bridged frames pass through the IP firewall hooks"))
        }
        return report
    }
}
