import ArgumentParser
import MicroVM

/// `microvm stop ID`: a graceful stop.
struct StopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stop",
        abstract: "Stop a VM: Ctrl-Alt-Del, --timeout seconds for the guest, then kill; everything it had is removed.",
        discussion: "Prints how the VM ended. A VM that has already ended is reported (exit 0); `microvm rm` removes its leftovers."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Option(name: [.short, .long], help: ArgumentHelp("Seconds the guest has to shut down before it is killed.", valueName: "seconds"))
    var timeout: Double = 5

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.stop")
        let configuration = try global.driverConfiguration()
        let listing = try VMs.listing(id, configuration: configuration)
        if listing.record != nil, !listing.process.isAlive {
            Output.line("\(id): already ended (\(listing.state?.description ?? "unknown")); `microvm rm \(id)` removes what it left")
            return
        }
        let interrupts = Interrupts.catching()
        let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
        // A Ctrl-C during the grace period kills the VMM at once rather than leaving it half-stopped.
        let reason = await interrupts.handling({ Task { await machine.kill() } }) { await machine.stop(grace: .seconds(parsing: timeout)) }
        Output.line("\(id): \(reason)")
        if !reason.isClean { throw CLIError(.vmFailure, "VM \(id) ended uncleanly: \(reason)", id: id) }
    }
}
