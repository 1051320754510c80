import Foundation
import MicroVM
import Subprocess
import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm doctor --bundle FILE`: the guide's "Getting help" list in one `.tar.gz`, secrets
/// left out (MMDS contents, environment variables, token- or key-like boot arguments).
enum DoctorBundle {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Writes the archive; the files it holds, for the caller to name.
    static func write(
        to file: String, context: DoctorContext, findings: [Finding], text: String, json: String
    ) async throws -> [String] {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("microvm-bundle-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let name = "microvm-doctor"
        let directory = scratch + "/" + name
        try FileManager.default.createDirectory(atPath: directory + "/vms", withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        defer { try? FileManager.default.removeItem(atPath: scratch) }

        var files: [String] = []
        func put(_ relative: String, _ contents: String) throws {
            try contents.write(toFile: directory + "/" + relative, atomically: true, encoding: .utf8)
            files.append(relative)
        }
        try put("versions.txt", versions(context, findings: findings))
        let mountinfo = context.read("/proc/self/mountinfo") ?? ""
        try put("cgroup-mounts.txt", mountinfo.split(separator: "\n").filter { $0.contains("cgroup") }.joined(separator: "\n") + "\n")
        try put("cmdline.txt", Redaction.words(context.read("/proc/cmdline") ?? "(unreadable)\n"))
        try put("doctor.txt", Redaction.words(text))
        try put("doctor.json", Redaction.json(Data(json.utf8)))

        let store = context.configuration.stateStore
        for listing in MicroVM.list(configuration: context.configuration) {
            let recordPath = store.directory(for: listing.id).string + "/state.json"
            if let data = FileManager.default.contents(atPath: recordPath) {
                try put("vms/\(listing.id).state.json", Redaction.json(data))
            } else {
                try put("vms/\(listing.id).problem.txt", (listing.problem?.description ?? "no record") + "\n")
            }
            if let diagnosis = try? await VMDiagnosis.findings(id: listing.id, context) {
                try put("vms/\(listing.id).doctor.txt", Redaction.words(DoctorReport.text(diagnosis)))
            }
        }
        // Post-mortems hold the last Firecracker log lines of failed VMs: the recent logs there
        // are (the log of a live VM is a FIFO its attached driver reads).
        for postMortem in store.postMortems().prefix(20) {
            let data = try JSONEncoder().encode(postMortem)
            try put("vms/\(postMortem.id).postmortem.json", Redaction.json(data))
        }
        try put(
            "README.txt",
            """
            microvm doctor bundle, \(Date().formatted(.iso8601))
            versions.txt       microvm, firecracker, jailer, kernel
            cgroup-mounts.txt  the cgroup lines of /proc/self/mountinfo
            cmdline.txt        /proc/cmdline
            doctor.txt/.json   microvm doctor's checks
            vms/               each VM's record, its diagnosis (doctor ID) and post-mortems with Firecracker's last log lines
            Left out: MMDS contents, environment variables, values of token- or key-like arguments (shown as <redacted>).

            """)

        let destination = Paths.absolute(file)
        let result = try await Subprocess.run(
            .name("tar"), arguments: ["-czf", destination, "-C", scratch, name], output: .discarded, error: .string(limit: 64 << 10))
        guard result.terminationStatus.isSuccess else {
            throw CLIError(
                .host, "could not write the bundle \(destination): tar \(result.terminationStatus): \(result.standardError)",
                hint: "check that the destination's directory exists and is writable, and that tar is installed")
        }
        return files.map { name + "/" + $0 }
    }

    static func versions(_ context: DoctorContext, findings: [Finding]) -> String {
        let binary = { (check: String) in findings.first { $0.check == check }?.seen ?? "not checked" }
        let release = (context.read("/proc/sys/kernel/osrelease") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        let version = (context.read("/proc/version") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
        return """
            microvm: \(CLIVersion.current)
            firecracker: \(binary("firecracker-binary"))
            jailer: \(binary("jailer-binary"))
            kernel: \(release)
            /proc/version: \(version)

            """
    }
}

/// What a bundle must not carry.
enum Redaction {
    static let placeholder = "<redacted>"

    /// Keys whose values are secrets wherever they appear.
    static func isSecretKey(_ key: String) -> Bool {
        let key = key.lowercased()
        return ["token", "secret", "password", "passwd", "pass", "key", "auth", "credential", "cookie", "session", "signature", "private"]
            .contains { key.contains($0) }
    }

    /// A value that looks like a token: long, of one token alphabet, letters and digits mixed.
    static func looksLikeToken(_ value: Substring) -> Bool {
        guard value.count >= 20, !value.hasPrefix("/") else { return false }
        let alphabet = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "+/=_-.~"))
        guard value.unicodeScalars.allSatisfy({ alphabet.contains($0) }) else { return false }
        return value.contains { $0.isLetter } && value.contains { $0.isNumber }
    }

    /// Each `key=value` word with a secret key or a token-like value gets its value redacted;
    /// a bare token-like word is redacted whole.
    static func words(_ text: String) -> String {
        var output = ""
        var word = ""
        func flush() {
            if let equals = word.firstIndex(of: "=") {
                let key = word[..<equals]
                let value = word[word.index(after: equals)...]
                output += isSecretKey(String(key)) || looksLikeToken(value) ? "\(key)=\(placeholder)" : word
            } else {
                output += looksLikeToken(Substring(word)) ? placeholder : word
            }
            word = ""
        }
        for character in text {
            if character == " " || character == "\n" || character == "\t" || character == "\"" || character == "'" || character == "," {
                flush()
                output.append(character)
            } else {
                word.append(character)
            }
        }
        flush()
        return output
    }

    /// A JSON document (a record, a post-mortem) with MMDS contents, environment variables and
    /// secret-named keys replaced, and every string's words redacted as above.
    static func json(_ data: Data) -> String {
        guard let value = try? JSONSerialization.jsonObject(with: data) else { return placeholder + "\n" }
        let cleaned = clean(value, key: nil)
        guard let out = try? JSONSerialization.data(withJSONObject: cleaned, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]) else {
            return placeholder + "\n"
        }
        return String(decoding: out, as: UTF8.self) + "\n"
    }

    static func clean(_ value: Any, key: String?) -> Any {
        if let key, key == "metadata" || key == "environment" || key == "env" || isSecretKey(key) { return placeholder }
        switch value {
        case let dictionary as [String: Any]:
            return Dictionary(uniqueKeysWithValues: dictionary.map { ($0.key, clean($0.value, key: $0.key)) })
        case let array as [Any]:
            return array.map { clean($0, key: nil) }
        case let string as String:
            return words(string)
        default:
            return value
        }
    }
}

/// The text form of a list of findings (doctor and doctor ID print the same).
enum DoctorReport {
    static func text(_ findings: [Finding]) -> String {
        var lines: [String] = []
        for finding in findings {
            let tag = ["ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"][finding.status.rawValue]!
            lines.append("\(tag) \(finding.check): \(finding.seen)")
            if finding.status != .ok {
                if let why = finding.why { lines.append("       why: \(why)") }
                if let fix = finding.fix { lines.append("       fix: \(fix)") }
            }
        }
        let ok = findings.count { $0.status == .ok }, warn = findings.count { $0.status == .warn }, fail = findings.count { $0.status == .fail }
        lines.append("\(ok) ok, \(warn) warnings, \(fail) failures")
        return lines.joined(separator: "\n") + "\n"
    }
}
