import FirecrackerAPI
import Foundation
import Logging
import Metrics
import MetricsTestKit
import MicroVM
import Synchronization
import SystemPackage
import Testing

/// The pool's bookkeeping against the in-memory twin (the real VMs: `WarmPoolEndToEndTests`).
@Suite("Warm pool")
struct WarmPoolTests {
    /// The twin, whose restores fail while `failing` is set.
    final class FlakyProvider: MicroVMProvider {
        let inner = InMemoryProvider()
        let failing = Mutex(false)
        let restores = Mutex(0)
        /// Every VM restored, in order.
        let made = Mutex<[InMemoryMicroVM]>([])

        func create(_ spec: VMSpec) async throws(MicroVMError) -> InMemoryMicroVM { try await inner.create(spec) }
        func run(_ spec: VMSpec) async throws(MicroVMError) -> InMemoryMicroVM { try await inner.run(spec) }
        func restore(_ snapshot: Snapshot, id: String, resume: Bool, networkOverrides: [String: String]) async throws(MicroVMError)
            -> InMemoryMicroVM
        {
            restores.withLock { $0 += 1 }
            if failing.withLock({ $0 }) {
                throw .snapshotFailed(id: id, step: "loading the snapshot", detail: "made to fail")
            }
            let vm = try await inner.restore(snapshot, id: id, resume: resume, networkOverrides: networkOverrides)
            made.withLock { $0.append(vm) }
            return vm
        }
    }

    /// A snapshot of a twin VM, in a scratch directory removed after `body`.
    static func withSnapshot(_ body: (Snapshot, FlakyProvider) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "microvm-pool-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let provider = FlakyProvider()
        let source = try await provider.run(VMSpec(id: "pool-source", machine: .init(vcpus: 1, memoryMiB: 64), boot: .init(kernel: "/images/vmlinux")))
        let snapshot = try await source.snapshot(to: FilePath(directory), type: .full)
        await source.kill()
        try await body(snapshot, provider)
    }

    /// The pool's own failures are what these tests cause: not printed.
    static var quiet: Logger {
        var logger = Logger(label: "pool-test")
        logger.logLevel = .critical
        return logger
    }

    /// Waits (a short poll) until the pool holds `count` ready VMs.
    static func waitUntilReady<P>(_ pool: WarmPool<P>, count: Int) async throws {
        for _ in 0..<500 {
            if await pool.statistics.ready == count { return }
            try await Task.sleep(for: .milliseconds(2))
        }
        Issue.record("the pool never held \(count) ready VMs: \(await pool.statistics)")
    }

    @Test("start fills the pool with paused VMs; acquire hands one out running and the pool refills")
    func fillAndRefill() async throws {
        try await Self.withSnapshot { snapshot, provider in
            let metrics = TestMetrics()
            let pool = try WarmPool(snapshot: snapshot, size: 3, idPrefix: "web", provider: provider, logger: Self.quiet, metricsFactory: metrics)
            try await pool.start()
            #expect(await pool.statistics.ready == 3)
            #expect(provider.inner.liveIDs.count == 3)
            #expect(provider.inner.liveIDs.allSatisfy { $0.hasPrefix("web-") })

            let first = try await pool.acquire()
            #expect(await first.state == .running)
            let second = try await pool.acquire()
            #expect(first.id != second.id)
            try await Self.waitUntilReady(pool, count: 3)
            #expect(provider.inner.liveIDs.count == 5)
            let statistics = await pool.statistics
            #expect(statistics.handedOut == 2 && statistics.coldRestores == 0 && statistics.discarded == 0)
            // The same figures in swift-metrics, with the pool as dimension.
            let dimensions = [("pool", "web")]
            #expect(try metrics.expectCounter("microvm_pool_handed_out", dimensions).totalValue == 2)
            #expect(try metrics.expectGauge("microvm_pool_ready", dimensions).lastValue == 3)
            #expect(try metrics.expectTimer("microvm_pool_acquire", dimensions).values.count == 2)

            // Shut down: the paused ones go, the handed-out ones stay the caller's.
            await pool.shutdown()
            #expect(provider.inner.liveIDs == [first.id.rawValue, second.id.rawValue])
            await #expect {
                _ = try await pool.acquire()
            } throws: { error in
                guard case .poolClosed("web") = error as? MicroVMError else { return false }
                return true
            }
            await first.kill()
            await second.kill()
        }
    }

    @Test("A pooled VM that ended meanwhile is discarded and the next one handed out")
    func endedVMsAreSkipped() async throws {
        try await Self.withSnapshot { snapshot, provider in
            let pool = try WarmPool(snapshot: snapshot, size: 2, provider: provider, logger: Self.quiet)
            try await pool.start()
            // The oldest pooled VM's VMM crashes while it waits.
            let (oldest, next) = provider.made.withLock { ($0[0], $0[1]) }
            await oldest.guestExits(.vmmError, exit: .exited(code: 1))
            let vm = try await pool.acquire()
            #expect(vm === next)
            #expect(await vm.state == .running)
            #expect(await pool.statistics.discarded == 1)
            await vm.kill()
            await pool.shutdown()
            #expect(provider.inner.liveIDs.isEmpty)
        }
    }

    @Test("An empty pool restores for the caller; failed refills are counted, kept, retried, and stop at shutdown")
    func emptyPoolAndFailures() async throws {
        try await Self.withSnapshot { snapshot, provider in
            let pool = try WarmPool(snapshot: snapshot, size: 1, provider: provider, logger: Self.quiet)
            try await pool.start()
            provider.failing.withLock { $0 = true }
            let warm = try await pool.acquire()
            // The refill fails: the next caller gets the restore's own error, not a hang.
            await #expect {
                _ = try await pool.acquire()
            } throws: { error in
                guard case .snapshotFailed(_, "loading the snapshot", _) = error as? MicroVMError else { return false }
                return true
            }
            for _ in 0..<500 where await pool.statistics.failedRestores == 0 { try await Task.sleep(for: .milliseconds(2)) }
            #expect(await pool.statistics.failedRestores >= 1)
            #expect(await pool.lastError != nil)
            #expect(await pool.statistics.coldRestores == 1)
            // The host recovers: the filler's retry refills the pool and clears the error.
            provider.failing.withLock { $0 = false }
            try await Self.waitUntilReady(pool, count: 1)
            #expect(await pool.lastError == nil)
            await pool.shutdown()
            let restoresAtShutdown = provider.restores.withLock { $0 }
            try await Task.sleep(for: .milliseconds(300))
            #expect(provider.restores.withLock { $0 } == restoresAtShutdown, "no restore after shutdown")
            #expect(provider.inner.liveIDs == [warm.id.rawValue])
            await warm.kill()
        }
    }

    @Test("Concurrent acquires never hand out one VM twice; warm and cold takes add up")
    func concurrentAcquires() async throws {
        try await Self.withSnapshot { snapshot, provider in
            let pool = try WarmPool(snapshot: snapshot, size: 3, provider: provider, logger: Self.quiet)
            try await pool.start()
            let vms = try await withThrowingTaskGroup(of: InMemoryMicroVM.self) { group in
                for _ in 0..<20 { group.addTask { try await pool.acquire() } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(Set(vms.map(\.id)).count == 20)
            for vm in vms { #expect(await vm.state == .running) }
            let statistics = await pool.statistics
            #expect(statistics.handedOut + statistics.coldRestores == 20, "\(statistics)")
            await pool.shutdown()
            #expect(provider.inner.liveIDs == Set(vms.map(\.id.rawValue)))
            for vm in vms { await vm.kill() }
            #expect(provider.inner.liveIDs.isEmpty)
        }
    }

    @Test("Bad settings are refused before anything is restored")
    func settings() async throws {
        try await Self.withSnapshot { snapshot, provider in
            #expect {
                _ = try WarmPool(snapshot: snapshot, size: 0, provider: provider, logger: Self.quiet)
            } throws: { error in
                guard case .invalidSpec(nil, let problems) = error as? MicroVMError else { return false }
                return problems.map(\.field) == ["size"]
            }
            #expect {
                _ = try WarmPool(snapshot: snapshot, size: 1, idPrefix: "no/slash", provider: provider, logger: Self.quiet)
            } throws: { error in
                guard case .invalidSpec(nil, let problems) = error as? MicroVMError else { return false }
                return problems.map(\.field) == ["idPrefix"] && "\(error)".contains("no/slash")
            }
            #expect(provider.restores.withLock { $0 } == 0)
        }
    }
}
