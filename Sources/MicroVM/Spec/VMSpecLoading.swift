public import FirecrackerAPI
public import Foundation
public import SystemPackage
import MicroVMHost
import Yams

/// One thing wrong with a spec: where (a key path such as `drives[1].path`), what, and how to fix it.
public struct SpecProblem: Sendable, Hashable, CustomStringConvertible {
    public var field: String
    public var message: String
    public var hint: String?

    public init(field: String, message: String, hint: String? = nil) {
        self.field = field
        self.message = message
        self.hint = hint
    }

    public var description: String {
        "\(field.isEmpty ? "" : "\(field): ")\(message)\(hint.map { ". Hint: \($0)" } ?? "")"
    }
}

extension VMSpec {
    /// Reads a spec from a `.json`, `.yaml` or `.yml` file (other names: JSON, then YAML).
    /// Strict: a key the spec does not know is an error naming its path, so a typo such as
    /// `bandwith` is caught instead of silently giving a drive no limit.
    public static func load(from path: FilePath) throws(MicroVMError) -> VMSpec {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path.string))
        } catch {
            // The system's words (no such file, permission denied, is a directory), not Foundation's.
            var status = stat()
            let reason: String
            if stat(path.string, &status) != 0 {
                reason = String(cString: strerror(errno)).lowercased()
            } else if (status.st_mode & S_IFMT) == S_IFDIR {
                reason = "it is a directory"
            } else if access(path.string, R_OK) != 0 {
                reason = String(cString: strerror(errno)).lowercased()
            } else {
                reason = error.localizedDescription
            }
            throw .invalidSpec(
                id: nil, problems: [SpecProblem(field: "", message: "cannot read the spec file \(path): \(reason)", hint: "check the path")])
        }
        let name = path.lastComponent?.extension?.lowercased()
        if name == "yaml" || name == "yml" {
            return try decode(yaml: String(decoding: data, as: UTF8.self))
        }
        if name == "json" { return try decode(json: data) }
        do {
            return try decode(json: data)
        } catch {
            return try decode(yaml: String(decoding: data, as: UTF8.self))
        }
    }

    /// Decodes a spec from JSON, strictly.
    public static func decode(json data: Data) throws(MicroVMError) -> VMSpec {
        let tree: JSONValue
        do {
            tree = try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            if data.allSatisfy({ [0x20, 0x09, 0x0A, 0x0D].contains($0) }) {
                throw .invalidSpec(id: nil, problems: [SpecProblem(field: "", message: "the document is empty")])
            }
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: "", message: "not valid JSON: \(Self.syntaxError(in: data, decoding: error))")])
        }
        // JSON's decoder keeps one of two equal keys without a word (YAML's refuses them).
        let duplicates = Self.duplicateKeys(in: data)
        if !duplicates.isEmpty { throw .invalidSpec(id: tree.objectValue?["id"]?.stringValue, problems: duplicates) }
        return try decode(tree: tree)
    }

    /// Keys given twice in one object of a JSON document already known to be valid.
    static func duplicateKeys(in data: Data) -> [SpecProblem] {
        enum Frame {
            case object(keys: Set<[UInt8]>, key: String?, expectingKey: Bool)
            case array(index: Int)
        }
        var frames: [Frame] = []
        var problems: [SpecProblem] = []
        func path(adding key: String? = nil) -> String {
            var result = ""
            for frame in frames {
                switch frame {
                case .object(_, let key?, _): result += result.isEmpty ? key : ".\(key)"
                case .object: break
                case .array(let index): result += "[\(index)]"
                }
            }
            if let key { result += result.isEmpty ? key : ".\(key)" }
            return result
        }
        let bytes = [UInt8](data)
        var position = 0
        while position < bytes.count {
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "{"):
                frames.append(.object(keys: [], key: nil, expectingKey: true))
            case UInt8(ascii: "["):
                frames.append(.array(index: 0))
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = frames.popLast()
            case UInt8(ascii: ","):
                switch frames.last {
                case .object(let keys, _, _)?: frames[frames.count - 1] = .object(keys: keys, key: nil, expectingKey: true)
                case .array(let index)?: frames[frames.count - 1] = .array(index: index + 1)
                case nil: break
                }
            case UInt8(ascii: "\""):
                var end = position + 1
                while end < bytes.count, bytes[end] != UInt8(ascii: "\"") { end += bytes[end] == UInt8(ascii: "\\") ? 2 : 1 }
                if case .object(var keys, _, true)? = frames.last {
                    let raw = Array(bytes[(position + 1)..<min(end, bytes.count)])
                    let key = String(decoding: raw, as: UTF8.self)
                    if !keys.insert(raw).inserted {
                        problems.append(SpecProblem(field: path(adding: key), message: "given twice", hint: "keep one of them"))
                    }
                    frames[frames.count - 1] = .object(keys: keys, key: key, expectingKey: false)
                }
                position = end
            default:
                break
            }
            position += 1
        }
        return problems
    }

    /// Decodes a spec from YAML, strictly. Unquoted `true`/`false` are booleans and numbers are
    /// numbers (YAML 1.2 core schema): `Off` or `no` stay strings.
    public static func decode(yaml text: String) throws(MicroVMError) -> VMSpec {
        let tree: JSONValue
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw MicroVMError.invalidSpec(id: nil, problems: [SpecProblem(field: "", message: "the document is empty")])
            }
            tree = try JSONValue(yaml: node, path: "")
        } catch let error as MicroVMError {
            throw error
        } catch {
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: "", message: "not valid YAML: \(error)")])
        }
        return try decode(tree: tree)
    }

    /// Decodes from a parsed tree, then reports every key the spec did not take. A document
    /// in Firecracker's own config-file format (`boot-source`, `machine-config`, ...) is read
    /// as the spec it describes, with an empty id for the caller to set.
    public static func decode(tree: JSONValue) throws(MicroVMError) -> VMSpec {
        if FirecrackerConfigFile.isOne(tree) { return try FirecrackerConfigFile.decode(tree) }
        let spec: VMSpec
        let taken: JSONValue
        do {
            let data = try JSONEncoder().encode(tree)
            spec = try JSONDecoder().decode(VMSpec.self, from: data)
            taken = try JSONDecoder().decode(JSONValue.self, from: JSONEncoder().encode(spec))
        } catch let error as DecodingError {
            let id = tree.objectValue?["id"]?.stringValue
            if case .dataCorrupted(let context) = error, context.codingPath.isEmpty, let problem = Self.numberItCannotHold(in: tree) {
                throw .invalidSpec(id: id, problems: [problem])
            }
            throw .invalidSpec(id: id, problems: [Self.problem(error)])
        } catch {
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: "", message: "\(error)")])
        }
        var unknown: [SpecProblem] = []
        Self.unknownKeys(in: tree, taken: taken, path: "", into: &unknown)
        if !unknown.isEmpty { throw .invalidSpec(id: spec.id, problems: unknown) }
        return spec
    }

    /// The number that its field cannot hold (a negative uid, a guest CID over 2^32 - 1, 1.5
    /// vCPUs), found by decoding again with each number set to 0 in turn: Foundation's decoder
    /// on Linux reports such a number as "not valid JSON", with no path. The field's range is
    /// probed the same way. Only on that error's path: a spec holds a few dozen numbers.
    private static func numberItCannotHold(in tree: JSONValue) -> SpecProblem? {
        /// Whether `candidate` no longer fails that way (it may fail otherwise: a key missing
        /// beside the number is reported once the number is right).
        func decodes(_ candidate: JSONValue) -> Bool {
            guard let data = try? JSONEncoder().encode(candidate) else { return false }
            do {
                _ = try JSONDecoder().decode(VMSpec.self, from: data)
                return true
            } catch DecodingError.dataCorrupted(let context) where context.codingPath.isEmpty {
                return false
            } catch {
                return true
            }
        }
        for (path, value) in numbers(in: tree, path: []) {
            guard decodes(tree.replacing(at: path, with: .int(0))) else { continue }
            let range =
                if case .double(let number) = value, number.rounded() != number {
                    "a whole number"
                } else if decodes(tree.replacing(at: path, with: .int(-1))) {
                    "a whole number from \(Int64.min) to \(Int64.max)"
                } else if decodes(tree.replacing(at: path, with: .int(Int64(UInt32.max) + 1))) {
                    "a whole number from 0 to \(Int64.max)"
                } else {
                    "a whole number from 0 to \(UInt32.max)"
                }
            let shown: String =
                switch value {
                case .int(let number): "\(number)"
                case .double(let number): number.rounded() == number && abs(number) < 1e15 ? "\(Int64(number))" : "\(number)"
                default: "\(value)"
                }
            return SpecProblem(field: render(path), message: "\(shown) does not fit this field", hint: "give \(range)")
        }
        return nil
    }

    private static func numbers(in value: JSONValue, path: [SpecPathStep]) -> [([SpecPathStep], JSONValue)] {
        switch value {
        case .int, .double: [(path, value)]
        case .object(let members): members.sorted { $0.key < $1.key }.flatMap { numbers(in: $0.value, path: path + [.key($0.key)]) }
        case .array(let items): items.enumerated().flatMap { numbers(in: $0.element, path: path + [.index($0.offset)]) }
        default: []
        }
    }

    private static func render(_ path: [SpecPathStep]) -> String {
        var result = ""
        for step in path {
            switch step {
            case .key(let key): result += result.isEmpty ? key : ".\(key)"
            case .index(let index): result += "[\(index)]"
            }
        }
        return result
    }

    /// Keys present (with a value) in `given` that did not survive decoding into the spec.
    private static func unknownKeys(in given: JSONValue, taken: JSONValue, path: String, into problems: inout [SpecProblem]) {
        switch (given, taken) {
        case (.object(let members), .object(let kept)):
            for (key, value) in members.sorted(by: { $0.key < $1.key }) {
                let field = path.isEmpty ? key : "\(path).\(key)"
                guard let keptValue = kept[key] else {
                    if value != .null {
                        problems.append(SpecProblem(field: field, message: "unknown key", hint: "remove it or correct its spelling (see the VMSpec reference in README.md)"))
                    }
                    continue
                }
                unknownKeys(in: value, taken: keptValue, path: field, into: &problems)
            }
        case (.array(let items), .array(let kept)):
            for (index, item) in items.enumerated() where index < kept.count {
                unknownKeys(in: item, taken: kept[index], path: "\(path)[\(index)]", into: &problems)
            }
        default:
            return
        }
    }

    static func problem(_ error: DecodingError) -> SpecProblem {
        func render(_ path: [any CodingKey]) -> String {
            var result = ""
            for key in path {
                if let index = key.intValue { result += "[\(index)]" } else { result += result.isEmpty ? key.stringValue : ".\(key.stringValue)" }
            }
            return result
        }
        switch error {
        case .keyNotFound(let key, let context):
            return SpecProblem(field: render(context.codingPath + [key]), message: "missing", hint: "this key is required")
        case .typeMismatch(let type, let context):
            return SpecProblem(field: render(context.codingPath), message: "expected \(Self.typeName(type))")
        case .valueNotFound(let type, let context):
            return SpecProblem(field: render(context.codingPath), message: "expected \(Self.typeName(type)), found null")
        case .dataCorrupted(let context):
            // "Cannot initialize CacheType from invalid String value Writeback": with the choices.
            let words = context.debugDescription.split(separator: " ")
            if words.starts(with: ["Cannot", "initialize"]), words.count >= 3, let choices = Self.choices[String(words[2])],
                let range = context.debugDescription.range(of: "invalid String value ")
            {
                let given = context.debugDescription[range.upperBound...]
                return SpecProblem(
                    field: render(context.codingPath), message: "'\(given)' is not one of \(choices.joined(separator: ", "))",
                    hint: "give one of \(choices.joined(separator: ", ")) (spelt exactly so)")
            }
            return SpecProblem(field: render(context.codingPath), message: context.debugDescription)
        @unknown default:
            return SpecProblem(field: "", message: "\(error)")
        }
    }

    /// The values each of the spec's enumerations takes, by the type name Foundation's error
    /// gives.
    private static let choices: [String: [String]] = {
        func values<T: CaseIterable & RawRepresentable>(_ type: T.Type) -> (String, [String]) where T.RawValue == String {
            ("\(T.self)", T.allCases.map(\.rawValue))
        }
        return Dictionary(
            [
                values(CpuTemplate.self), values(HugePages.self), values(Drive.CacheType.self), values(Drive.IOEngine.self),
                values(LogLevel.self), values(MmdsVersion.self), values(SandboxPolicy.self), values(NetworkSpec.Mode.self),
            ], uniquingKeysWith: { first, _ in first })
    }()

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Bool.Type: "true or false"
        case is any FixedWidthInteger.Type: "an integer"
        case is any BinaryFloatingPoint.Type: "a number"
        default: "\(type)".contains("Array") ? "a list" : "an object"
        }
    }

    /// Where JSON is broken: `JSONDecoder` only says that it is, `JSONSerialization` gives the
    /// character, which is turned into a line and column.
    private static func syntaxError(in data: Data, decoding error: any Error) -> String {
        do {
            _ = try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            let message = (error as NSError).userInfo[NSDebugDescriptionErrorKey] as? String ?? "\(error)"
            guard let range = message.range(of: "around character "),
                let offset = Int(message[range.upperBound...].prefix { $0.isNumber })
            else { return message }
            var line = 1
            var column = 1
            for byte in data.prefix(offset) {
                if byte == UInt8(ascii: "\n") {
                    line += 1
                    column = 1
                } else {
                    column += 1
                }
            }
            return "\(message.prefix(upTo: range.lowerBound).trimmingCharacters(in: .whitespaces)) at line \(line), column \(column)"
        }
        if let decoding = error as? DecodingError, case .dataCorrupted(let context) = decoding { return context.debugDescription }
        return "\(error)"
    }
}

extension JSONValue {
    /// A YAML node as JSON under the YAML 1.2 core schema.
    init(yaml node: Node, path: String) throws(MicroVMError) {
        switch node {
        case .scalar(let scalar):
            if scalar.style != .plain {
                self = .string(scalar.string)
                return
            }
            let text = scalar.string
            switch text {
            case "", "~", "null", "Null", "NULL": self = .null
            case "true", "True", "TRUE": self = .bool(true)
            case "false", "False", "FALSE": self = .bool(false)
            default:
                if let integer = Int64(text) {
                    self = .int(integer)
                } else if let number = Double(text), text.contains(where: { $0.isNumber }) {
                    self = .double(number)
                } else {
                    self = .string(text)
                }
            }
        case .sequence(let sequence):
            var items: [JSONValue] = []
            for (index, item) in sequence.enumerated() {
                items.append(try JSONValue(yaml: item, path: "\(path)[\(index)]"))
            }
            self = .array(items)
        case .mapping(let mapping):
            var members: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw .invalidSpec(id: nil, problems: [SpecProblem(field: path, message: "a key that is not a plain string")])
                }
                let field = path.isEmpty ? scalar.string : "\(path).\(scalar.string)"
                members[scalar.string] = try JSONValue(yaml: value, path: field)
            }
            self = .object(members)
        case .alias:
            throw .invalidSpec(id: nil, problems: [SpecProblem(field: path, message: "YAML aliases are not supported")])
        }
    }
}

/// One step of a path into a spec's tree: a key of an object or an index into a list.
private enum SpecPathStep {
    case key(String)
    case index(Int)
}

extension JSONValue {
    /// This value with the member at `path` set to `value` (unchanged where the path leads nowhere).
    fileprivate func replacing(at path: [SpecPathStep], with value: JSONValue) -> JSONValue {
        guard let step = path.first else { return value }
        let rest = Array(path.dropFirst())
        switch (self, step) {
        case (.object(var members), .key(let key)):
            if let member = members[key] { members[key] = member.replacing(at: rest, with: value) }
            return .object(members)
        case (.array(var items), .index(let index)) where items.indices.contains(index):
            items[index] = items[index].replacing(at: rest, with: value)
            return .array(items)
        default:
            return self
        }
    }
}
