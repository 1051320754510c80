// Loading Firecracker's official Swagger 2.0 specs, a small schema validator and a sample
// generator, used by the conformance tests.

import FirecrackerAPI
import Foundation
import Yams

// MARK: - YAML tree

/// A YAML document reduced to what a Swagger spec needs. Scalars are kept as their source text:
/// Yams resolves YAML 1.1 booleans, so the spec's `Off` log level would otherwise turn into
/// `false`; the validator interprets each scalar by the schema's `type` instead.
indirect enum SpecNode: Sendable, Hashable {
    case scalar(String)
    case mapping([String: SpecNode])
    case sequence([SpecNode])

    init(_ node: Node) throws {
        switch node {
        case .scalar(let scalar):
            self = .scalar(scalar.string)
        case .mapping(let mapping):
            var members: [String: SpecNode] = [:]
            for (key, value) in mapping {
                guard case .scalar(let keyScalar) = key else {
                    throw SpecLoadError("non-scalar mapping key at \(key.mark.map { "\($0)" } ?? "?")")
                }
                members[keyScalar.string] = try SpecNode(value)
            }
            self = .mapping(members)
        case .sequence(let sequence):
            self = .sequence(try sequence.map(SpecNode.init))
        default:
            throw SpecLoadError("YAML aliases are not expected in the Firecracker spec")
        }
    }

    subscript(key: String) -> SpecNode? {
        if case .mapping(let members) = self { members[key] } else { nil }
    }

    var string: String? {
        if case .scalar(let text) = self { text } else { nil }
    }

    var members: [String: SpecNode] {
        if case .mapping(let members) = self { members } else { [:] }
    }

    var elements: [SpecNode] {
        if case .sequence(let elements) = self { elements } else { [] }
    }

    /// `#/definitions/Name` → `Name`.
    var referencedDefinition: String? {
        guard let ref = self["$ref"]?.string, ref.hasPrefix("#/definitions/") else { return nil }
        return String(ref.dropFirst("#/definitions/".count))
    }
}

struct SpecLoadError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Documents

/// One operation (path + method) of a spec.
struct SpecOperation: Sendable {
    var method: String
    var path: String
    var operationId: String
    /// The schema of the `in: body` parameter, if any.
    var bodySchema: SpecNode?
    var bodyRequired: Bool
    /// The status codes below 300 the spec lists.
    var successCodes: [Int]
    /// The schema of the 200 answer, if any.
    var responseSchema: SpecNode?

    var key: String { "\(method) \(path)" }
}

/// Known defects of the official specs, corrected before validation. Each is checked by a test
/// to still exist (so a fixed spec makes the erratum fail loudly rather than hide anything).
enum SpecErrata {
    /// The 1.12.1 spec types `CpuConfig`'s modifier lists (and `kvm_capabilities`) as `object`,
    /// but the 1.12.1 server deserialises them as arrays (`Vec<...>` in
    /// `cpu_config/*/custom_cpu_template.rs` at tag v1.12.1); the 1.14.1 spec describes them
    /// correctly. So for 1.12.1, `CpuConfig` and the definitions it refers to are taken from the
    /// oldest later spec that has array-typed modifiers.
    static let cpuConfigArrays = "1.12.1 CpuConfig lists typed as objects"

    /// `PATCH /machine-config` reuses `MachineConfiguration`, whose `vcpu_count` and
    /// `mem_size_mib` are required, yet Firecracker accepts any non-empty subset since 1.11
    /// (CHANGELOG #4991). Bodies of that call are validated with `required` waived at the top.
    static let partialMachineConfigPatch = "PATCH /machine-config accepts partial bodies"

    /// 1.14.1 lists `200` for `PATCH /balloon/hinting/start|stop`; the server answers 204 and
    /// 1.16.0 corrected the spec (CHANGELOG #5884).
    static let hintingStatus200 = "1.14.1 balloon hinting start/stop list 200 instead of 204"

    static func waivesRequired(_ operation: FirecrackerOperation) -> Bool {
        operation == .patchMachineConfiguration
    }
}

struct SpecDocument: Sendable {
    var file: String
    var version: FirecrackerVersion
    /// Definitions after the errata were applied.
    var definitions: [String: SpecNode]
    /// Definitions exactly as the file has them.
    var rawDefinitions: [String: SpecNode]
    var operations: [SpecOperation]

    init(file: String, text: String) throws {
        guard let node = try Yams.compose(yaml: text) else { throw SpecLoadError("\(file) is empty") }
        let root = try SpecNode(node)
        guard root["swagger"]?.string == "2.0" else { throw SpecLoadError("\(file) is not Swagger 2.0") }
        guard let versionText = root["info"]?["version"]?.string,
            let version = FirecrackerVersion(versionText)
        else { throw SpecLoadError("\(file) has no info.version") }
        self.file = file
        self.version = version
        self.rawDefinitions = root["definitions"]?.members ?? [:]
        self.definitions = rawDefinitions
        var operations: [SpecOperation] = []
        for (path, item) in root["paths"]?.members ?? [:] {
            for (method, operation) in item.members {
                let body = operation["parameters"]?.elements.first { $0["in"]?.string == "body" }
                let responses = operation["responses"]?.members ?? [:]
                operations.append(
                    SpecOperation(
                        method: method.uppercased(), path: path,
                        operationId: operation["operationId"]?.string ?? "",
                        bodySchema: body?["schema"],
                        bodyRequired: body?["required"]?.string == "true",
                        successCodes: responses.keys.compactMap(Int.init).filter { $0 < 300 }.sorted(),
                        responseSchema: responses["200"]?["schema"]))
            }
        }
        self.operations = operations.sorted { $0.key < $1.key }
    }

    func operation(_ method: String, _ path: String) -> SpecOperation? {
        operations.first { $0.method == method && $0.path == path }
    }

    /// The definitions reachable from `name` (itself included).
    func closure(of name: String, in definitions: [String: SpecNode]) -> Set<String> {
        var seen: Set<String> = []
        var pending = [name]
        while let next = pending.popLast() {
            guard seen.insert(next).inserted, let schema = definitions[next] else { continue }
            pending.append(contentsOf: SpecDocument.references(in: schema))
        }
        return seen
    }

    static func references(in node: SpecNode) -> [String] {
        switch node {
        case .scalar: []
        case .sequence(let elements): elements.flatMap(references(in:))
        case .mapping(let members):
            (node.referencedDefinition.map { [$0] } ?? []) + members.values.flatMap(references(in:))
        }
    }
}

/// The specs beside the repository (`../shared/firecracker-api/`), loaded once.
enum SpecLibrary {
    enum State: Sendable {
        case loaded([SpecDocument])
        case missing(String)
        case broken(String)
    }

    static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // FirecrackerAPITests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()  // repository root
        .appendingPathComponent("../shared/firecracker-api").standardizedFileURL

    static let state: State = load()

    static var available: Bool {
        if case .missing = state { false } else { true }
    }

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] != nil }

    /// The documents, oldest first. Throws (failing the test) if they could not be parsed.
    static func documents() throws -> [SpecDocument] {
        switch state {
        case .loaded(let documents): return documents
        case .missing(let message), .broken(let message): throw SpecLoadError(message)
        }
    }

    private static func load() -> State {
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
                .filter { $0.hasPrefix("firecracker-v") && $0.hasSuffix(".yaml") }
        } catch {
            return .missing("Firecracker API specs not found at \(directory.path): \(error)")
        }
        guard !files.isEmpty else { return .missing("no firecracker-v*.yaml in \(directory.path)") }
        do {
            var documents = try files.map { file in
                try SpecDocument(
                    file: file,
                    text: String(contentsOf: directory.appendingPathComponent(file), encoding: .utf8))
            }
            documents.sort { $0.version < $1.version }
            applyErrata(&documents)
            return .loaded(documents)
        } catch {
            return .broken("cannot read the Firecracker API specs in \(directory.path): \(error)")
        }
    }

    /// See ``SpecErrata/cpuConfigArrays``.
    static func cpuConfigHasObjectLists(_ definitions: [String: SpecNode]) -> Bool {
        definitions["CpuConfig"]?["properties"]?["cpuid_modifiers"]?["type"]?.string == "object"
    }

    private static func applyErrata(_ documents: inout [SpecDocument]) {
        guard
            let fixed = documents.first(where: { !cpuConfigHasObjectLists($0.rawDefinitions) && $0.rawDefinitions["CpuConfig"] != nil })
        else { return }
        for index in documents.indices where cpuConfigHasObjectLists(documents[index].rawDefinitions) {
            for name in fixed.closure(of: "CpuConfig", in: fixed.rawDefinitions) {
                documents[index].definitions[name] = fixed.rawDefinitions[name]
            }
        }
    }
}

// MARK: - Validation

/// Checks JSON against a Swagger 2.0 schema: `type` (integer vs number), integer `format`
/// ranges, regex-like string `format`s, `required`, `enum`, `$ref`, `items`, `minimum` and
/// `maximum`. Every object schema that lists `properties` is closed (no unknown fields) unless
/// it says `additionalProperties`; an object schema without `properties` is free-form.
struct SpecValidator {
    var definitions: [String: SpecNode]

    struct Options {
        /// Skip `required` on the top-level object (see ``SpecErrata/partialMachineConfigPatch``).
        var waiveTopLevelRequired = false
        /// Additionally demand that every declared property is present, at every level.
        var requireAllProperties = false
    }

    func validate(_ value: JSONValue, definition: String, options: Options = Options()) -> [String] {
        validate(value, against: .mapping(["$ref": .scalar("#/definitions/\(definition)")]), options: options)
    }

    func validate(_ value: JSONValue, against schema: SpecNode, options: Options = Options()) -> [String] {
        var problems: [String] = []
        check(value, schema, at: "$", options: options, top: true, into: &problems)
        return problems
    }

    private func check(
        _ value: JSONValue, _ schema: SpecNode, at path: String, options: Options, top: Bool,
        into problems: inout [String]
    ) {
        if let name = schema.referencedDefinition {
            guard let target = definitions[name] else {
                problems.append("\(path): unknown definition \(name)")
                return
            }
            check(value, target, at: path, options: options, top: top, into: &problems)
            return
        }
        let type = schema["type"]?.string ?? (schema["properties"] != nil ? "object" : nil)
        switch type {
        case "object":
            guard case .object(let members) = value else {
                problems.append("\(path): expected an object, got \(value)")
                return
            }
            let properties = schema["properties"]?.members ?? [:]
            if !(top && options.waiveTopLevelRequired) {
                for name in schema["required"]?.elements.compactMap(\.string) ?? [] where members[name] == nil {
                    problems.append("\(path): missing required '\(name)'")
                }
            }
            if options.requireAllProperties {
                for name in properties.keys where members[name] == nil {
                    problems.append("\(path): '\(name)' not set in a fully populated sample")
                }
            }
            let additional = schema["additionalProperties"]
            for (name, member) in members {
                if let property = properties[name] {
                    check(member, property, at: "\(path).\(name)", options: options, top: false, into: &problems)
                } else if let additional, additional.string == nil {
                    check(member, additional, at: "\(path).\(name)", options: options, top: false, into: &problems)
                } else if additional?.string == "true" || (additional == nil && properties.isEmpty) {
                    continue
                } else {
                    problems.append("\(path): unknown field '\(name)'")
                }
            }
        case "array":
            guard case .array(let elements) = value else {
                problems.append("\(path): expected an array, got \(value)")
                return
            }
            if let items = schema["items"] {
                for (index, element) in elements.enumerated() {
                    check(element, items, at: "\(path)[\(index)]", options: options, top: false, into: &problems)
                }
            }
        case "string":
            guard case .string(let text) = value else {
                problems.append("\(path): expected a string, got \(value)")
                return
            }
            if let format = schema["format"]?.string, format.contains("(") {
                // The spec puts a regular expression in `format` (MmdsConfig.ipv4_address).
                if (try? Regex(format).wholeMatch(in: text)) == nil {
                    problems.append("\(path): '\(text)' does not match format \(format)")
                }
            }
        case "integer":
            guard case .int(let number) = value else {
                problems.append("\(path): expected an integer, got \(value)")
                return
            }
            switch schema["format"]?.string {
            case "int32" where number < Int64(Int32.min) || number > Int64(Int32.max):
                problems.append("\(path): \(number) is outside int32")
            default: break
            }
            checkBounds(Double(number), schema, at: path, into: &problems)
        case "number":
            switch value {
            case .int(let number): checkBounds(Double(number), schema, at: path, into: &problems)
            case .double(let number): checkBounds(number, schema, at: path, into: &problems)
            default: problems.append("\(path): expected a number, got \(value)")
            }
        case "boolean":
            guard case .bool = value else {
                problems.append("\(path): expected a boolean, got \(value)")
                return
            }
        case nil:
            break
        case let other?:
            problems.append("\(path): schema type '\(other)' is not supported by this validator")
        }
        if let allowed = schema["enum"]?.elements.compactMap(\.string) {
            let text: String? =
                switch value {
                case .string(let text): text
                case .bool(let flag): flag ? "true" : "false"
                case .int(let number): String(number)
                default: nil
                }
            if text.map({ !allowed.contains($0) }) ?? true {
                problems.append("\(path): \(value) is not one of \(allowed)")
            }
        }
    }

    private func checkBounds(_ number: Double, _ schema: SpecNode, at path: String, into problems: inout [String]) {
        if let minimum = schema["minimum"]?.string.flatMap(Double.init), number < minimum {
            problems.append("\(path): \(number) is below the minimum \(minimum)")
        }
        if let maximum = schema["maximum"]?.string.flatMap(Double.init), number > maximum {
            problems.append("\(path): \(number) is above the maximum \(maximum)")
        }
    }
}

// MARK: - Sample generation

/// Builds JSON that a schema describes, for decoding tests: either only the required fields or
/// every declared field, with values taken from `default`, `enum`, `example` or the bounds.
struct SpecSampleGenerator {
    var definitions: [String: SpecNode]

    func sample(definition: String, full: Bool) -> JSONValue {
        sample(.mapping(["$ref": .scalar("#/definitions/\(definition)")]), full: full)
    }

    func sample(_ schema: SpecNode, full: Bool) -> JSONValue {
        if let name = schema.referencedDefinition {
            return definitions[name].map { sample($0, full: full) } ?? .null
        }
        if let first = schema["enum"]?.elements.first?.string {
            return scalar(first, type: schema["type"]?.string)
        }
        let type = schema["type"]?.string ?? (schema["properties"] != nil ? "object" : nil)
        switch type {
        case "object":
            let properties = schema["properties"]?.members ?? [:]
            if properties.isEmpty {
                // Free-form: something nested, to prove arbitrary JSON survives.
                return ["name": "microvm", "tags": ["a", 1, true], "nested": ["size": 2.5, "none": nil]]
            }
            let required = Set(schema["required"]?.elements.compactMap(\.string) ?? [])
            var members: [String: JSONValue] = [:]
            for (name, property) in properties where full || required.contains(name) {
                members[name] = sample(property, full: full)
            }
            return .object(members)
        case "array":
            return .array(schema["items"].map { [sample($0, full: full)] } ?? [])
        case "string":
            return .string(schema["default"]?.string ?? schema["example"]?.string ?? "sample")
        case "integer":
            if let text = schema["default"]?.string ?? schema["minimum"]?.string, let number = Int64(text) {
                return .int(number)
            }
            // Large enough to need 64 bits where the format allows it.
            return .int(schema["format"]?.string == "int64" ? 1 << 40 : 7)
        case "number":
            return .double(1.5)
        case "boolean":
            return .bool(true)
        default:
            return .null
        }
    }

    private func scalar(_ text: String, type: String?) -> JSONValue {
        switch type {
        case "integer": Int64(text).map(JSONValue.int) ?? .string(text)
        case "boolean": .bool(text == "true")
        default: .string(text)
        }
    }
}

// MARK: - JSON helpers

enum SpecJSON {
    static func value<T: Encodable>(of model: T) throws -> JSONValue {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try JSONDecoder().decode(JSONValue.self, from: encoder.encode(model))
    }

    static func value(of bytes: [UInt8]) throws -> JSONValue {
        try JSONDecoder().decode(JSONValue.self, from: Data(bytes))
    }

    static func data(_ value: JSONValue) throws -> Data {
        try JSONEncoder().encode(value)
    }

    /// Decodes `json` as `type` and encodes the result again.
    static func roundTrip<T: Codable>(_ type: T.Type, _ json: JSONValue) throws -> JSONValue {
        let decoded = try JSONDecoder().decode(T.self, from: data(json))
        return try value(of: decoded)
    }

    static func decodes<T: Decodable>(_ type: T.Type, _ json: JSONValue) throws {
        _ = try JSONDecoder().decode(T.self, from: data(json))
    }
}
