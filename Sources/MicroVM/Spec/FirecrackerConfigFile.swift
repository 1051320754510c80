import FirecrackerAPI
import Foundation

/// Firecracker's own `--config-file` format (`boot-source`, `machine-config`, `drives`,
/// `network-interfaces`, ...), read as a spec: the file someone who runs Firecracker already
/// has. Each section becomes the spec's equivalent, key by key, as strictly as a spec: a key
/// Firecracker's format has but a spec cannot honour is an error that names it in the file's
/// own terms and says what to do instead.
///
/// What changes from running the file with Firecracker itself: a writable drive is a per-VM
/// copy (as in any spec), and the driver owns the paths of Firecracker's log and metrics and
/// of the vsock socket (`logger.log_path`, `metrics.metrics_path` and `vsock.uds_path` are not
/// used: `microvm logs`, `microvm stats`, `MicroVM.vsockPath`). The file names no VM: its id is
/// empty, for the caller to set.
enum FirecrackerConfigFile {
    /// Whether a parsed document is in Firecracker's format rather than a spec's.
    static func isOne(_ tree: JSONValue) -> Bool {
        guard let members = tree.objectValue else { return false }
        return members["boot-source"] != nil || members["machine-config"] != nil
    }

    /// Firecracker's default kernel command line (1.12-1.16), for a `boot-source` without
    /// `boot_args`: the file boots as it would under Firecracker itself.
    static let defaultBootArguments = "reboot=k panic=1 pci=off nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd"

    /// The spec a document in Firecracker's format describes, with every problem found at
    /// once; problems of the spec it becomes are named in the file's own terms.
    static func decode(_ tree: JSONValue) throws(MicroVMError) -> VMSpec {
        var converter = Converter()
        let converted = JSONValue.object(converter.convert(tree.objectValue ?? [:]))
        if !converter.problems.isEmpty { throw .invalidSpec(id: nil, problems: converter.problems) }
        do {
            return try VMSpec.decode(tree: converted)
        } catch {
            guard case .invalidSpec(let id, let problems) = error else { throw error }
            throw .invalidSpec(id: id, problems: problems.map { converter.inFileTerms($0) })
        }
    }

    /// A key of Firecracker's format: the spec's key it becomes, or why it cannot be taken.
    private enum Key {
        case renamed(String)
        case refused(String)
        /// A key Firecracker itself no longer takes (since 1.0): what to write instead.
        case obsolete(String)
        case dropped  // meaningless to the driver and harmless to leave out (a display option)
    }

    private struct Converter {
        var problems: [SpecProblem] = []
        /// A spec's path and the file's path it came from: sections, list items and keys.
        var names: [(spec: String, file: String)] = [
            ("boot", "boot-source"), ("machine", "machine-config"), ("network_interfaces", "network-interfaces"),
            ("mmds", "mmds-config"), ("cpu_config", "cpu-config"), ("logging.vmm_level", "logger.level"),
        ]

        /// `problem` with its field as the file names it: the longest spec path it starts with
        /// replaced by the file's.
        func inFileTerms(_ problem: SpecProblem) -> SpecProblem {
            var problem = problem
            let field = problem.field
            let match = names.filter { name in
                field == name.spec || field.hasPrefix(name.spec + ".") || field.hasPrefix(name.spec + "[")
            }.max { $0.spec.count < $1.spec.count }
            if let match { problem.field = match.file + field.dropFirst(match.spec.count) }
            return problem
        }

        mutating func convert(_ file: [String: JSONValue]) -> [String: JSONValue] {
            // The file names no VM: the caller gives the id (the command line: --id, or one it makes).
            var spec: [String: JSONValue] = ["id": .string("")]
            // Optional in Firecracker's format, which then gives the guest 1 vCPU and 128 MiB.
            if file["machine-config"] == nil || file["machine-config"] == .null {
                spec["machine"] = .object(["vcpus": .int(1), "memory_mib": .int(128)])
            }
            for (key, value) in file.sorted(by: { $0.key < $1.key }) where value != .null {
                switch key {
                case "boot-source":
                    var boot = value
                    // Without boot_args, Firecracker boots with its own default command line.
                    if case .object(var members) = value, members["boot_args"] == nil || members["boot_args"] == .null {
                        members["boot_args"] = .string(FirecrackerConfigFile.defaultBootArguments)
                        boot = .object(members)
                    }
                    spec["boot"] = section(
                        boot, at: key, as: "boot",
                        keys: ["kernel_image_path": .renamed("kernel"), "initrd_path": .renamed("initrd"), "boot_args": .renamed("args")],
                        transform: ["args": { .array(($0.stringValue ?? "").split(whereSeparator: \.isWhitespace).map { .string(String($0)) }) }])
                case "machine-config":
                    spec["machine"] = section(
                        value, at: key, as: "machine",
                        keys: [
                            "vcpu_count": .renamed("vcpus"), "mem_size_mib": .renamed("memory_mib"), "smt": .renamed("smt"),
                            "cpu_template": .renamed("cpu_template"), "track_dirty_pages": .renamed("track_dirty_pages"),
                            "huge_pages": .renamed("huge_pages"),
                            "ht_enabled": .obsolete("Firecracker 1.0 renamed it smt: write \"smt\" instead"),
                        ])
                case "drives":
                    spec["drives"] = list(
                        value, at: key, as: "drives",
                        keys: [
                            "drive_id": .renamed("id"), "path_on_host": .renamed("path"), "is_root_device": .renamed("root"),
                            "is_read_only": .renamed("read_only"), "partuuid": .renamed("partuuid"), "cache_type": .renamed("cache_type"),
                            "io_engine": .renamed("io_engine"), "rate_limiter": .renamed("rate_limiter"),
                            "socket": .refused("vhost-user drives are not supported by this driver; give the image's path_on_host"),
                        ])
                case "network-interfaces":
                    spec["network_interfaces"] = list(
                        value, at: key, as: "network_interfaces",
                        keys: [
                            "iface_id": .renamed("id"), "host_dev_name": .renamed("tap"), "guest_mac": .renamed("mac"), "mtu": .renamed("mtu"),
                            "rx_rate_limiter": .renamed("rx_rate_limiter"), "tx_rate_limiter": .renamed("tx_rate_limiter"),
                        ])
                case "vsock":
                    // The socket is the driver's, in the VM's directory (MicroVM.vsockPath).
                    spec["vsock"] = section(value, at: key, as: "vsock", keys: ["guest_cid": .renamed("guest_cid"), "uds_path": .dropped, "vsock_id": .dropped])
                case "mmds-config":
                    spec["mmds"] = section(
                        value, at: key, as: "mmds",
                        keys: [
                            "version": .renamed("version"), "network_interfaces": .renamed("network_interfaces"),
                            "ipv4_address": .renamed("ipv4_address"), "imds_compat": .renamed("imds_compat"),
                        ])
                case "balloon", "entropy":
                    spec[key] = value
                case "logger":
                    // Firecracker's log is the driver's (re-emitted through swift-log, kept for
                    // exit reasons, `microvm logs ID`): its level is the file's to say, its path
                    // is not.
                    let logging = section(
                        value, at: key, as: "logging",
                        keys: [
                            "level": .renamed("vmm_level"), "log_path": .dropped, "show_level": .dropped, "show_log_origin": .dropped,
                            "module": .dropped,
                            "log_fifo": .obsolete("Firecracker 1.0 replaced it with log_path, which the driver owns: remove it (microvm logs --firecracker reads the log)"),
                        ])
                    spec["logging"] = merged(spec["logging"], logging)
                case "metrics":
                    _ = section(
                        value, at: key, as: "logging",
                        keys: [
                            "metrics_path": .dropped,
                            "metrics_fifo": .obsolete("Firecracker 1.0 replaced it with metrics_path, which the driver owns: remove it (microvm stats reads the metrics)"),
                        ])
                    // Firecracker writes them into the VM's directory (`microvm stats ID`).
                    spec["logging"] = merged(spec["logging"], .object(["metrics": .bool(true)]))
                case "cpu-config":
                    // Firecracker's config file names a JSON file holding the template (its
                    // API takes the object; both are read here).
                    guard let template = cpuTemplate(value, at: key) else { continue }
                    spec["cpu_config"] = section(
                        template, at: key, as: "cpu_config",
                        keys: [
                            "kvm_capabilities": .renamed("kvm_capabilities"), "cpuid_modifiers": .renamed("cpuid_modifiers"),
                            "msr_modifiers": .renamed("msr_modifiers"), "reg_modifiers": .renamed("reg_modifiers"),
                            "vcpu_features": .renamed("vcpu_features"),
                        ])
                case "mmds-version":
                    problems.append(
                        SpecProblem(
                            field: key, message: "not a section since Firecracker 1.0",
                            hint: "write the version inside mmds-config: \"mmds-config\": {\"version\": \"V2\", ...}"))
                case "pmem", "memory-hotplug":
                    problems.append(
                        SpecProblem(
                            field: key,
                            message: "a section of Firecracker \(key == "pmem" ? "1.14" : "1.16")'s config file (\(key == "pmem" ? "virtio-pmem devices" : "hot-pluggable memory")) that this driver does not support",
                            hint: key == "pmem" ? "give the image as a drive instead (drives)" : "give the guest its memory in machine-config.mem_size_mib"))
                default:
                    problems.append(
                        SpecProblem(
                            field: key, message: "not a section of Firecracker's config file this driver knows",
                            hint: "remove it or correct its spelling; the sections are boot-source, machine-config, cpu-config, drives, network-interfaces, vsock, mmds-config, balloon, entropy, logger, metrics"))
                }
            }
            return spec
        }

        /// A custom CPU template: the object, or read from the file a path names (relative to
        /// the current directory, as Firecracker takes it from its own).
        mutating func cpuTemplate(_ value: JSONValue, at path: String) -> JSONValue? {
            guard let file = value.stringValue else { return value }
            guard let data = FileManager.default.contents(atPath: file) else {
                problems.append(
                    SpecProblem(
                        field: path, message: "cannot read the CPU template file \(file)",
                        hint: "check the path (relative paths are taken from the current directory)"))
                return nil
            }
            do {
                return try JSONDecoder().decode(JSONValue.self, from: data)
            } catch {
                problems.append(SpecProblem(field: path, message: "the CPU template file \(file) is not valid JSON: \(error)"))
                return nil
            }
        }

        /// An object of Firecracker's format, its keys renamed (and their values transformed).
        mutating func section(
            _ value: JSONValue, at path: String, as specPath: String, keys: [String: Key], transform: [String: (JSONValue) -> JSONValue] = [:]
        ) -> JSONValue {
            names.append((specPath, path))
            for (key, kind) in keys { if case .renamed(let name) = kind { names.append(("\(specPath).\(name)", "\(path).\(key)")) } }
            guard let members = value.objectValue else {
                problems.append(SpecProblem(field: path, message: "expected an object"))
                return value
            }
            var result: [String: JSONValue] = [:]
            for (key, member) in members.sorted(by: { $0.key < $1.key }) where member != .null {
                switch keys[key] {
                case .renamed(let name)?:
                    result[name] = transform[name].map { $0(member) } ?? member
                case .refused(let why)?:
                    problems.append(SpecProblem(field: "\(path).\(key)", message: "not supported", hint: why))
                case .obsolete(let instead)?:
                    problems.append(SpecProblem(field: "\(path).\(key)", message: "not a key since Firecracker 1.0", hint: instead))
                case .dropped?:
                    continue
                case nil:
                    problems.append(
                        SpecProblem(
                            field: "\(path).\(key)", message: "unknown key",
                            hint: "remove it or correct its spelling (Firecracker's config-file format; see its API reference)"))
                }
            }
            return .object(result)
        }

        mutating func list(_ value: JSONValue, at path: String, as specPath: String, keys: [String: Key]) -> JSONValue {
            names.append((specPath, path))
            guard let items = value.arrayValue else {
                problems.append(SpecProblem(field: path, message: "expected a list"))
                return value
            }
            return .array(items.enumerated().map { index, item in section(item, at: "\(path)[\(index)]", as: "\(specPath)[\(index)]", keys: keys) })
        }

        func merged(_ existing: JSONValue?, _ added: JSONValue) -> JSONValue {
            var members = existing?.objectValue ?? [:]
            for (key, value) in added.objectValue ?? [:] { members[key] = value }
            return .object(members)
        }
    }
}
