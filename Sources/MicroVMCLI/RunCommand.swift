import ArgumentParser
import Foundation
import MicroVM

/// `microvm run`: create and start a VM; its console in the foreground unless `-d`.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Create and start a VM (jailed by default); attach its console unless --detach.",
        discussion: """
            In the foreground the guest's console goes to standard output and standard input to \
            the guest's serial port. Ctrl-C (or SIGTERM) stops the VM gracefully: Ctrl-Alt-Del, \
            --stop-timeout seconds for the guest, then a kill. ctrl-p ctrl-q (--detach-keys) \
            detaches and leaves it running. The exit status is 0 when the VM stopped cleanly, 4 \
            when it failed (crash, triple fault, KVM error).

            Examples:
              microvm run --kernel vmlinux --boot-arg console=ttyS0 --memory 128
              microvm run -d -f vm.yaml --id web-1
            """
    )

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMOptions
    @OptionGroup var console: ConsoleOptions

    @Flag(name: [.short, .long], help: "Leave the VM running and print its id.")
    var detach = false

    @Option(name: .customLong("stop-timeout"), help: ArgumentHelp("Seconds the guest has to shut down after Ctrl-C.", valueName: "seconds"))
    var stopTimeout: Double = 5

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.run")
        let spec = try vm.spec()
        let keys = try console.detachSequence()
        let configuration = try global.driverConfiguration(firecracker: vm.firecracker, jailer: vm.jailer, launches: true)
        // From here until the end: a Ctrl-C while the VM is created cancels the creation
        // (everything made is removed); once its console is shown, it stops the VM.
        let interrupts = Interrupts.catching()
        let machine = try await interrupts.cancelling {
            try await Progress.showing("create \(spec.id)", probe: Progress.driveCopies(spec, configuration: configuration)) {
                () async throws(MicroVMError) -> MicroVM in
                try await MicroVM.run(spec, configuration: configuration, logger: logger)
            }
        }
        if detach {
            try await interrupts.removeIfInterrupted(machine)
            Output.line(machine.id.rawValue)
            return
        }
        Output.note("[microvm] VM \(machine.id) running \(machine.isSandboxed ? "jailed" : "UNJAILED") (pid \(machine.pid)); Ctrl-C stops it, \(console.detachKeys) detaches")
        let end = await ConsoleSession.attach(
            machine, replay: true, forwardInput: !console.noStdin, detachKeys: keys, interrupts: interrupts,
            onInterrupt: .stop(grace: .seconds(parsing: stopTimeout)))
        try ConsoleSession.finish(end, vm: machine)
    }
}
