import FirecrackerAPI
import Foundation
import MicroVM
import MicroVMHost
import SystemPackage
import Testing

/// The VM handle against the real Firecracker and jailer, jailed (`required`) and unjailed
/// (`disabled`), with the project's test guest. Every test checks that nothing is left.
@Suite("MicroVM lifecycle end to end", .serialized, .enabled(if: EndToEnd.enabled))
struct MicroVMLifecycleTests {
    static let policies: [SandboxPolicy] = [.required, .disabled]

    @Test("create, start, pause, resume, console both ways, metrics, log, stop: every state checked", arguments: policies)
    func fullLifecycle(policy: SandboxPolicy) async throws {
        let tap = try TapDevice.create(name: EndToEnd.tapName("l\(policy.rawValue.prefix(1))"))
        defer {
            try? tap.remove()
            #expect(!TapDevice.exists(name: tap.name), "the test's TAP device was left behind")
        }
        try await EndToEnd.withDriver(policy, name: "life-\(policy.rawValue)") { configuration, assets, _ in
            var spec = EndToEnd.spec(assets, id: "life-\(policy.rawValue)-\(getpid())")
            spec.drives = [
                DriveSpec(id: "rootfs", path: assets.rootfsImage, root: true),
                DriveSpec(id: "data", path: assets.dataImage, readOnly: true),
            ]
            spec.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: tap.name, mac: "06:00:ac:10:00:02")]
            spec.logging = .init(level: .info, metrics: true)
            let vm = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                #expect(vm.isSandboxed == (policy == .required))
                #expect(await vm.state == .created)
                #expect(try await vm.client.describeInstance().state == .notStarted)
                let config = try await vm.client.getVMConfiguration()
                #expect(config.bootSource?.kernelImagePath == vm.vmmPath("/kernel"))
                #expect(config.bootSource?.bootArgs == spec.boot.args.joined(separator: " "))
                #expect(config.machineConfig?.memSizeMiB == 64)
                let root = try #require(config.drives?.first { $0.driveId == "rootfs" })
                #expect(root.pathOnHost == vm.vmmPath("/drives/rootfs") && root.isRootDevice && root.isReadOnly == false)
                #expect(config.drives?.first { $0.driveId == "data" }?.isReadOnly == true)
                #expect(config.networkInterfaces?.first?.hostDevName == tap.name)

                try await vm.start()
                #expect(await vm.state == .running)
                let banner = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                #expect(banner.text == "microvm-guest: banner version=1 mode=normal heartbeat_ms=100")
                _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(5))

                try await vm.pause()
                #expect(await vm.state == .paused)
                #expect(try await vm.client.describeInstance().state == .paused)
                // The record follows in the background; recordWritten() waits for it.
                await vm.recordWritten()
                #expect(try vm.stateStore.read(id: vm.id.rawValue).state == .paused)
                let last = await vm.console.nextLineIndex
                try await Task.sleep(for: .milliseconds(500))
                let whilePaused = await vm.console.recentLines.filter { $0.index >= last && $0.text.contains("heartbeat") }
                #expect(whilePaused.isEmpty, "the guest ran while paused: \(whilePaused)")
                try await vm.resume()
                #expect(await vm.state == .running)
                await vm.recordWritten()
                #expect(try vm.stateStore.read(id: vm.id.rawValue).state == .running)
                _ = try await vm.console.waitForLine(after: last, timeout: .seconds(2), "heartbeat after resume") { $0.contains("heartbeat") }

                vm.write("hello from the host\n")
                _ = try await vm.console.waitForLine(containing: "microvm-guest: echo hello from the host", timeout: .seconds(3))

                try await vm.client.flushMetrics()
                let metricsPath = try #require(vm.metricsPath)
                let metrics = try String(contentsOfFile: metricsPath.string, encoding: .utf8)
                let lastMetrics = try #require(metrics.split(separator: "\n").last)
                #expect((try JSONSerialization.jsonObject(with: Data(lastMetrics.utf8)) as? [String: Any])?["api_server"] != nil)
                #expect(await vm.firecrackerLog.recentLines.contains { $0.message.contains("Running Firecracker v1.12.1") })

                let reason = await vm.stop(grace: .seconds(5))
                #expect(reason.kind == .guestShutdown && reason.exit == .exited(code: 0), "\(reason)")
                #expect(await vm.state == .stopped(reason))
                #expect(await vm.console.recentLines.contains { $0.text == "microvm-guest: goodbye" })
                #expect(await vm.console.recentLines.allSatisfy { !EndToEnd.looksLikeFirecrackerLog($0.text) })
                #expect(await vm.teardown?.isComplete == true)
                #expect(!FileManager.default.fileExists(atPath: vm.layout.jailDirectory.string))
                await #expect {
                    try await vm.pause()
                } throws: { error in
                    guard case .invalidState(_, "pause", .stopped, ["running"]) = error as? MicroVMError else { return false }
                    return true
                }
            }
        }
    }

    @Test("The lifecycle state machine: the same rules as the in-memory twin", arguments: policies)
    func stateMachine(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "sm-\(policy.rawValue)") { configuration, assets, directory in
            let provider = FirecrackerProvider(configuration: configuration, logger: EndToEnd.logger)
            let violations = await StateMachineConformance.violations(
                of: provider, spec: EndToEnd.spec(assets, id: "sm-\(policy.rawValue.prefix(3))-\(getpid())"),
                scratchDirectory: FilePath(directory))
            #expect(violations.isEmpty, "\(violations)")
        }
    }

    @Test("A failure at each step of create removes everything done so far and names the step", arguments: policies)
    func rollback(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "rb-\(policy.rawValue)") { configuration, assets, directory in
            let id = "rb-\(policy.rawValue.prefix(3))-\(getpid())"
            // Validation: nothing touched, every problem named.
            var bad = EndToEnd.spec(assets, id: id)
            bad.drives = [DriveSpec(id: "root fs", path: directory + "/missing.img")]
            bad.machine.memoryMiB = 0
            await #expect {
                try await MicroVM.create(bad, configuration: configuration, logger: EndToEnd.logger)
            } throws: { error in
                guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                return Set(problems.map(\.field)) == ["drives[0].id", "drives[0].path", "machine.memory_mib"]
            }

            // Launch: a Firecracker binary that cannot run (jailed: the jailer's own complaint).
            var broken = configuration
            let fake = directory + "/firecracker"
            _ = FileManager.default.createFile(atPath: fake, contents: Data("not a program".utf8), attributes: [.posixPermissions: 0o755])
            broken.jailer.firecrackerBinary = FilePath(fake)
            await #expect {
                try await MicroVM.run(EndToEnd.spec(assets, id: id), configuration: broken, logger: EndToEnd.logger)
            } throws: { error in
                guard case .createFailed(_, let step, _, _) = error as? MicroVMError else { return false }
                return step == "launching Firecracker" || step == "waiting for Firecracker's API"
            }
            // No Firecracker binary at all: named before anything is made, jailed (the preflight)
            // or not.
            broken.jailer.firecrackerBinary = FilePath(directory + "/no-firecracker")
            await #expect {
                try await MicroVM.run(EndToEnd.spec(assets, id: id), configuration: broken, logger: EndToEnd.logger)
            } throws: { error in
                switch error as? MicroVMError {
                case .sandbox(_, .firecrackerMissing(let path, "no such file"))?: return path.hasSuffix("/no-firecracker")
                case .sandbox(_, .sandboxUnavailable(let problems))?: return problems.contains { if case .firecrackerMissing = $0 { true } else { false } }
                default: return false
                }
            }

            // Staging, after validation: a writable drive copied onto a full filesystem (a 1 MiB
            // tmpfs as the chroot base). The step and the system's words are named; the VM's
            // directory and record are removed and no Firecracker runs.
            if policy == .disabled {
                let small = directory + "/small-base"
                try FileManager.default.createDirectory(atPath: small, withIntermediateDirectories: true)
                try #require(mount("tmpfs", small, "tmpfs", 0, "size=1m") == 0, "mount tmpfs: errno \(errno)")
                defer {
                    umount2(small, Int32(MNT_DETACH))
                    rmdir(small)
                }
                var full = configuration
                full.jailer.chrootBase = FilePath(small)
                // Written out in full: a sparse image's copy would fit.
                let image = directory + "/large.img"
                _ = FileManager.default.createFile(atPath: image, contents: Data(repeating: 0xA5, count: 2 << 20))
                var large = EndToEnd.spec(assets, id: id)
                large.drives = [DriveSpec(id: "data", path: image, readOnly: false)]
                await #expect {
                    try await MicroVM.run(large, configuration: full, logger: EndToEnd.logger)
                } throws: { error in
                    guard case .createFailed(_, let step, let cause, _) = error as? MicroVMError else { return false }
                    return step == "staging files" && "\(cause)".contains("No space left on device")
                }
                let left = (try? FileManager.default.subpathsOfDirectory(atPath: small))?.filter { $0.split(separator: "/").count >= 2 } ?? []
                #expect(left.isEmpty, "VM directories left behind: \(left)")
            }

            // A TAP that does not exist, which a jailed VMM (the jail's user) cannot make: named
            // before anything runs, rather than Firecracker's "Open tap device failed".
            if policy == .required {
                var missing = EndToEnd.spec(assets, id: id)
                missing.networkInterfaces = [NetworkInterfaceSpec(id: "eth0", tap: EndToEnd.tapName("m0"))]
                await #expect {
                    try await MicroVM.create(missing, configuration: configuration, logger: EndToEnd.logger)
                } throws: { error in
                    guard case .invalidSpec(_, let problems) = error as? MicroVMError else { return false }
                    return problems.map(\.field) == ["network_interfaces[0].tap"] && problems[0].hint?.contains("ip tuntap add") == true
                }
            }

            // Configure: Firecracker refuses a request (two interfaces with one MAC, which the
            // spec does not forbid); the step and Firecracker's fault message are kept.
            let taps = try ["r0", "r1"].map { try TapDevice.create(name: EndToEnd.tapName($0), owner: policy == .required ? EndToEnd.uid : nil) }
            defer { for tap in taps { try? tap.remove() } }
            var refused = EndToEnd.spec(assets, id: id)
            refused.networkInterfaces = [
                NetworkInterfaceSpec(id: "eth0", tap: EndToEnd.tapName("r0"), mac: "06:00:00:00:00:01"),
                NetworkInterfaceSpec(id: "eth1", tap: EndToEnd.tapName("r1"), mac: "06:00:00:00:00:01"),
            ]
            await #expect {
                let vm = try await MicroVM.create(refused, configuration: configuration, logger: EndToEnd.logger)
                await vm.kill()
            } throws: { error in
                guard case .createFailed(_, let step, let cause, _) = error as? MicroVMError,
                    case .api(_, _, .api(400, let message, _, _))? = cause as? MicroVMError
                else { return false }
                return step.hasPrefix("configuring network interface") && !message.isEmpty
            }
            #expect(!TapDevice.exists(name: EndToEnd.tapName("m0")))
        }
    }

    @Test("Cancelling the task of run or create at any moment: a cancellation error and nothing left, or a VM that came up first", arguments: policies)
    func cancelledCreation(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "cx-\(policy.rawValue)") { configuration, assets, _ in
            var outcomes: [String] = []
            for (round, delay) in [0, 300, 1000, 2000, 4000, 7000, 10000, 15000, 20000, 30000, 45000, 60000, 90000, 150000].enumerated() {
                let spec = EndToEnd.spec(assets, id: "cx-\(policy.rawValue.prefix(3))-\(getpid())-\(round)")
                let creating = Task { () throws(MicroVMError) -> MicroVM in
                    round % 2 == 0
                        ? try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                        : try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
                }
                try await Task.sleep(for: .microseconds(delay))
                creating.cancel()
                switch await creating.result {
                case .success(let vm):
                    outcomes.append("created")
                    await vm.kill()
                case .failure(let failure):
                    let error = try #require(failure as? MicroVMError)
                    #expect(error.isCancellation, "round \(round) (\(delay) µs): \(error)")
                    #expect(error.description.contains("create cancelled while"), "\(error)")
                    outcomes.append("cancelled \(error)")
                }
                #expect(MicroVM.list(configuration: configuration).isEmpty, "round \(round) left a record")
            }
            #expect(outcomes.contains { $0.hasPrefix("cancelled") }, "\(outcomes)")
        }
    }

    @Test("What the VMM (or the jailer) wrote on stderr before it exited explains the failed create", arguments: policies)
    func standardErrorExplainsExit(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "stderr-\(policy.rawValue)") { configuration, assets, directory in
            // A "firecracker" that complains and exits. Jailed, it cannot even start (the jail
            // has no /bin/sh): the jailer's own complaint explains that.
            var broken = configuration
            let fake = directory + "/firecracker"
            try "#!/bin/sh\necho 'firecracker: no VM today' >&2\nexit 3\n".write(toFile: fake, atomically: true, encoding: .utf8)
            chmod(fake, 0o755)
            broken.jailer.firecrackerBinary = FilePath(fake)
            await #expect {
                try await MicroVM.run(EndToEnd.spec(assets, id: "stderr-\(policy.rawValue)-\(getpid())"), configuration: broken, logger: EndToEnd.logger)
            } throws: { error in
                if policy == .disabled {
                    guard case .createFailed(_, _, _, let exit?) = error as? MicroVMError else { return false }
                    return exit.exit == .exited(code: 3) && exit.evidence.contains { $0.contains("no VM today") }
                }
                guard case .createFailed(_, _, _, let exit?) = error as? MicroVMError else { return false }
                return exit.evidence.contains { $0.contains("Failed to exec into Firecracker") }
            }
        }
    }

    @Test("A custom CPU template: booted from the config file (a template file Firecracker reads) and through the API; a template Firecracker refuses fails the create in its words", arguments: policies)
    func customCPUTemplate(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "cputmpl-\(policy.rawValue)") { configuration, assets, _ in
            func template(_ bitmap: String) -> CpuConfig {
                CpuConfig(cpuidModifiers: [
                    CpuidLeafModifier(leaf: "0x1", subleaf: "0x0", flags: 0, modifiers: [CpuidRegisterModifier(register: .ecx, bitmap: bitmap)])
                ])
            }
            // Leaf 1, ECX bit 31 (hypervisor present) forced on: what the guest sees anyway.
            let good = template("0b1" + String(repeating: "x", count: 31))
            for (index, viaAPI) in [false, true].enumerated() {
                var spec = EndToEnd.spec(assets, id: "cputmpl-\(index)-\(policy.rawValue.prefix(3))-\(getpid())")
                spec.cpuConfig = good
                let vm =
                    viaAPI
                    ? try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
                    : try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(vm) { vm in
                    if viaAPI { try await vm.start() }
                    _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 1", timeout: .seconds(10))
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "\(reason)")
                }
            }
            // A bitmap Firecracker cannot parse: its own words, by either way, and nothing left.
            for (index, viaAPI) in [false, true].enumerated() {
                var spec = EndToEnd.spec(assets, id: "cputbad-\(index)-\(policy.rawValue.prefix(3))-\(getpid())")
                spec.cpuConfig = template("0b12" + String(repeating: "x", count: 30))
                await #expect {
                    if viaAPI {
                        _ = try await MicroVM.create(spec, configuration: configuration, logger: EndToEnd.logger)
                    } else {
                        _ = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                    }
                } throws: { error in
                    "\(error)".contains("as a bitmap")
                }
                #expect(MicroVM.list(configuration: configuration).isEmpty)
            }
        }
    }

    @Test("Readiness: from Firecracker's log at Info, by GET / when its log is quieter; the API answers either way", arguments: [LogLevel.info, .warning])
    func readiness(vmmLevel: LogLevel) async throws {
        try await EndToEnd.withDriver(.disabled, name: "ready-\(vmmLevel.rawValue)") { configuration, assets, _ in
            var spec = EndToEnd.spec(assets, id: "ready-\(vmmLevel.rawValue.lowercased())-\(getpid())")
            spec.logging = .init(vmmLevel: vmmLevel)
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                // Returned: the guest runs and the API answers at once, without a retry.
                #expect(try await vm.client.describeInstance().state == .running)
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                #expect(await vm.stop().kind == .guestShutdown)
            }
            var createdSpec = EndToEnd.spec(assets, id: "ready-c-\(vmmLevel.rawValue.lowercased())-\(getpid())")
            createdSpec.logging = .init(vmmLevel: vmmLevel)
            let created = try await MicroVM.create(createdSpec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(created) { vm in
                #expect(try await vm.client.describeInstance().state == .notStarted)
                try await vm.start()
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                #expect(await vm.stop().kind == .guestShutdown)
            }
        }
    }

    @Test("A guest that ignores Ctrl-Alt-Del is killed after the grace period", arguments: policies)
    func stopEscalation(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "esc-\(policy.rawValue)") { configuration, assets, _ in
            let spec = EndToEnd.spec(assets, id: "esc-\(policy.rawValue.prefix(3))-\(getpid())", args: ["console=ttyS0", "microvm.mode=hang"])
            let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(vm) { vm in
                try await Task.sleep(for: .milliseconds(100))
                let start = ContinuousClock.now
                let reason = await vm.stop(grace: .milliseconds(400))
                #expect(ContinuousClock.now - start >= .milliseconds(400))
                #expect(reason.kind == .killedByDriver, "\(reason)")
                let expected: VMMExit = policy == .required ? .signaled(signal: SIGKILL) : .signaled(signal: SIGTERM)
                #expect(reason.exit == expected)
                #expect(await vm.state == .stopped(reason))
            }
            // A VMM that does not answer at all (SIGSTOPped): the grace bounds the API calls too,
            // not the client's 10 s timeout.
            let frozen = try await MicroVM.run(
                EndToEnd.spec(assets, id: "frz-\(policy.rawValue.prefix(3))-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            try await EndToEnd.using(frozen) { vm in
                _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(5))
                kill(vm.pid, SIGSTOP)
                let start = ContinuousClock.now
                let reason = await vm.stop(grace: .milliseconds(500))
                #expect(ContinuousClock.now - start < .seconds(3), "\(ContinuousClock.now - start)")
                #expect(reason.kind == .killedByDriver, "\(reason)")
            }
        }
    }

    @Test("How a VM ended: guest shutdown, triple fault, KVM error, killed from outside", arguments: policies)
    func exitReasons(policy: SandboxPolicy) async throws {
        try await EndToEnd.withDriver(policy, name: "why-\(policy.rawValue)") { configuration, assets, _ in
            // Firecracker 1.12.1 exits 1 after a KVM internal error, but now and then 0 (its two
            // "Vmm is stopping" paths race; seen in about 1 of 3 jailed runs), and now and then it
            // hangs after the stop until the driver ends it (SIGKILL): only the log tells.
            let cases: [(String, ExitReason.Kind, Set<VMMExit>)] = [
                ("exit", .guestShutdown, [.exited(code: 0)]),
                ("triple-fault", .tripleFault, [.exited(code: 0)]),
                ("crash", .kvmError, [.exited(code: 1), .exited(code: 0), .signaled(signal: SIGKILL)]),
            ]
            for (mode, kind, exits) in cases {
                let spec = EndToEnd.spec(assets, id: "why-\(mode)-\(getpid())", args: ["console=ttyS0", "microvm.mode=\(mode)"])
                let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                let reason = try #require(await vm.waitForExit(timeout: .seconds(10)))
                #expect(reason.kind == kind, "\(mode): \(reason)")
                #expect(exits.contains(reason.exit), "\(mode): \(reason)")
                #expect(await vm.state.name == (kind == .guestShutdown ? "stopped" : "failed"))
                if kind != .guestShutdown { #expect(!reason.evidence.isEmpty, "\(mode): Firecracker's words are kept") }
            }
            let vm = try await MicroVM.run(EndToEnd.spec(assets, id: "why-kill-\(getpid())"), configuration: configuration, logger: EndToEnd.logger)
            _ = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
            kill(vm.pid, SIGKILL)
            let reason = try #require(await vm.waitForExit(timeout: .seconds(10)))
            #expect(reason.kind == .killed && reason.exit == .signaled(signal: SIGKILL), "\(reason)")
            #expect(await vm.state == .failed(reason))
        }
    }

    @Test("50 launches in a row: the console never holds a line of Firecracker's log")
    func consoleIsTheGuestsAlone() async throws {
        try await EndToEnd.withDriver(.required, name: "purity") { configuration, assets, _ in
            for round in 0..<50 {
                var spec = EndToEnd.spec(assets, id: "pure-\(round)-\(getpid())", args: ["console=ttyS0", "microvm.heartbeat_ms=0"])
                spec.sandbox = round % 2 == 0 ? .required : .disabled
                let vm = try await MicroVM.run(spec, configuration: configuration, logger: EndToEnd.logger)
                try await EndToEnd.using(vm) { vm in
                    let banner = try await vm.console.waitForLine(containing: "microvm-guest: banner", timeout: .seconds(10))
                    #expect(banner.text == "microvm-guest: banner version=1 mode=normal heartbeat_ms=0", "round \(round)")
                    let reason = await vm.stop(grace: .seconds(5))
                    #expect(reason.kind == .guestShutdown, "round \(round): \(reason)")
                    let lines = await vm.console.recentLines.map(\.text)
                    #expect(lines == ["microvm-guest: banner version=1 mode=normal heartbeat_ms=0", "microvm-guest: goodbye"], "round \(round)")
                }
            }
        }
    }

    @Test("10 jailed VMs at once: all boot, all stop cleanly, nothing left")
    func concurrentVMs() async throws {
        try await EndToEnd.withDriver(.required, name: "many") { configuration, assets, _ in
            let reasons = try await withThrowingTaskGroup(of: ExitReason.self) { group in
                for index in 0..<10 {
                    group.addTask {
                        let vm = try await MicroVM.run(
                            EndToEnd.spec(assets, id: "many-\(index)-\(getpid())", memoryMiB: 32), configuration: configuration,
                            logger: EndToEnd.logger)
                        return try await EndToEnd.using(vm) { vm in
                            _ = try await vm.console.waitForLine(containing: "microvm-guest: heartbeat 2", timeout: .seconds(20))
                            vm.write("vm \(index)\n")
                            _ = try await vm.console.waitForLine(containing: "echo vm \(index)", timeout: .seconds(10))
                            return await vm.stop(grace: .seconds(10))
                        }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(reasons.count == 10)
            #expect(reasons.allSatisfy { $0.kind == .guestShutdown }, "\(reasons)")
        }
    }
}
