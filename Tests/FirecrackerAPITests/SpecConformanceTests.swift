// Conformance of the client to Firecracker's official API specs (Swagger 2.0), for every spec
// version in ../shared/firecracker-api/.

import FirecrackerAPI
import Foundation
import Testing

/// What the client sends for each operation: one or more requests built by the same functions
/// the typed calls use, and the type the typed call decodes the answer into.
struct EndpointCase: Sendable {
    var operation: FirecrackerOperation
    var requests: [@Sendable () throws -> APIRequest]
    var response: SpecCatalog.Model?

    static let all: [EndpointCase] = {
        let samples = SpecSamples.all
        func bodies<T: Sendable>(_ definition: String, as type: T.Type, kinds: Set<ModelSample.Kind> = [.minimal, .full, .field]) -> [T] {
            samples.filter { $0.definition == definition && kinds.contains($0.kind) }.compactMap { $0.value as? T }
        }
        func cases<T: Sendable>(
            _ operation: FirecrackerOperation, _ definition: String, _ type: T.Type,
            kinds: Set<ModelSample.Kind> = [.minimal, .full, .field],
            _ build: @escaping @Sendable (T) throws -> APIRequest
        ) -> EndpointCase {
            EndpointCase(
                operation: operation,
                requests: bodies(definition, as: type, kinds: kinds).map { body in { try build(body) } },
                response: nil)
        }
        func get(_ operation: FirecrackerOperation, _ response: SpecCatalog.Model, _ build: @escaping @Sendable () -> APIRequest) -> EndpointCase {
            EndpointCase(operation: operation, requests: [build], response: response)
        }
        let loadable = SpecSamples.all.filter { $0.definition == "SnapshotLoadParams" }
            .compactMap { $0.value as? SnapshotLoadParams }
            .map { params -> SnapshotLoadParams in
                // The builder insists on exactly one memory source; keep the sample's choice.
                var params = params
                if params.memBackend != nil { params.memFilePath = nil }
                if params.memBackend == nil && params.memFilePath == nil { params.memBackend = .file("/vm.mem") }
                return params
            }
        return [
            get(.describeInstance, InstanceInfo.self, FirecrackerEndpoint.describeInstance),
            EndpointCase(
                operation: .createSyncAction,
                requests: InstanceActionInfo.ActionType.allCases.map { type in
                    { try FirecrackerEndpoint.action(InstanceActionInfo(actionType: type)) }
                }, response: nil),
            get(.describeBalloonConfig, Balloon.self, FirecrackerEndpoint.getBalloon),
            cases(.putBalloon, "Balloon", Balloon.self, FirecrackerEndpoint.putBalloon),
            cases(.patchBalloon, "BalloonUpdate", BalloonUpdate.self, FirecrackerEndpoint.patchBalloon),
            get(.describeBalloonStats, BalloonStats.self, FirecrackerEndpoint.getBalloonStatistics),
            cases(.patchBalloonStatsInterval, "BalloonStatsUpdate", BalloonStatsUpdate.self,
                  FirecrackerEndpoint.patchBalloonStatistics),
            cases(.startBalloonHinting, "BalloonStartCmd", BalloonStartCmd.self, FirecrackerEndpoint.startBalloonHinting),
            get(.describeBalloonHinting, BalloonHintingStatus.self, FirecrackerEndpoint.getBalloonHintingStatus),
            EndpointCase(operation: .stopBalloonHinting, requests: [FirecrackerEndpoint.stopBalloonHinting], response: nil),
            cases(.putGuestBootSource, "BootSource", BootSource.self, FirecrackerEndpoint.putBootSource),
            cases(.putCpuConfiguration, "CpuConfig", CpuConfig.self, FirecrackerEndpoint.putCpuConfiguration),
            cases(.putGuestDriveByID, "Drive", Drive.self, FirecrackerEndpoint.putDrive),
            cases(.patchGuestDriveByID, "PartialDrive", PartialDrive.self, FirecrackerEndpoint.patchDrive),
            cases(.putGuestPmemByID, "Pmem", Pmem.self, FirecrackerEndpoint.putPmem),
            cases(.patchGuestPmemByID, "PartialPmem", PartialPmem.self, FirecrackerEndpoint.patchPmem),
            cases(.putLogger, "Logger", LoggerConfiguration.self, FirecrackerEndpoint.putLogger),
            get(.getMachineConfiguration, MachineConfiguration.self, FirecrackerEndpoint.getMachineConfiguration),
            cases(.putMachineConfiguration, "MachineConfiguration", MachineConfiguration.self,
                  FirecrackerEndpoint.putMachineConfiguration),
            cases(.patchMachineConfiguration, "MachineConfiguration", MachineConfigurationUpdate.self,
                  FirecrackerEndpoint.patchMachineConfiguration),
            cases(.putMetrics, "Metrics", MetricsConfiguration.self, FirecrackerEndpoint.putMetrics),
            cases(.putMmds, "MmdsContentsObject", MMDSContents.self, FirecrackerEndpoint.putMMDS),
            cases(.patchMmds, "MmdsContentsObject", MMDSContents.self, FirecrackerEndpoint.patchMMDS),
            get(.getMmds, JSONValue.self, FirecrackerEndpoint.getMMDS),
            cases(.putMmdsConfig, "MmdsConfig", MmdsConfig.self, FirecrackerEndpoint.putMMDSConfig),
            cases(.putEntropyDevice, "EntropyDevice", EntropyDevice.self, FirecrackerEndpoint.putEntropyDevice),
            cases(.putSerialDevice, "SerialDevice", SerialDevice.self, FirecrackerEndpoint.putSerial),
            cases(.putMemoryHotplug, "MemoryHotplugConfig", MemoryHotplugConfig.self,
                  kinds: [.full], FirecrackerEndpoint.putMemoryHotplug),
            EndpointCase(
                operation: .putMemoryHotplug,
                requests: [{ try FirecrackerEndpoint.putMemoryHotplug(MemoryHotplugConfig(totalSizeMiB: 256)) }],
                response: nil),
            cases(.patchMemoryHotplug, "MemoryHotplugSizeUpdate", MemoryHotplugSizeUpdate.self,
                  kinds: [.full], FirecrackerEndpoint.patchMemoryHotplug),
            get(.getMemoryHotplug, MemoryHotplugStatus.self, FirecrackerEndpoint.getMemoryHotplug),
            cases(.putGuestNetworkInterfaceByID, "NetworkInterface", NetworkInterface.self,
                  FirecrackerEndpoint.putNetworkInterface),
            cases(.patchGuestNetworkInterfaceByID, "PartialNetworkInterface", PartialNetworkInterface.self,
                  FirecrackerEndpoint.patchNetworkInterface),
            cases(.createSnapshot, "SnapshotCreateParams", SnapshotCreateParams.self, FirecrackerEndpoint.createSnapshot),
            EndpointCase(
                operation: .loadSnapshot,
                requests: loadable.map { params in { try FirecrackerEndpoint.loadSnapshot(params) } }, response: nil),
            get(.getFirecrackerVersion, VersionInfo.self, FirecrackerEndpoint.version),
            cases(.patchVm, "Vm", VmState.self, FirecrackerEndpoint.patchVM),
            get(.getExportVmConfig, FullVmConfiguration.self, FirecrackerEndpoint.getVMConfiguration),
            cases(.putGuestVsock, "Vsock", Vsock.self, FirecrackerEndpoint.putVsock),
        ]
    }()
}

@Suite("Spec conformance", .enabled(if: SpecLibrary.available, "Firecracker API specs not found"))
struct SpecConformanceTests {
    // MARK: Coverage

    @Test("Every definition of every spec maps to a Swift type")
    func definitionsCovered() throws {
        for document in try SpecLibrary.documents() {
            let missing = Set(document.rawDefinitions.keys).subtracting(SpecCatalog.definitions.keys)
            #expect(missing.isEmpty, "\(document.file): no Swift type for \(missing.sorted())")
        }
        let newest = try #require(try SpecLibrary.documents().last)
        let stale = Set(SpecCatalog.definitions.keys).subtracting(newest.rawDefinitions.keys)
        #expect(stale.isEmpty, "catalog names definitions the newest spec lacks: \(stale.sorted())")
        for (name, variant) in SpecCatalog.variants {
            #expect(newest.rawDefinitions[variant.definition] != nil, "\(name) stands for a missing \(variant.definition)")
            #expect(SpecSamples.all.contains { $0.definition == variant.definition && type(of: $0.value) == variant.type })
        }
    }

    @Test("Every operation of every spec maps to a FirecrackerOperation, and its minimum version matches")
    func operationsCovered() throws {
        for document in try SpecLibrary.documents() {
            for specOperation in document.operations {
                let operation = FirecrackerOperation(rawValue: specOperation.operationId)
                #expect(operation != nil, "\(document.file): \(specOperation.key) (\(specOperation.operationId)) has no client operation")
                guard let operation else { continue }
                #expect(operation.method.rawValue == specOperation.method, "\(operation)")
                #expect(operation.pathTemplate == specOperation.path, "\(operation)")
                #expect(
                    operation.since <= document.version,
                    "\(operation) is in \(document.file) but gated at \(operation.since)")
            }
            for operation in FirecrackerOperation.allCases
            where document.operation(operation.method.rawValue, operation.pathTemplate) == nil {
                #expect(
                    operation.since > document.version,
                    "\(operation) is missing from \(document.file) but allowed from \(operation.since)")
            }
        }
    }

    @Test("Every operation has request-building cases, and answers decode into the spec's type")
    func endpointTableComplete() throws {
        let covered = Set(EndpointCase.all.map(\.operation))
        #expect(covered == Set(FirecrackerOperation.allCases), "untested: \(Set(FirecrackerOperation.allCases).subtracting(covered))")
        for endpoint in EndpointCase.all {
            #expect(!endpoint.requests.isEmpty, "\(endpoint.operation) has no request sample")
        }
        let newest = try #require(try SpecLibrary.documents().last)
        for endpoint in EndpointCase.all {
            let op = endpoint.operation
            guard let specOperation = newest.operation(op.method.rawValue, op.pathTemplate) else {
                Issue.record("\(op) missing from the newest spec")
                continue
            }
            switch (specOperation.responseSchema, endpoint.response) {
            case (nil, nil):
                break
            case (let schema?, let type?):
                if let name = schema.referencedDefinition {
                    let expected = try #require(SpecCatalog.definitions[name])
                    #expect(ObjectIdentifier(expected) == ObjectIdentifier(type), "\(op) answers \(name)")
                } else {
                    #expect(ObjectIdentifier(type) == ObjectIdentifier(JSONValue.self), "\(op) answers an inline schema")
                }
            default:
                Issue.record("\(op): spec answer \(String(describing: specOperation.responseSchema)) vs client \(String(describing: endpoint.response))")
            }
        }
    }

    @Test("PUT and PATCH succeed with 204, GET with 200 and a body (what FirecrackerClient.perform expects)")
    func successStatuses() throws {
        for document in try SpecLibrary.documents() {
            for operation in document.operations {
                if operation.method == "GET" {
                    #expect(operation.successCodes == [200] && operation.responseSchema != nil, "\(document.file) \(operation.key)")
                } else if document.version == FirecrackerVersion(1, 14, 1), operation.path.hasPrefix("/balloon/hinting/") {
                    // SpecErrata.hintingStatus200: the server answers 204 regardless.
                    #expect(operation.successCodes == [200], "erratum fixed? \(operation.key)")
                } else {
                    #expect(operation.successCodes == [204], "\(document.file) \(operation.key)")
                }
            }
        }
    }

    // MARK: Request bodies

    @Test("Every request model has minimal and fully populated samples", arguments: [ModelSample.Kind.minimal, .full])
    func samplesCoverRequestModels(kind: ModelSample.Kind) throws {
        var requestDefinitions: Set<String> = []
        for document in try SpecLibrary.documents() {
            for operation in document.operations {
                guard let name = operation.bodySchema?.referencedDefinition else { continue }
                requestDefinitions.formUnion(document.closure(of: name, in: document.definitions))
            }
        }
        let sampled = Set(SpecSamples.all.filter { $0.kind == kind }.map(\.definition))
        #expect(requestDefinitions.subtracting(sampled).isEmpty, "no \(kind) sample for \(requestDefinitions.subtracting(sampled).sorted())")
    }

    @Test("Minimal samples set only required fields; full samples set every field of the newest spec")
    func samplesAreMinimalOrFull() throws {
        let newest = try #require(try SpecLibrary.documents().last)
        let validator = SpecValidator(definitions: newest.definitions)
        for sample in SpecSamples.all {
            let json = try SpecJSON.value(of: sample.value)
            let schema = try #require(newest.definitions[sample.definition])
            switch sample.kind {
            case .minimal where !sample.waiveRequired:
                if case .object(let members) = json {
                    let required = Set(schema["required"]?.elements.compactMap(\.string) ?? [])
                    #expect(Set(members.keys) == required, "\(sample) sets \(members.keys.sorted())")
                }
            case .full:
                var options = SpecValidator.Options()
                options.requireAllProperties = true
                options.waiveTopLevelRequired = sample.waiveRequired
                let problems = validator.validate(json, definition: sample.definition, options: options)
                #expect(problems.isEmpty, "\(sample): \(problems)")
            default:
                break
            }
        }
    }

    @Test("Request models validate exactly against the spec versions their gating allows", arguments: SpecSamples.all)
    func modelValidatesPerVersion(sample: ModelSample) throws {
        let json = try SpecJSON.value(of: sample.value)
        var checked = 0
        for document in try SpecLibrary.documents() where document.definitions[sample.definition] != nil {
            checked += 1
            var options = SpecValidator.Options()
            options.waiveTopLevelRequired = sample.waiveRequired
            let problems = SpecValidator(definitions: document.definitions)
                .validate(json, definition: sample.definition, options: options)
            if sample.requiredVersion <= document.version {
                #expect(problems.isEmpty, "\(sample) against \(document.file): \(problems)")
            } else {
                #expect(
                    !problems.isEmpty,
                    "\(sample) claims to need \(sample.requiredVersion) but validates against \(document.file)")
            }
        }
        #expect(checked > 0, "\(sample.definition) is in no spec")
    }

    @Test("Every request the client builds validates against each spec that has the operation", arguments: FirecrackerOperation.allCases)
    func requestValidatesPerVersion(operation: FirecrackerOperation) throws {
        let endpoints = EndpointCase.all.filter { $0.operation == operation }
        for build in endpoints.flatMap(\.requests) {
            let request = try build()
            #expect(request.method == operation.method)
            #expect(request.minimumVersion >= operation.since)
            let id = request.path.split(separator: "/").last.map(String.init)
            #expect(request.path == operation.path(id: operation.pathParameter == nil ? nil : id))
            for document in try SpecLibrary.documents() {
                guard let specOperation = document.operation(operation.method.rawValue, operation.pathTemplate) else {
                    #expect(request.minimumVersion > document.version, "\(operation) is sent to \(document.file), which lacks it")
                    continue
                }
                guard let body = request.body else {
                    #expect(specOperation.bodySchema == nil || !specOperation.bodyRequired, "\(operation) sends no body")
                    continue
                }
                let schema = try #require(specOperation.bodySchema, "\(operation) sends a body the spec does not take")
                var options = SpecValidator.Options()
                options.waiveTopLevelRequired = SpecErrata.waivesRequired(operation)
                let problems = SpecValidator(definitions: document.definitions)
                    .validate(try SpecJSON.value(of: body), against: schema, options: options)
                if request.minimumVersion <= document.version {
                    #expect(problems.isEmpty, "\(request.feature) against \(document.file): \(problems)")
                } else {
                    #expect(!problems.isEmpty, "\(request.feature) is gated at \(request.minimumVersion) yet valid for \(document.file)")
                }
            }
        }
    }

    // MARK: Response shapes

    @Test("Every definition's minimal and full shapes decode, and encode back unchanged", arguments: [false, true])
    func definitionsRoundTrip(full: Bool) throws {
        for document in try SpecLibrary.documents() {
            let generator = SpecSampleGenerator(definitions: document.definitions)
            let validator = SpecValidator(definitions: document.definitions)
            for name in document.definitions.keys.sorted() {
                let type = try #require(SpecCatalog.definitions[name], "\(name)")
                let sample = generator.sample(definition: name, full: full)
                #expect(validator.validate(sample, definition: name).isEmpty, "generator made an invalid \(name)")
                do {
                    let back = try SpecJSON.roundTrip(type, sample)
                    #expect(back == sample, "\(document.file) \(name): \(sample) came back as \(back)")
                } catch {
                    Issue.record("\(document.file) \(name) does not decode \(sample): \(error)")
                }
            }
        }
    }

    @Test("Every answer of every GET decodes into the type its typed call returns")
    func responsesDecode() throws {
        for document in try SpecLibrary.documents() {
            let generator = SpecSampleGenerator(definitions: document.definitions)
            for endpoint in EndpointCase.all {
                guard let type = endpoint.response,
                    let specOperation = document.operation(endpoint.operation.method.rawValue, endpoint.operation.pathTemplate),
                    let schema = specOperation.responseSchema
                else { continue }
                for full in [false, true] {
                    let sample = generator.sample(schema, full: full)
                    #expect(throws: Never.self, "\(document.file) \(specOperation.key)") {
                        try SpecJSON.decodes(type, sample)
                    }
                }
            }
            // Error bodies.
            for full in [false, true] {
                let sample = generator.sample(definition: "Error", full: full)
                #expect(throws: Never.self) { try SpecJSON.decodes(APIFault.self, sample) }
            }
        }
    }

    @Test("Swift enums have exactly the spec's values")
    func enumsMatch() throws {
        for document in try SpecLibrary.documents() {
            var seen: Set<String> = []
            for (name, definition) in document.rawDefinitions {
                if let values = definition["enum"]?.elements.compactMap(\.string) {
                    seen.insert(name)
                    #expect(SpecCatalog.enums[name].map(Set.init) == Set(values), "\(document.file) \(name)")
                }
                for (property, schema) in definition["properties"]?.members ?? [:] {
                    guard let values = schema["enum"]?.elements.compactMap(\.string) else { continue }
                    let key = "\(name).\(property)"
                    seen.insert(key)
                    #expect(SpecCatalog.enums[key].map(Set.init) == Set(values), "\(document.file) \(key): \(values)")
                }
            }
            if document.version == (try SpecLibrary.documents().last?.version) {
                #expect(Set(SpecCatalog.enums.keys) == seen, "enum table vs spec: \(Set(SpecCatalog.enums.keys).symmetricDifference(seen))")
            }
        }
    }

    // MARK: Errata and the validator itself

    @Test("The spec errata worked around are still present")
    func errataStillNeeded() throws {
        let documents = try SpecLibrary.documents()
        let old = try #require(documents.first { $0.version == FirecrackerVersion(1, 12, 1) })
        #expect(SpecLibrary.cpuConfigHasObjectLists(old.rawDefinitions), "\(SpecErrata.cpuConfigArrays)")
        let full = try SpecJSON.value(of: SpecSamples.fullCpuConfig)
        #expect(!SpecValidator(definitions: old.rawDefinitions).validate(full, definition: "CpuConfig").isEmpty)
        #expect(SpecValidator(definitions: old.definitions).validate(full, definition: "CpuConfig").isEmpty)

        let newest = try #require(documents.last)
        let patch = try SpecJSON.value(of: MachineConfigurationUpdate(vcpuCount: 2))
        #expect(
            !SpecValidator(definitions: newest.definitions).validate(patch, definition: "MachineConfiguration").isEmpty,
            "\(SpecErrata.partialMachineConfigPatch)")
    }

    @Test("The validator rejects what it should")
    func validatorRejects() throws {
        let newest = try #require(try SpecLibrary.documents().last)
        let validator = SpecValidator(definitions: newest.definitions)
        func rejects(_ json: JSONValue, _ definition: String, _ why: String) {
            #expect(!validator.validate(json, definition: definition).isEmpty, "accepted \(why): \(json)")
        }
        rejects(["kernel_image_path": "/k", "bootargs": "x"], "BootSource", "an unknown field")
        rejects(["boot_args": "x"], "BootSource", "a missing required field")
        rejects(["kernel_image_path": 1], "BootSource", "a number for a string")
        rejects(["vcpu_count": 1.5, "mem_size_mib": 128], "MachineConfiguration", "a fraction for an integer")
        rejects(["vcpu_count": 33, "mem_size_mib": 128], "MachineConfiguration", "a value above maximum")
        rejects(["vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"], "MachineConfiguration", "a value outside the enum")
        rejects(["index": .int(1 << 33), "bitmap": "0b1"], "VcpuFeatures", "an int32 overflow")
        rejects(["network_interfaces": [], "ipv4_address": "10.0.0.1"], "MmdsConfig", "an address outside its format")
        rejects(["action_type": "Reboot"], "InstanceActionInfo", "an unknown action")
        rejects(["level": "Off", "show_level": "yes"], "Logger", "a string for a boolean")
        rejects(["bandwidth": ["size": 1, "refill_time": 1, "one_time_burst": -1]], "RateLimiter", "a nested value below minimum")
        rejects(["drive_id": "a", "is_root_device": true, "rate_limiter": ["ops": ["size": 1]]], "Drive", "a nested missing field")
        #expect(validator.validate(["any": ["thing": [1, nil]]], definition: "MmdsContentsObject").isEmpty)
        #expect(validator.validate(["level": "Off"], definition: "Logger").isEmpty, "YAML 1.1 must not turn Off into false")
    }
}

@Suite("Spec location")
struct SpecLocationTests {
    @Test("The specs are present (required when CI is set)")
    func specsPresent() {
        if case .missing(let message) = SpecLibrary.state {
            #expect(!SpecLibrary.isCI, "\(message): CI must provide ../shared/firecracker-api beside the clone")
        }
        if case .broken(let message) = SpecLibrary.state {
            Issue.record("\(message)")
        }
    }
}
