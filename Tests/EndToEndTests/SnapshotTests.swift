import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// Snapshots of a running guest, full and diff, restored into new VMs that carry on.
@Suite("Snapshots end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct SnapshotTests {
    /// The number of the newest heartbeat on `console`.
    static func lastHeartbeat(_ console: Console) async -> Int {
        await console.recentLines.compactMap { line -> Int? in
            guard let range = line.text.range(of: "microvm-guest: heartbeat ") else { return nil }
            return Int(line.text[range.upperBound...])
        }.last ?? 0
    }

    /// Checks that a restored VM carries on: the next heartbeat after `count`, no new banner,
    /// serial input echoed, and a clean stop.
    static func expectCarriesOn(_ vm: MicroVM, after count: Int, _ label: String) async throws {
        try await EndToEnd.using(vm) { vm in
            #expect(await vm.state == .running, "\(label)")
            _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(count + 1)", timeout: .seconds(5))
            #expect(await vm.console.recentLines.allSatisfy { !$0.text.contains("banner") }, "\(label): the guest rebooted")
            vm.write("after restore\n")
            _ = try await vm.console.waitForLine(containing: "microvm-guest: echo after restore", timeout: .seconds(5))
            let reason = await vm.stop(grace: .seconds(5))
            #expect(reason.kind == .guestShutdown, "\(label): \(reason)")
        }
    }

    @Test("Full and diff snapshots of a running guest; restored into new VMs, the guest carries on", arguments: [SandboxPolicy.required, .disabled])
    func snapshotAndRestore(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "snap-\(policy.rawValue)") { configuration, assets, directory in
            let tag = "\(policy.rawValue.prefix(3))-\(getpid())"
            var spec = EndToEnd.spec(assets, id: "snap-src-\(tag)")
            spec.machine.trackDirtyPages = true
            spec.drives = [DriveSpec(id: "rootfs", path: assets.rootfsImage, root: true)]
            let source = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            let (full, diff, atFull, atDiff) = try await EndToEnd.using(source) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 3", timeout: .seconds(10))
                let full = try await vm.snapshot(to: FilePath(directory + "/full"), type: .full)
                let atFull = await Self.lastHeartbeat(vm.console)
                #expect(await vm.state == .running, "a running VM is resumed after its snapshot")
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(atFull + 2)", timeout: .seconds(5))
                let diff = try await vm.snapshot(to: FilePath(directory + "/diff"), type: .diff)
                let atDiff = await Self.lastHeartbeat(vm.console)
                try await vm.pause()
                let paused = try await vm.snapshot(to: FilePath(directory + "/paused"), type: .full)
                #expect(await vm.state == .paused, "a paused VM stays paused after its snapshot")
                #expect(paused.type == .full)
                await #expect {
                    _ = try await vm.snapshot(to: FilePath(directory + "/full"), type: .full)
                } throws: { error in
                    guard case .snapshotFailed(_, let step, _) = error as? MicroVMError else { return false }
                    return step.contains("checking")
                }
                #expect(await vm.stop().kind == .guestShutdown)
                return (full, diff, atFull, atDiff)
            }
            #expect(atDiff > atFull)
            for snapshot in [full, diff] {
                let names = Set(try FileManager.default.contentsOfDirectory(atPath: snapshot.directory))
                #expect(names == ["state", "memory", "drive-rootfs", Snapshot.descriptionFile])
                #expect(try Snapshot.load(from: FilePath(snapshot.directory)) == snapshot)
                #expect(snapshot.sandboxed == (policy == .required))
                // The driver's, read-only to the VM's user: every restore links these inodes.
                for path in [snapshot.statePath, snapshot.memoryPath] {
                    var status = stat()
                    #expect(stat(path.string, &status) == 0 && status.st_uid == geteuid() && status.st_mode & 0o777 == 0o644, "\(path)")
                }
            }
            // A diff is refused (its memory is mostly zeros), before anything is made.
            await #expect {
                _ = try await MicroVM.restore(diff, id: "snap-rawdiff-\(tag)", configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                return problems.contains { $0.field == "snapshot" && $0.message.contains("diff snapshot") }
            }
            if policy == .required {
                // A jailed VM's snapshot names in-jail paths: refused unjailed, before anything runs.
                var unjailed = configuration
                unjailed.policy = .disabled
                await #expect {
                    _ = try await MicroVM.restore(full, id: "snap-unjailed-\(tag)", configuration: unjailed, logger: EndToEnd.logger)
                } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.contains { $0.field == "snapshot" && $0.message.contains("jailed VM") }
                }
            }
            // The diff holds only what changed: far less data than the full memory.
            let fullSize = try FileManager.default.attributesOfItem(atPath: full.memoryPath.string)[.size] as? Int ?? 0
            #expect(fullSize == 64 << 20)

            try await Self.expectCarriesOn(
                try await MicroVM.restore(full, id: "snap-full-\(tag)", configuration: configuration, logger: EndToEnd.logger),
                after: atFull, "full")
            let merged = try await diff.applyingDiff(onto: full)
            #expect(merged.type == .full)
            try await Self.expectCarriesOn(
                try await MicroVM.restore(merged, id: "snap-diff-\(tag)", configuration: configuration, logger: EndToEnd.logger),
                after: atDiff, "diff merged onto full")

            // Restored paused: nothing runs until resumed.
            let paused = try await MicroVM.restore(
                full, id: "snap-paused-\(tag)", resume: false, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(paused) { vm in
                #expect(await vm.state == .paused)
                try await Task.sleep(for: .milliseconds(400))
                #expect(await Self.lastHeartbeat(vm.console) == 0)
                try await vm.resume()
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat \(atFull + 1)", timeout: .seconds(5))
                await vm.kill()
            }
        }
    }

    @Test("A diff snapshot without dirty page tracking is refused before anything is written (Firecracker 1.12)")
    func diffNeedsTracking() async throws {
        try await EndToEnd.withDriver(.disabled, name: "snapdiff") { configuration, assets, directory in
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "snap-nodirty-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                await #expect {
                    _ = try await vm.snapshot(to: FilePath(directory + "/diff"), type: .diff)
                } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.first?.field == "machine.track_dirty_pages"
                }
                #expect(!FileManager.default.fileExists(atPath: directory + "/diff"))
                #expect(await vm.state == .running)
                await vm.kill()
            }
        }
    }
}
