import ArgumentParser
import MicroVM

/// `microvm pause ID`.
struct PauseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a running VM's vCPUs.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.pause")
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        try await Interrupts.catching().deferring { try await machine.pause() }
        Output.line("\(id): paused")
    }
}
