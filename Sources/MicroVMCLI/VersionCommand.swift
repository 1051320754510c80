import ArgumentParser
import Foundation

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

/// A binary's `--version`, as `vX.Y.Z`.
enum BinaryVersion {
    static func read(_ path: String) -> String? {
        guard FileManager.default.isExecutableFile(atPath: path) else { return nil }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = ["--version"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            return nil
        }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard let range = text.range(of: #"v?\d+\.\d+\.\d+"#, options: .regularExpression) else { return nil }
        let version = String(text[range])
        return version.hasPrefix("v") ? version : "v" + version
    }
}
