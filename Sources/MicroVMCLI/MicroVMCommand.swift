import ArgumentParser
import Logging

@main
struct MicroVMCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "microvm",
        abstract: "Launch, sandbox, supervise and tear down Firecracker microVMs.",
        subcommands: [DemoCommand.self]
    )
}

/// Options every subcommand shares.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .long, help: "Log what the driver does (to standard error).")
    var verbose = false

    func makeLogger(label: String) -> Logger {
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var logger = Logger(label: label)
        logger.logLevel = verbose ? .debug : .warning
        return logger
    }
}
