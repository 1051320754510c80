import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// A warm pool of real VMs restored from a snapshot of the test guest.
@Suite("Warm pool end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct WarmPoolEndToEndTests {
    @Test("Pooled VMs wait paused; each handed out carries on from the snapshot; the pool refills; shutdown leaves only what was handed out", arguments: [(SandboxPolicy.required, RestoreMemory.file), (.disabled, .file), (.required, .lazy)])
    func pool(policy: SandboxPolicy, memory: RestoreMemory) async throws {
        try await EndToEnd.withDriver(policy, name: "pool-\(policy.rawValue)-\(memory.rawValue)") { configuration, assets, directory in
            let tag = "\(policy.rawValue.prefix(3))-\(memory.rawValue.prefix(1))-\(getpid())"
            let source = try await MicroVM.run(EndToEnd.spec(assets, id: "pool-src-\(tag)"), configuration: configuration, logger: EndToEnd.logger)
            let (snapshot, atSnapshot) = try await EndToEnd.using(source) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(10))
                let snapshot = try await vm.snapshot(to: FilePath(directory + "/snapshot"))
                let count = await SnapshotTests.lastHeartbeat(vm.console)
                await vm.kill()
                return (snapshot, count)
            }

            let pool = try WarmPool(
                snapshot: snapshot, size: 2, idPrefix: "pool-\(tag)", provider: FirecrackerProvider(configuration: configuration, logger: EndToEnd.logger, restoreMemory: memory),
                logger: EndToEnd.logger)
            do {
                try await pool.start()
                #expect(await pool.statistics.ready == 2)
                let first = try await pool.acquire()
                #expect(first.id.rawValue.hasPrefix("pool-\(tag)-"))
                // A lazily restored pooled VM is served by this process, page by page.
                #expect((first.lazyMemory != nil) == (memory == .lazy))
                try await SnapshotTests.expectCarriesOn(first, after: atSnapshot, "first from the pool")
                let second = try await pool.acquire()
                try await SnapshotTests.expectCarriesOn(second, after: atSnapshot, "second from the pool")
                // Both were taken: the filler restores two more, paused.
                for _ in 0..<500 where await pool.statistics.ready < 2 { try await Task.sleep(for: .milliseconds(10)) }
                let statistics = await pool.statistics
                #expect(statistics.ready == 2 && statistics.handedOut == 2 && statistics.coldRestores == 0, "\(statistics)")
                let lastError = await pool.lastError
                #expect(statistics.failedRestores == 0, "\(String(describing: lastError))")
                // The third comes from the refilled pool.
                let third = try await pool.acquire()
                try await SnapshotTests.expectCarriesOn(third, after: atSnapshot, "third from the pool")
                if memory == .lazy { #expect((third.lazyMemory?.statistics.pagesServed ?? 0) > 0) }
            } catch {
                await pool.shutdown()
                throw error
            }
            await pool.shutdown()
            await #expect(throws: MicroVMError.self) { _ = try await pool.acquire() }
        }
    }
}
