import FirecrackerAPI
import Foundation
import MetricsTestKit
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// The driver's own swift-metrics figures, from real launches, stops, a snapshot and failed
/// launches: every label with the dimensions README documents, and nothing counted twice.
@Suite("The driver's metrics end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct DriverMetricsTests {
    @Test("Launches timed by mode and sandbox, failed launches by step, exits by reason, stops, snapshots, VMs supervised", arguments: [SandboxPolicy.required, .disabled])
    func driverMetrics(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "met-\(policy.rawValue)") { configuration, assets, directory in
            let metrics = TestMetrics()
            var configuration = configuration
            configuration.metricsFactory = metrics
            let sandbox = policy == .required ? "jailed" : "unjailed"
            let suffix = "\(policy.rawValue.prefix(3))-\(getpid())"

            // run: a guest that shuts down when asked, snapshotted on the way.
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "met-a-\(suffix)"), configuration: configuration, logger: EndToEnd.logger)
            let supervising = try metrics.expectGauge("microvm_vms").lastValue ?? 0
            let snapshot = try await EndToEnd.using(vm) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                let snapshot = try await vm.snapshot(to: FilePath(directory + "/snapshot"), type: .full)
                let reason = await vm.stop(grace: .seconds(5))
                #expect(reason.kind == .guestShutdown, "\(reason)")
                return snapshot
            }
            let runs = try metrics.expectTimer("microvm_vm_launch_duration", [("mode", "run"), ("sandbox", sandbox)])
            #expect(runs.values.count == 1 && runs.values.allSatisfy { $0 > 0 }, "\(runs.values)")
            #expect(try metrics.expectTimer("microvm_vm_snapshot_duration", [("type", "full")]).values.count == 1)
            #expect(try metrics.expectTimer("microvm_vm_stop_duration", [("outcome", "shutdown")]).values.count == 1)
            #expect(try metrics.expectCounter("microvm_vm_exits", [("reason", "guest-shutdown")]).totalValue == 1)
            #expect(try metrics.expectGauge("microvm_vms").lastValue == supervising - 1, "the VM that ended is still counted")

            // restore: into a new VM, killed.
            let restored = try await MicroVM.restore(snapshot, id: "met-r-\(suffix)", configuration: configuration, logger: EndToEnd.logger)
            await restored.kill()
            #expect(try metrics.expectTimer("microvm_vm_launch_duration", [("mode", "restore"), ("sandbox", sandbox)]).values.count == 1)

            // create, start: a guest that ignores Ctrl-Alt-Del, killed once the grace is over.
            let hanging = try await MicroVM.create(
                EndToEnd.spec(assets, id: "met-b-\(suffix)", args: ["console=ttyS0", "microvm.mode=hang"]), configuration: configuration,
                logger: EndToEnd.logger)
            try await EndToEnd.using(hanging) { vm in
                try await vm.start()
                _ = await vm.stop(grace: .milliseconds(300))
            }
            #expect(try metrics.expectTimer("microvm_vm_launch_duration", [("mode", "create"), ("sandbox", sandbox)]).values.count == 1)
            #expect(try metrics.expectTimer("microvm_vm_stop_duration", [("outcome", "killed")]).values.count == 1)
            #expect(try metrics.expectCounter("microvm_vm_exits", [("reason", "killed-by-driver")]).totalValue == 2)

            // Two launches that fail: a spec refused before the host is touched, and a
            // configuration Firecracker refuses (1.12.1 has no free page reporting).
            var missingKernel = EndToEnd.spec(assets, id: "met-c-\(suffix)")
            missingKernel.boot.kernel = directory + "/no-such-kernel"
            await #expect(throws: MicroVMError.self) { try await MicroVM.run(missingKernel, configuration: configuration, logger: EndToEnd.logger) }
            #expect(try metrics.expectCounter("microvm_vm_launch_failures", [("mode", "run"), ("step", "validating the spec")]).totalValue == 1)
            var refused = EndToEnd.spec(assets, id: "met-d-\(suffix)")
            refused.balloon = Balloon(amountMiB: 0, deflateOnOom: false, freePageReporting: true)
            let failure = await #expect(throws: MicroVMError.self) {
                try await MicroVM.run(refused, configuration: configuration, logger: EndToEnd.logger)
            }
            guard case .createFailed(_, let step, _, _)? = failure else {
                Issue.record("not a failed create: \(String(describing: failure))")
                return
            }
            #expect(try metrics.expectCounter("microvm_vm_launch_failures", [("mode", "run"), ("step", step)]).totalValue == 1, "\(step)")

            // Every teardown was complete, and nothing else was counted.
            #expect((try? metrics.expectCounter("microvm_vm_teardown_failures")) == nil)
            #expect(runs.values.count == 1)
        }
    }
}
