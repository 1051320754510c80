/// Reads a legacy (xtables, not nft) filter table, as `iptables-legacy -S` prints it, for what
/// drops every packet of the VMs in FORWARD: Docker and ufw on iptables-legacy set policy DROP,
/// and nft cannot see those rules, while a packet must pass both to be forwarded.
///
/// Counted as dropping VM traffic: the policy DROP, and DROP/REJECT rules whose only matches are
/// interfaces that can be a VM's (`-i mvm+`, or none at all). Rules with other matches (Docker's
/// `--ctstate INVALID -j DROP`) drop only some packets and are left out. Jumps to the table's own
/// chains are followed as the kernel does (their rules in place of the jump, a `RETURN` ending
/// the chain), when nothing but interfaces a VM's packets can have decides the jump: Docker's
/// DOCKER-USER and ufw's chains. Accept rules for the VMs' interfaces ahead of the drops, in
/// FORWARD or in a chain it jumps to (what the fix inserts), clear the finding.
struct LegacyForwardChain: Sendable, Hashable {
    var policyDrop = false
    /// The `-A ...` lines that drop VM traffic, verbatim (FORWARD's or a chain's it jumps to).
    var droppingRules: [String] = []
    /// FORWARD jumps to DOCKER-USER, where Docker wants local rules (it rewrites FORWARD).
    var hasDockerUser = false

    var dropsVMTraffic: Bool { policyDrop || !droppingRules.isEmpty }

    /// How deep jumps are followed, and how many rules are read at most (a chain reached by
    /// several jumps is read each time, as the kernel does).
    static let maximumJumpDepth = 16
    static let maximumRules = 10_000

    /// `isOurs` tells whether an interface name pattern (`mvm+`, `mvm3`) can name a VM interface.
    init(listing: String, isOurs: (String) -> Bool) {
        var chains: [String: [(line: String, rule: Rule)]] = [:]
        for line in listing.split(separator: "\n").map({ String($0).trimmingNetworkWhitespace() }) {
            let words = line.split(separator: " ").map(String.init)
            if words.count == 3, words[0] == "-P", words[1] == "FORWARD" {
                policyDrop = words[2] == "DROP"
                continue
            }
            if words.count == 2, words[0] == "-N" {
                chains[words[1], default: []] = chains[words[1]] ?? []
                continue
            }
            guard words.count >= 2, words[0] == "-A" else { continue }
            chains[words[1], default: []].append((line, Rule(Array(words.dropFirst(2)))))
        }
        hasDockerUser = chains["FORWARD", default: []].contains { $0.rule.target == "DOCKER-USER" }

        /// Whether an interface match lets a VM's packets through (`nil`: no match on it).
        func admitsOurs(_ match: (name: String, negated: Bool)?) -> Bool {
            guard let match else { return true }
            return match.negated ? !isOurs(match.name) : isOurs(match.name)
        }
        /// The rules a VM's packet meets, in order: FORWARD's, with each jump that only
        /// interfaces decide replaced by its chain's rules, up to the chain's first RETURN. A
        /// chain already on the path is not entered again (iptables refuses such loops).
        func flatten(_ chain: String, path: [String], into rules: inout [(line: String, rule: Rule)]) {
            for entry in chains[chain] ?? [] {
                guard rules.count < Self.maximumRules else { return }
                let rule = entry.rule
                let decidedByInterfaces = rule.otherMatches.isEmpty && !rule.onlyEstablished
                if rule.target == "RETURN" {
                    if decidedByInterfaces, admitsOurs(rule.input), admitsOurs(rule.output) { return }
                    continue
                }
                if let target = rule.target, chains[target] != nil {
                    guard decidedByInterfaces, admitsOurs(rule.input), admitsOurs(rule.output), !path.contains(target),
                        path.count < Self.maximumJumpDepth
                    else { continue }
                    flatten(target, path: path + [target], into: &rules)
                    continue
                }
                rules.append(entry)
            }
        }
        var rules: [(line: String, rule: Rule)] = []
        flatten("FORWARD", path: ["FORWARD"], into: &rules)

        var outboundAccepted = false
        var returnAccepted = false
        for (line, rule) in rules {
            switch rule.target {
            case "ACCEPT":
                let inbound = rule.input.map { !$0.negated && isOurs($0.name) } ?? false
                let outbound = rule.output.map { !$0.negated && isOurs($0.name) } ?? false
                if inbound, rule.output == nil, rule.otherMatches.isEmpty { outboundAccepted = true }
                // Replies: to our interfaces or to any, limited to established flows or not at all.
                if rule.input == nil, outbound || rule.output == nil,
                    rule.otherMatches.isEmpty || rule.onlyEstablished
                {
                    returnAccepted = true
                }
            case "DROP", "REJECT":
                guard rule.otherMatches.isEmpty, !(outboundAccepted && returnAccepted) else { continue }
                if admitsOurs(rule.input), admitsOurs(rule.output) { droppingRules.append(line) }
            default:
                continue
            }
        }
        if outboundAccepted && returnAccepted { policyDrop = false }
    }

    /// One `-A` rule: its interface matches, its target, and whatever else it matches on.
    private struct Rule {
        var input: (name: String, negated: Bool)?
        var output: (name: String, negated: Bool)?
        var target: String?
        var otherMatches: [String] = []
        var onlyEstablished = false

        init(_ words: [String]) {
            var negate = false
            var index = 0
            var states: [String] = []
            while index < words.count {
                let word = words[index]
                let value = index + 1 < words.count ? words[index + 1] : ""
                switch word {
                case "!": negate = true; index += 1; continue
                case "-i", "--in-interface": input = (value, negate); index += 2
                case "-o", "--out-interface": output = (value, negate); index += 2
                case "-j", "--jump":
                    // What follows the target are its own options (--reject-with), not matches.
                    target = value
                    index = words.count
                case "-m", "--match":
                    if value != "conntrack" && value != "state" { otherMatches.append("-m " + value) }
                    index += 2
                case "--ctstate", "--state": states.append(value); index += 2
                default: otherMatches.append(word); index += 1
                }
                negate = false
            }
            if !states.isEmpty {
                let established = states.allSatisfy { state in
                    state.split(separator: ",").allSatisfy { $0 == "ESTABLISHED" || $0 == "RELATED" }
                }
                if established { onlyEstablished = true } else { otherMatches.append("--ctstate " + states.joined(separator: ",")) }
            }
        }
    }
}

extension VMNetwork {
    /// Whether an iptables interface pattern can name one of this library's interfaces.
    func legacyPatternIsOurs(_ pattern: String) -> Bool {
        let prefix = configuration.namePrefix
        guard pattern.hasSuffix("+") else { return configuration.index(ofName: pattern) != nil }
        let stem = String(pattern.dropLast())
        if prefix.hasPrefix(stem) { return true }
        guard stem.hasPrefix(prefix) else { return false }
        return stem.dropFirst(prefix.count).allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// The exact commands that let VM traffic through a legacy FORWARD chain (run them in the
    /// host namespace); our own nft rules still filter it, since a packet must pass both.
    func legacyForwardFix(tool: String, chain: LegacyForwardChain) -> String {
        let netns = configuration.hostNamespace.flatMap(\.lastComponent).map { "ip netns exec \($0.string) " } ?? ""
        let target = chain.hasDockerUser ? "DOCKER-USER" : "FORWARD"
        let wildcard = configuration.namePrefix + "+"
        return "\(netns)\(tool) -I \(target) 1 -i \(wildcard) -j ACCEPT && "
            + "\(netns)\(tool) -I \(target) 2 -o \(wildcard) -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    }

    /// Legacy iptables in the host namespace: the FORWARD chains of iptables-legacy (and of
    /// ip6tables-legacy when guests have IPv6) that drop VM traffic are problems. Only tables
    /// that are already loaded are read, since listing one would create it. Without the tools,
    /// loaded tables are a warning (they cannot be inspected).
    func checkLegacyIptables(into report: inout NetworkPreflightReport) {
        // thread-self: /proc/net is the namespace of the process's main thread, not of this one.
        var families: [(names: String, tool: String)] = [("/proc/thread-self/net/ip_tables_names", "iptables-legacy")]
        if configuration.ipv6 != nil { families.append(("/proc/thread-self/net/ip6_tables_names", "ip6tables-legacy")) }
        for family in families {
            guard let names = try? NetworkNamespace.run(in: hostNamespace, { () throws(NetworkError) -> String in
                (try? readSmallFile(family.names, limit: 4096)) ?? ""
            }) else { continue }
            let tables = names.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
            if tables.isEmpty { continue }
            guard let tool = NetworkTools.locate(family.tool) else {
                report.warnings.append(.legacyIptables(tables: tables))
                continue
            }
            guard tables.contains("filter") else { continue }
            do {
                // The whole filter table: FORWARD's jumps are followed into its other chains.
                let listing = try NetworkTools.run(tool, ["-w", "5", "-S"], in: hostNamespace)
                let chain = LegacyForwardChain(listing: listing, isOurs: legacyPatternIsOurs)
                if chain.dropsVMTraffic {
                    report.problems.append(
                        .legacyForwardDrop(
                            tool: family.tool, policyDrop: chain.policyDrop, rules: chain.droppingRules,
                            fix: legacyForwardFix(tool: family.tool, chain: chain)))
                }
            } catch {
                report.warnings.append(error)
            }
        }
    }
}
