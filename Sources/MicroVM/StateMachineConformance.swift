public import SystemPackage

/// The lifecycle rules every ``MicroVMProvider`` must follow, as one check: the real driver and
/// the in-memory twin both pass it, and so must any fake a user writes. It creates VMs from
/// `spec` (with ids derived from it), drives them through every state and every illegal
/// operation, and returns what it found wrong (empty when the provider conforms).
public enum StateMachineConformance {
    public static func violations<Provider: MicroVMProvider>(
        of provider: Provider, spec: VMSpec, scratchDirectory: FilePath
    ) async -> [String] {
        var found: [String] = []
        func expectRefused(_ operation: VMOperation, _ state: String, _ body: () async throws(MicroVMError) -> Void) async {
            do {
                try await body()
                found.append("\(operation.rawValue) while \(state) was allowed")
            } catch {
                guard case .invalidState(_, let name, let current, let allowed) = error else {
                    found.append("\(operation.rawValue) while \(state) failed with \(error) instead of invalidState")
                    return
                }
                if name != operation.rawValue || current.name != state || allowed != operation.allowedStates {
                    found.append("\(operation.rawValue) while \(state): invalidState named \(name), \(current.name), \(allowed)")
                }
            }
        }
        func expectState<VM: MicroVMHandle>(_ vm: VM, _ name: String, after step: String) async {
            let state = await vm.state
            if state.name != name { found.append("after \(step) the state is \(state), expected \(name)") }
        }

        // created: only start (and stop/kill) are legal.
        var created = spec
        created.id = spec.id + "-c"
        let vm: Provider.VM
        do {
            vm = try await provider.create(created)
        } catch {
            return ["create failed: \(error)"]
        }
        await expectState(vm, "created", after: "create")
        await expectRefused(.pause, "created") { () throws(MicroVMError) in try await vm.pause() }
        await expectRefused(.resume, "created") { () throws(MicroVMError) in try await vm.resume() }
        await expectRefused(.snapshot, "created") { () throws(MicroVMError) in
            _ = try await vm.snapshot(to: scratchDirectory.appending("never"), type: .full)
        }
        // The same id cannot be created twice while the first is alive.
        do {
            let twin = try await provider.create(created)
            found.append("a second VM with the live id \(created.id) was created")
            await twin.kill()
        } catch {
            if case .createFailed = error {} else { found.append("a duplicate id failed with \(error) instead of createFailed") }
        }

        do {
            try await vm.start()
            await expectState(vm, "running", after: "start")
            await expectRefused(.start, "running") { () throws(MicroVMError) in try await vm.start() }
            await expectRefused(.resume, "running") { () throws(MicroVMError) in try await vm.resume() }
            try await vm.pause()
            await expectState(vm, "paused", after: "pause")
            await expectRefused(.pause, "paused") { () throws(MicroVMError) in try await vm.pause() }
            await expectRefused(.start, "paused") { () throws(MicroVMError) in try await vm.start() }
            await expectRefused(.sendCtrlAltDel, "paused") { () throws(MicroVMError) in try await vm.sendCtrlAltDel() }
            try await vm.resume()
            await expectState(vm, "running", after: "resume")
        } catch {
            found.append("a legal operation failed: \(error)")
        }
        let reason = await vm.kill()
        if reason.kind != .killedByDriver { found.append("kill ended with \(reason.kind.rawValue), expected killed-by-driver") }
        await expectState(vm, "stopped", after: "kill")
        let again = await vm.stop(grace: .zero)
        if again != reason { found.append("stop after kill changed the exit reason: \(again) vs \(reason)") }
        for (operation, body) in [
            (VMOperation.start, { () async throws(MicroVMError) in try await vm.start() }),
            (.pause, { () async throws(MicroVMError) in try await vm.pause() }),
            (.resume, { () async throws(MicroVMError) in try await vm.resume() }),
            (.sendCtrlAltDel, { () async throws(MicroVMError) in try await vm.sendCtrlAltDel() }),
        ] {
            await expectRefused(operation, "stopped", body)
        }

        // A VM stopped before it ever started.
        var unstarted = spec
        unstarted.id = spec.id + "-u"
        do {
            let never = try await provider.create(unstarted)
            let reason = await never.stop(grace: .milliseconds(100))
            if reason.kind != .killedByDriver { found.append("stopping a created VM ended with \(reason.kind.rawValue)") }
            await expectState(never, "stopped", after: "stop of a created VM")
        } catch {
            found.append("create of \(unstarted.id) failed: \(error)")
        }

        // Invalid specs are refused with every problem named, nothing created.
        var invalid = spec
        invalid.id = "bad_id"
        invalid.machine.vcpus = 0
        do {
            let vm = try await provider.create(invalid)
            found.append("an invalid spec was accepted")
            await vm.kill()
        } catch {
            if case .invalidSpec(_, let problems) = error {
                let fields = Set(problems.map(\.field))
                if !fields.isSuperset(of: ["id", "machine.vcpus"]) { found.append("invalid spec problems named \(fields)") }
            } else {
                found.append("an invalid spec failed with \(error) instead of invalidSpec")
            }
        }
        return found
    }
}
