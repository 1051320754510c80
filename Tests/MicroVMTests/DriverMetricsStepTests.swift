import MetricsTestKit
import MicroVMHost
import Testing

@testable import MicroVM

/// A failed launch's `step` dimension takes a few fixed values: never a drive's or an
/// interface's id, which would give a metrics backend a new series per VM.
@Suite("The driver's metrics: a failed launch's step")
struct DriverMetricsStepTests {
    struct Failure: Error {}

    @Test("Steps that name a device are counted under its kind; a cancellation is its own step; other errors by their kind")
    func steps() {
        let failed = { (step: String, cause: any Error) in MicroVMError.createFailed(id: "vm", step: step, cause: cause, exit: nil) }
        #expect(DriverMetrics.step(of: failed("configuring drive rootfs-7f3a", Failure())) == "configuring a drive")
        #expect(DriverMetrics.step(of: failed("configuring network interface eth9", Failure())) == "configuring a network interface")
        #expect(DriverMetrics.step(of: failed("staging files", Failure())) == "staging files")
        #expect(DriverMetrics.step(of: failed("staging files", CancellationError())) == "cancelled")
        #expect(DriverMetrics.step(of: .invalidSpec(id: "vm", problems: [])) == "validating the spec")
        #expect(DriverMetrics.step(of: .stateConflict(id: "vm", path: "/run/microvm/vm", detail: "")) == "claiming the id")
        #expect(DriverMetrics.step(of: .notFound(id: "vm", stateRoot: "/run/microvm")) == "other")
    }

    @Test("A configuration's metrics factory receives the figures and leaves its equality alone")
    func factoryInConfiguration() throws {
        let metrics = TestMetrics()
        let plain = DriverConfiguration(jailer: try JailerConfiguration(environment: [:]))
        var withMetrics = plain
        withMetrics.metricsFactory = metrics
        #expect(withMetrics == plain)
        withMetrics.metrics.launchFailed(mode: .restore, error: .invalidSpec(id: nil, problems: []))
        #expect(try metrics.expectCounter("microvm_vm_launch_failures", [("mode", "restore"), ("step", "validating the spec")]).totalValue == 1)
    }
}
