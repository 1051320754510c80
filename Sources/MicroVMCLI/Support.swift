public import ArgumentParser
import FirecrackerAPI
import Foundation
import Logging
import MicroVM
import MicroVMHost
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The documented exit codes.
enum ExitStatus: Int32, Sendable {
    case success = 0
    case internalError = 1
    /// A usage error, an invalid spec or setting.
    case usage = 2
    /// The host cannot do it: sandbox unavailable, missing binary, /dev/kvm, cgroups, files.
    case host = 3
    /// The VM failed: create failed, Firecracker refused, the guest ended uncleanly.
    case vmFailure = 4
    /// No such VM (or snapshot).
    case notFound = 5
    /// The VM's state forbids the operation: id in use, not running, attached elsewhere.
    case conflict = 6
    /// SIGINT, SIGTERM or SIGHUP ended the command (128 + SIGINT, as shells report it); what it
    /// was doing was undone (a creation) or finished (a snapshot, a stop).
    case interrupted = 130

    var kind: String {
        switch self {
        case .success: "ok"
        case .internalError: "internal"
        case .usage: "usage"
        case .host: "host"
        case .vmFailure: "vm-failure"
        case .notFound: "not-found"
        case .conflict: "conflict"
        case .interrupted: "interrupted"
        }
    }
}

/// An error of the command line itself, with its exit status and what to do.
struct CLIError: Error, CustomStringConvertible {
    var status: ExitStatus
    var message: String
    var hint: String?
    var id: String?

    init(_ status: ExitStatus, _ message: String, hint: String? = nil, id: String? = nil) {
        self.status = status
        self.message = message
        self.hint = hint
        self.id = id
    }

    var description: String { message }
}

/// Prints an error (text or JSON, on standard error) and exits with its documented status.
enum Failure {
    static func classify(_ error: any Error) -> (status: ExitStatus, message: String, hint: String?, id: String?) {
        switch error {
        case let error as CLIError:
            return (error.status, error.message, error.hint, error.id)
        case let error as MicroVMError:
            return (status(of: error), error.description, error.hint, error.id)
        case let error as JailError:
            if case .invalidSetting = error { return (.usage, error.description, error.hint, nil) }
            return (.host, error.description, error.hint, nil)
        case let error as FirecrackerAPIError:
            return (.vmFailure, error.description, error.hint, nil)
        case let error as Console.WaitError:
            return (.vmFailure, error.description, nil, nil)
        default:
            return (.internalError, "\(error)", nil, nil)
        }
    }

    static func status(of error: MicroVMError) -> ExitStatus {
        if error.isCancellation { return .interrupted }
        switch error {
        case .invalidSpec: return .usage
        case .invalidState, .stateConflict, .notAttachable, .heldByAnotherDriver, .poolClosed: return .conflict
        case .sandbox(_, let cause):
            if case .invalidSetting = cause { return .usage }
            return .host
        case .snapshotFailed where error.isSnapshotDestinationProblem: return .usage
        case .api, .snapshotFailed, .vmEnded: return .vmFailure
        case .createFailed(_, _, let cause, let exit):
            if exit == nil, cause is JailError || cause is SystemCallError { return .host }
            return .vmFailure
        case .file, .corruptRecord, .network: return .host
        case .notFound: return .notFound
        }
    }

    static func exit(for error: any Error, json: Bool) -> Never {
        Terminal.restore()
        if let code = error as? ExitCode { Foundation.exit(code.rawValue) }
        let known = error is CLIError || error is MicroVMError || error is JailError || error is FirecrackerAPIError || error is Console.WaitError
        if !known, !json || MicroVMCommand.exitCode(for: error) != .failure {
            // ArgumentParser's own (usage, help, CleanExit) and anything unexpected (exit 1).
            MicroVMCommand.exitForArgumentParser(error)
        }
        Foundation.exit(report(error, json: json).rawValue)
    }

    /// Prints `error` as `exit` does, without exiting: one of several a command ran into.
    @discardableResult
    static func report(_ error: any Error, json: Bool) -> ExitStatus {
        let (status, described, hint, id) = classify(error)
        PostMortems.record(error)
        // The library's descriptions end with their hint, which is shown on its own.
        var message = described
        if let hint, !hint.isEmpty, message.hasSuffix(". Hint: \(hint)") { message.removeLast(" Hint: \(hint)".count) }
        if json {
            struct Body: Encodable {
                struct Detail: Encodable {
                    var code: Int32
                    var kind: String
                    var message: String
                    var hint: String?
                    var id: String?
                }
                var error: Detail
            }
            Output.error(JSON.string(Body(error: .init(code: status.rawValue, kind: status.kind, message: message, hint: hint, id: id))))
        } else {
            Output.error("microvm: error: \(message)")
            if let hint, !hint.isEmpty { Output.error("hint: \(hint)") }
        }
        return status
    }
}

/// Unbuffered writes: console lines, tables and errors never interleave out of order.
///
/// A reader that goes away (`microvm run | head`) is not a crash: Foundation's `FileHandle`
/// traps on EPIPE, which killed `microvm run` and left its VM running under its monitor. Writes
/// go through `write(2)`; once standard output is gone, `bytes` says so (a console session then
/// stops or detaches as for Ctrl-C) and later writes are dropped.
enum Output {
    private static let standardOutputGone = Atomic<Bool>(false)

    /// Whether a write to standard output found its reader gone.
    static var isStandardOutputGone: Bool { standardOutputGone.load(ordering: .relaxed) }

    static func line(_ text: String) {
        raw(text + "\n")
    }

    static func raw(_ text: String) {
        bytes(Array(text.utf8))
    }

    /// Writes `bytes` to standard output; false once its reader is gone.
    @discardableResult
    static func bytes(_ bytes: [UInt8]) -> Bool {
        guard !isStandardOutputGone else { return false }
        if writeAll(bytes, to: 1) { return true }
        standardOutputGone.store(true, ordering: .relaxed)
        return false
    }

    static func error(_ text: String) {
        errorText(text + "\n")
    }

    /// `text` on standard error as it is (a progress line's carriage returns); a failed write is dropped.
    static func errorText(_ text: String) {
        _ = writeAll(Array(text.utf8), to: 2)
    }

    /// The whole buffer, across partial writes and interruptions; false on any other error.
    private static func writeAll(_ bytes: [UInt8], to fd: Int32) -> Bool {
        bytes.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0 {
                    if errno == EINTR || errno == EAGAIN { continue }
                    return false
                }
                offset += written
            }
            return true
        }
    }

    /// A note for a person at a terminal; silent when standard error is not one.
    static func note(_ text: String) {
        if isatty(2) == 1 { error(text) }
    }
}

enum JSON {
    static func string(_ value: some Encodable) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601Seconds
        guard let data = try? encoder.encode(value) else { return "{}" }
        return String(decoding: data, as: UTF8.self)
    }
}

enum Paths {
    static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        return FileManager.default.currentDirectoryPath + "/" + path
    }
}

/// The terminal's settings while a console is attached (no line buffering, so the detach keys
/// act at once; Ctrl-Q reaches the guest), restored on every way out.
enum Terminal {
    nonisolated(unsafe) private static var saved: termios?

    static func enterConsoleMode() {
        guard isatty(0) == 1 else { return }
        var settings = termios()
        guard tcgetattr(0, &settings) == 0 else { return }
        saved = settings
        settings.c_lflag &= ~tcflag_t(ICANON)
        settings.c_iflag &= ~tcflag_t(IXON)
        tcsetattr(0, TCSANOW, &settings)
    }

    static func restore() {
        guard var settings = saved else { return }
        tcsetattr(0, TCSANOW, &settings)
        saved = nil
    }
}

/// Finding and taking over a VM by id.
enum VMs {
    /// Runs `body` for every id at once (`stop a b c` takes as long as the slowest, not the
    /// sum), each reporting on its own line as it ends. Every failure is printed; the command
    /// then fails with the first one's status.
    static func each(_ ids: [String], json: Bool, _ body: @escaping @Sendable (String) async throws -> Void) async throws {
        let failures = await withTaskGroup(of: (any Error)?.self) { group in
            for id in ids {
                group.addTask {
                    do {
                        try await body(id)
                        return nil
                    } catch {
                        return error
                    }
                }
            }
            var failures: [any Error] = []
            for await failure in group {
                if let failure { failures.append(failure) }
            }
            return failures
        }
        guard let first = failures.first else { return }
        if failures.count == 1 { throw first }
        for failure in failures.dropFirst() { Failure.report(failure, json: json) }
        throw first
    }

    /// A usage error for a string no VM can have as its id (rather than "no such VM").
    static func checkID(_ id: String) throws {
        do {
            _ = try VMIdentifier(id)
        } catch {
            throw CLIError(.usage, error.summary, hint: "ids are 1-64 ASCII letters, digits and '-'; `microvm ls -q` lists them")
        }
    }

    /// The VM's listing, or `notFound`.
    static func listing(_ id: String, configuration: DriverConfiguration) throws -> VMListing {
        try checkID(id)
        if let listing = MicroVM.list(configuration: configuration).first(where: { $0.id == id }) { return listing }
        throw MicroVMError.notFound(id: id, stateRoot: configuration.stateStore.root.string)
    }

    /// How long `ls` and `inspect` wait for a VM's Firecracker to say its state.
    static let askTimeout = Duration.milliseconds(250)

    /// The VM's listing with its state as its Firecracker reports it (when no microvm process is
    /// attached to it), or `notFound`.
    static func askedListing(_ id: String, configuration: DriverConfiguration) async throws -> VMListing {
        await MicroVM.asking(try listing(id, configuration: configuration), timeout: askTimeout)
    }

    /// Attaches to a live VM, with errors that say what to do from the shell.
    static func attach(_ id: String, configuration: DriverConfiguration, logger: Logger) async throws -> MicroVM {
        try checkID(id)
        do {
            return try await MicroVM.attach(id: id, configuration: configuration, logger: logger)
        } catch {
            guard case .notAttachable = error else { throw error }
            let listing = try? listing(id, configuration: configuration)
            if let listing, !listing.process.isAlive {
                throw CLIError(
                    .conflict, "VM \(id) is not running (\(listing.state?.description ?? "ended"))",
                    hint: "`microvm rm \(id)` removes what it left (or `microvm gc` for every dead VM)", id: id)
            }
            if let listing, listing.supervised, let record = listing.record {
                throw CLIError(
                    .conflict, "VM \(id) is attached to another process (pid \(record.driverPID))",
                    hint: "detach there first (ctrl-p ctrl-q in `microvm console`), or wait until that process has exited", id: id)
            }
            throw error
        }
    }
}

extension SandboxPolicy: ExpressibleByArgument {}

extension Duration {
    static func seconds(parsing value: Double) -> Duration {
        .milliseconds(Int64(value * 1000))
    }
}
