import ArgumentParser
import Dispatch
import Foundation
import MicroVM

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm logs ID`: the console lines a VM's console holds.
struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "Print a VM's console output (what its console holds once attached); -f follows.",
        discussion: """
            Attaches to the VM, reads what the guest wrote while no microvm process was attached \
            (kept in its console FIFO, up to the pipe's size), and prints the newest lines. Those \
            lines are then consumed: the console's history lives only in the attached process \
            (set console.file in the spec to keep a file). With -f, follows until the VM ends or \
            Ctrl-C (which leaves the VM running). --firecracker prints Firecracker's own log instead.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Flag(name: [.short, .long], help: "Follow: keep printing new lines.")
    var follow = false

    @Option(name: .customLong("tail"), help: ArgumentHelp("Only the last N lines held.", valueName: "N"))
    var tail: Int?

    @Flag(name: .customLong("firecracker"), help: "Firecracker's own log lines instead of the console.")
    var firecrackerLog = false

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more") }
    }

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.logs")
        let machine = try await VMs.attach(id, configuration: try global.driverConfiguration(), logger: logger)
        await Self.drainBacklog(machine)
        if firecrackerLog {
            let lines = await machine.firecrackerLog.recentLines
            for line in lines.suffix(tail ?? lines.count) { Output.line(line.raw) }
            return
        }
        let held = await machine.console.recentLines
        let shown = held.suffix(tail ?? held.count)
        guard follow else {
            for line in shown { Output.line(line.text) }
            return
        }
        let start = shown.first?.index ?? held.last.map { $0.index + 1 } ?? 0
        let lines = await machine.console.subscribe(replay: true)
        let printer = Task {
            for await line in lines where line.index >= start { Output.line(line.text) }
        }
        for number in [SIGINT, SIGTERM, SIGHUP] { signal(number, SIG_IGN) }
        let (interrupts, continuation) = AsyncStream<Void>.makeStream()
        let sources = [SIGINT, SIGTERM, SIGHUP].map { number in
            let source = DispatchSource.makeSignalSource(signal: number)
            source.setEventHandler { continuation.yield() }
            source.resume()
            return source
        }
        defer { for source in sources { source.cancel() } }
        let ended = Task {
            await printer.value
            continuation.finish()
        }
        for await _ in interrupts {
            printer.cancel()
            break
        }
        ended.cancel()
    }

    /// Waits until the console has taken in what its FIFO held: no new line for 300 ms (at
    /// most 3 s).
    static func drainBacklog(_ machine: MicroVM) async {
        var last = -1
        let deadline = ContinuousClock.now + .seconds(3)
        while ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(300))
            let next = await machine.console.nextLineIndex
            if next == last { return }
            last = next
        }
    }
}
