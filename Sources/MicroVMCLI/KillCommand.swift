import ArgumentParser
import MicroVM

/// `microvm kill ID...`: SIGKILL at once.
struct KillCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kill",
        abstract: "Kill a VM's Firecracker at once (SIGKILL); everything it had is removed."
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VMs' ids.")
    var ids: [String]

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.kill")
        let configuration = try global.driverConfiguration()
        let interrupts = Interrupts.catching()
        try await interrupts.deferring {
            try await VMs.each(ids, json: global.json) { id in
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                let reason = await machine.kill()
                Output.line("\(id): \(reason)")
            }
        }
        try interrupts.exitIfInterrupted("the VMs were killed first")
    }
}
