import ArgumentParser
import MicroVM

/// `microvm resume ID...`.
struct ResumeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Resume a paused VM.")

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VMs' ids.")
    var ids: [String]

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.resume")
        let configuration = try global.driverConfiguration()
        let interrupts = Interrupts.catching()
        try await interrupts.deferring {
            try await VMs.each(ids, json: global.json) { id in
                let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
                try await machine.resume()
                await machine.recordWritten()
                Output.line("\(id): running")
            }
        }
        try interrupts.exitIfInterrupted("the VMs were resumed first")
    }
}
