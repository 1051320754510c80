import ArgumentParser
import Dispatch
import Foundation
import MicroVM

#if canImport(Glibc)
    import Glibc
#endif

/// `microvm logs ID`: the console (or Firecracker's log) as the VM's monitor recorded it.
struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs",
        abstract: "Print a VM's console output (or Firecracker's log), running or ended; -f follows.",
        discussion: """
            Reads the files the VM's monitor keeps in its state directory (<state root>/ID/: \
            console.log, and console.log.1 once it has been rotated at 8 MiB; firecracker.log \
            likewise): everything the guest wrote since the VM started, byte for byte, whether or \
            not anything was attached, also after the VM has ended (until `microvm rm` or \
            `microvm gc` removes it). Nothing attaches to the VM, so a `microvm console` session \
            is not disturbed. --tail N prints the last N lines (a last line without its newline \
            counts). -f then follows, across the rotation, until the VM ends and its output is \
            all printed, or Ctrl-C (which leaves the VM running). --firecracker prints \
            Firecracker's own log instead.

            A VM without a monitor (created by a program through the library) has no such \
            files: then logs attaches to it for a moment and prints what its console holds.
            """
    )

    @OptionGroup var global: GlobalOptions

    @Argument(help: "The VM's id.")
    var id: String

    @Flag(name: [.short, .long], help: "Follow: keep printing what is written until the VM ends or Ctrl-C.")
    var follow = false

    @Option(name: .customLong("tail"), help: ArgumentHelp("Only the last N lines.", valueName: "N"))
    var tail: Int?

    @Flag(name: .customLong("firecracker"), help: "Firecracker's own log instead of the console.")
    var firecrackerLog = false

    func validate() throws {
        if let tail, tail < 0 { throw ValidationError("--tail must be 0 or more") }
    }

    func run() async throws {
        let configuration = try global.driverConfiguration()
        let listing = try VMs.listing(id, configuration: configuration)
        let files = MonitorLogFiles(
            directory: configuration.stateStore.directory(for: id).string, name: firecrackerLog ? "firecracker.log" : "console.log")
        guard files.exist || listing.record?.monitorPID != nil else {
            try await printAttached(configuration: configuration)
            return
        }
        let (bytes, current) = files.read()
        let start = tail.map { MonitorLogFiles.tailStart(of: bytes, lines: $0) } ?? 0
        if start < bytes.count { Output.bytes(Array(bytes[start...])) }
        guard follow else { return }
        let record = listing.record
        let id = id
        await Self.untilInterrupted {
            // A reader gone from standard output (`logs -f | head`) ends the following too.
            let end = await files.follow(
                from: current, stillWriting: { Self.monitorIsWriting(record) && !Output.isStandardOutputGone }, print: { Output.bytes($0) })
            if end == .writerGone {
                Output.note("microvm: VM \(id)'s monitor is gone, so nothing records its output any more (`microvm doctor \(id)`)")
            }
        }
    }

    /// Whether anything still writes the files: the monitor, or for a VM without a recorded
    /// monitor, its VMM. A killed monitor writes no `exit` file; following would never end.
    static func monitorIsWriting(_ record: VMRecord?) -> Bool {
        guard let record else { return false }
        if record.monitorPID != nil { return record.monitorIsAlive }
        return record.process.isAlive
    }

    /// Runs `body` until it returns or SIGINT, SIGTERM or SIGHUP arrives (which cancel it and
    /// end the command normally: the VM is not ours to stop).
    static func untilInterrupted(_ body: sending @escaping () async -> Void) async {
        try? await Interrupts.catching().cancelling { await body() }
    }

    /// The fallback for VMs without monitor files: attach (becoming the VM's driver for a
    /// moment) and print the lines its console holds.
    private func printAttached(configuration: DriverConfiguration) async throws {
        let logger = global.makeLogger(label: "microvm.logs")
        let machine = try await VMs.attach(id, configuration: configuration, logger: logger)
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
        await Self.untilInterrupted {
            for await line in lines where line.index >= start {
                if Task.isCancelled { break }
                Output.line(line.text)
            }
        }
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
