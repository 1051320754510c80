import ArgumentParser
import MicroVM

/// `microvm pause ID...`.
struct PauseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Pause a running VM's vCPUs.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VMs' ids.")
    var ids: [String]

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.pause")
        let configuration = try global.driverConfiguration()
        let interrupts = Interrupts.catching()
        try await interrupts.deferring {
            try await VMs.each(ids, json: global.json) { id in
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                try await machine.pause()
                await machine.recordWritten()
                Output.line("\(id): paused")
            }
        }
        try interrupts.exitIfInterrupted("the VMs were paused first")
    }
}
