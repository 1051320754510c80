import ArgumentParser
import MicroVM

/// `microvm create`: a configured VM whose guest has not started.
struct CreateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "create",
        abstract: "Create a VM (Firecracker configured, guest not started) and print its id.",
        discussion: "Takes the same VM flags as `run`. `microvm start ID` boots it."
    )

    @OptionGroup var global: GlobalOptions
    @OptionGroup var vm: VMOptions

    func run() async throws {
        let logger = global.makeLogger(label: "microvm.create")
        let spec = try vm.spec()
        let configuration = try global.driverConfiguration(firecracker: vm.firecracker, jailer: vm.jailer, launches: true)
        // A Ctrl-C cancels the creation, which removes everything it made.
        let interrupts = Interrupts.catching()
        let machine = try await interrupts.cancelling {
            try await Progress.showing("create \(spec.id)", probe: Progress.driveCopies(spec, configuration: configuration)) {
                () async throws(MicroVMError) -> MicroVM in
                try await MicroVM.create(spec, configuration: configuration, logger: logger)
            }
        }
        try await interrupts.removeIfInterrupted(machine)
        Output.line(machine.id.rawValue)
    }
}
