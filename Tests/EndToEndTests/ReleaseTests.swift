import Foundation
import MicroVM
import MicroVMHost
import Testing

/// A VM that has ended and is no longer referenced is gone from memory: its handle, console
/// and log are freed, so a long-running driver that launches VM after VM does not grow.
@Suite("Released VMs end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct ReleaseTests {
    @Test("After kill and the last reference, the VM, its console and its log are deallocated (jailed and unjailed)", arguments: [SandboxPolicy.required, .disabled])
    func handlesAreFreed(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "release-\(policy.rawValue)") { configuration, assets, _ in
            weak var handle: MicroVM?
            weak var console: Console?
            weak var log: FirecrackerLog?
            do {
                let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "release-\(policy.rawValue.prefix(3))-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
                handle = vm
                console = vm.console
                log = vm.firecrackerLog
                await vm.kill()
            }
            for _ in 0..<100 where handle != nil || console != nil || log != nil {
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(handle == nil, "the MicroVM handle is still alive")
            #expect(console == nil, "the console is still alive")
            #expect(log == nil, "Firecracker's log is still alive")
        }
    }
}
