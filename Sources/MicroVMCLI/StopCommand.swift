import ArgumentParser
import MicroVM
import Synchronization

/// `microvm stop ID...`: a graceful stop.
struct StopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop a VM: Ctrl-Alt-Del, --timeout seconds for the guest, then kill; everything it had is removed.",
        discussion: "Prints how each VM ended; several are stopped at once. A VM that has already ended is reported (exit 0); `microvm rm` removes its leftovers."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VMs' ids.")
    var ids: [String]

    @Option(name: [.short, .long], help: ArgumentHelp("Seconds the guest has to shut down before it is killed.", valueName: "seconds"))
    var timeout: Double = 5

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.stop")
        let configuration = try global.driverConfiguration()
        let interrupts = Interrupts.catching()
        let attached = AttachedVMs()
        let grace = Duration.seconds(parsing: timeout)
        // A Ctrl-C during the grace period kills the VMMs at once rather than leaving them half-stopped.
        try await interrupts.handling({ Task { for machine in attached.all { await machine.kill() } } }) {
            try await VMs.each(ids, json: global.json) { id in
                let listing = try VMs.listing(id, configuration: configuration)
                if listing.record != nil, !listing.process.isAlive {
                    Output.line("\(id): already ended (\(listing.state?.description ?? "unknown")); `microvm rm \(id)` removes what it left")
                    return
                }
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                attached.add(machine)
                if interrupts.received { await machine.kill() }
                let reason = await machine.stop(grace: grace)
                Output.line("\(id): \(reason)")
                if !reason.isClean { throw CLIError(.vmFailure, "VM \(id) ended uncleanly: \(reason)", id: id) }
            }
        }
    }
}

/// The VMs a command has attached so far, for a signal handler that must reach all of them.
final class AttachedVMs: Sendable {
    private let machines = Mutex<[MicroVM]>([])

    func add(_ machine: MicroVM) { machines.withLock { $0.append(machine) } }
    var all: [MicroVM] { machines.withLock { $0 } }
}
