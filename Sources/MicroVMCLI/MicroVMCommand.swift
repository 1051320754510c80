import ArgumentParser
import Foundation
import Logging
import MicroVM

@main
struct MicroVMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "microvm",
        abstract: "Launch, sandbox, supervise and tear down Firecracker microVMs.",
        discussion: """
            Every invocation is a short-lived driver: a VM outlives the command that created it \
            (its console and API live in its state directory), and any later command attaches \
            to it by id. VMs are jailed by default (--sandbox required).

            Exit codes: 0 success; 1 internal error; 2 usage error or invalid spec; 3 host \
            problem (sandbox unavailable, missing binary, /dev/kvm, cgroups, files; doctor \
            found a failure); 4 VM failure (create failed, Firecracker refused, the guest ended \
            uncleanly); 5 no such VM; 6 the VM's state forbids it (id in use, not running, \
            another process is attached); 130 interrupted (SIGINT, SIGTERM or SIGHUP; what the \
            command was doing was undone or finished).
            """,
        version: CLIVersion.current,
        subcommands: [
            RunCommand.self, CreateCommand.self, StartCommand.self, ListCommand.self, InspectCommand.self,
            ConsoleCommand.self, LogsCommand.self, PauseCommand.self, ResumeCommand.self, SnapshotCommand.self,
            RestoreCommand.self, StopCommand.self, KillCommand.self, RemoveCommand.self, GCCommand.self,
            StatsCommand.self, DoctorCommand.self, VersionCommand.self, DemoCommand.self,
        ]
    )

    /// Parses, runs, and maps every failure to the documented exit codes (ArgumentParser's own
    /// usage errors exit 64; this command line documents 2).
    nonisolated static func main() async {
        let command: any ParsableCommand
        do {
            command = try parseAsRoot()
        } catch {
            exitForArgumentParser(error)
        }
        // `--json` (a global option) also turns errors into JSON.
        let json = CommandLine.arguments.dropFirst().contains("--json")
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                var plain = command
                try plain.run()
            }
        } catch {
            Failure.exit(for: error, json: json)
        }
        Terminal.restore()
        Foundation.exit(0)
    }

    /// Usage errors exit 2 with ArgumentParser's message (which names the usage and --help);
    /// help and version requests exit 0.
    static func exitForArgumentParser(_ error: any Error) -> Never {
        Terminal.restore()
        let code = exitCode(for: error)
        if code == .validationFailure {
            Output.error(fullMessage(for: error))
            Foundation.exit(ExitStatus.usage.rawValue)
        }
        self.exit(withError: error)
    }
}

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .long, help: "Log what the driver does (to standard error).")
    var verbose = false

    @Option(
        name: .customLong("state-dir"),
        help: ArgumentHelp("Where VMs are recorded (default: $MICROVM_STATE_DIR, else /run/microvm).", valueName: "dir"))
    var stateDir: String?

    @Flag(
        help: "JSON output (ls, inspect, gc, stats, doctor, version: documented in README); errors as a JSON object on standard error.")
    var json = false

    private static let bootstrap: Void = LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }

    func makeLogger(label: String) -> Logger {
        Self.bootstrap
        var logger = Logger(label: label)
        // Warnings too: a sandbox that falls back to an unjailed VMM (policy preferred) or is
        // off, a guest killed after its grace, a teardown left incomplete must not pass silently.
        logger.logLevel = verbose ? .debug : .warning
        // Firecracker's own lines, re-emitted by the driver, reach the user once: in the error
        // or exit reason that quotes them (and `microvm logs --firecracker`), not also as log
        // lines above it; so does a VM's failure, which the command reports. --verbose shows
        // them as they come.
        if !verbose { logger.handler = WithoutFirecrackerLines(logger.handler) }
        return logger
    }

    /// The driver's configuration: `MICROVM_*` variables, with `--state-dir` and the binaries
    /// given on the command line taking precedence.
    /// The driver's configuration from the flags and the environment. A command that launches
    /// a VM (`launches`) needs the per-VM monitor: the VM outlives this process.
    func driverConfiguration(firecracker: String? = nil, jailer: String? = nil, launches: Bool = false) throws -> DriverConfiguration {
        var environment = ProcessInfo.processInfo.environment
        if let stateDir { environment[StateStore.environmentVariable] = Paths.absolute(stateDir) }
        if let firecracker {
            environment["MICROVM_FIRECRACKER_BIN"] = Paths.absolute(firecracker)
            environment["MICROVM_JAILER_FIRECRACKER_BIN"] = Paths.absolute(firecracker)
        }
        if let jailer { environment["MICROVM_JAILER_BIN"] = Paths.absolute(jailer) }
        var configuration = try DriverConfiguration(environment: environment)
        // Each command is a short-lived driver: a console it never shows stays in the VM's FIFO
        // for the next `console`/`logs`, instead of dying with this process.
        configuration.consoleReading = .onDemand
        configuration.monitor = MonitorSettings.locate(environment: environment)
        if launches, configuration.monitor == nil {
            throw CLIError(
                .host, "microvm-monitor (the per-VM monitor that keeps a VM running after this command exits) was not found",
                hint: "install it beside microvm (`swift build` builds both into .build/debug) or set \(MonitorSettings.environmentVariable) to its path")
        }
        PostMortems.use(configuration.stateStore)
        return configuration
    }
}

enum CLIVersion {
    static let current = "0.1.0"
}

/// A log handler that leaves out the lines the driver re-emits from Firecracker's log (they
/// carry `firecracker_thread`) and its "VM failed" (the command prints the exit reason).
struct WithoutFirecrackerLines: LogHandler {
    var wrapped: any LogHandler

    init(_ wrapped: any LogHandler) { self.wrapped = wrapped }

    func log(event: LogEvent) {
        guard event.metadata?["firecracker_thread"] == nil, event.message.description != "VM failed" else { return }
        wrapped.log(event: event)
    }

    var metadata: Logger.Metadata {
        get { wrapped.metadata }
        set { wrapped.metadata = newValue }
    }

    var logLevel: Logger.Level {
        get { wrapped.logLevel }
        set { wrapped.logLevel = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { wrapped[metadataKey: key] }
        set { wrapped[metadataKey: key] = newValue }
    }
}
