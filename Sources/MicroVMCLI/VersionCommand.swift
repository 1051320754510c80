import ArgumentParser
import Foundation
import MicroVMHost

/// `microvm version`.
struct VersionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version",
        abstract: "Print microvm's version and those of the Firecracker and jailer binaries it would use."
    )

    @OptionGroup var global: GlobalOptions


    struct Binary: Encodable {
        var path: String
        var version: String?
    }

    struct Body: Encodable {
        var microvm: String
        var firecracker: Binary
        var jailer: Binary
    }

    func run() async throws {
        let configuration = try global.driverConfiguration()
        let firecracker = configuration.jailer.firecrackerBinary.string
        let jailer = configuration.jailer.jailerBinary.string
        let body = Body(
            microvm: CLIVersion.current,
            firecracker: Binary(path: firecracker, version: BinaryVersion.read(firecracker)),
            jailer: Binary(path: jailer, version: BinaryVersion.read(jailer)))
        if global.json {
            Output.line(JSON.string(body))
            return
        }
        Output.line("microvm \(body.microvm)")
        Output.line("firecracker \(body.firecracker.version ?? "unavailable") (\(firecracker))")
        Output.line("jailer \(body.jailer.version ?? "unavailable") (\(jailer))")
    }
}
