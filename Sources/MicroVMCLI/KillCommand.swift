import ArgumentParser
import MicroVM

/// `microvm kill ID`: SIGKILL at once.
struct KillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill",
        abstract: "Kill a VM's Firecracker at once (SIGKILL); everything it had is removed."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.kill")
        let interrupts = Interrupts.catching()
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        let reason = await interrupts.deferring { await machine.kill() }
        Output.line("\(id): \(reason)")
    }
}
