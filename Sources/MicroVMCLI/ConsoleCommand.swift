import ArgumentParser
import MicroVM

/// `microvm console ID`: attach to a running VM's serial console.
struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Attach to a VM's serial console: its output on stdout, stdin to the guest.",
        discussion: """
            First prints what the guest wrote while nobody was attached (kept in the VM's \
            console FIFO), then follows. ctrl-p ctrl-q (--detach-keys) or Ctrl-C detaches and \
            leaves the VM running; --stop-on-interrupt makes Ctrl-C stop it instead. When the VM \
            ends the command exits: 0 for a clean stop, 4 for a failure. End of input stops \
            forwarding but keeps following the output.
            """
    )

    @OptionGroup var global: GlobalOptions
    @OptionGroup var console: ConsoleOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Flag(name: .customLong("stop-on-interrupt"), help: "Ctrl-C stops the VM gracefully instead of detaching.")
    var stopOnInterrupt = false

    @Option(name: .customLong("stop-timeout"), help: ArgumentHelp("With --stop-on-interrupt: seconds the guest has to shut down.", valueName: "seconds"))
    var stopTimeout: Double = 5

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.console")
        let keys = try console.detachSequence()
        let interrupts = Interrupts.catching()
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        Output.note("[microvm] attached to VM \(machine.id) (\(await machine.state.name)); \(console.detachKeys) detaches")
        let end = await ConsoleSession.attach(
            machine, replay: true, forwardInput: !console.noStdin, detachKeys: keys, interrupts: interrupts,
            onInterrupt: stopOnInterrupt ? .stop(grace: .seconds(parsing: stopTimeout)) : .detach)
        try ConsoleSession.finish(end, vm: machine)
    }
}
