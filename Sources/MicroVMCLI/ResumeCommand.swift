import ArgumentParser
import MicroVM

/// `microvm resume ID`.
struct ResumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.resume")
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        try await Interrupts.catching().deferring { try await machine.resume() }
        Output.line("\(id): running")
    }
}
