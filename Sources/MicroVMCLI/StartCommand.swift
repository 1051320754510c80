import ArgumentParser
import MicroVM

/// `microvm start ID`: boot a created VM.
struct StartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "start",
        abstract: "Boot the guest of a created VM (detached unless --attach)."
    )

    @OptionGroup var global: GlobalOptions
    @OptionGroup var console: ConsoleOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Flag(name: [.short, .long], help: "Attach the console, as `run` does in the foreground.")
    var attach = false

    @Option(name: .customLong("stop-timeout"), help: ArgumentHelp("With --attach: seconds the guest has to shut down after Ctrl-C.", valueName: "seconds"))
    var stopTimeout: Double = 5

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.start")
        let keys = try console.detachSequence()
        let interrupts = Interrupts.catching()
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        try await interrupts.deferring {
            try await machine.start()
            await machine.recordWritten()
        }
        guard attach else {
            Output.line(machine.id.rawValue)
            try interrupts.exitIfInterrupted("VM \(id) was started")
            return
        }
        // A Ctrl-C that came while it started stops it now, as one that comes later does.
        let end = await ConsoleSession.attach(
            machine, replay: true, forwardInput: !console.noStdin, detachKeys: keys, interrupts: interrupts,
            onInterrupt: .stop(grace: .seconds(parsing: stopTimeout)))
        try ConsoleSession.finish(end, vm: machine)
    }
}
