import ArgumentParser
import Dispatch
import Foundation
import MicroVM

#if canImport(Glibc)
    import Glibc
#endif

/// Options of the commands that attach a console (`run`, `start -a`, `console`).
struct ConsoleOptions: ParsableArguments {
    @Option(
        name: .customLong("detach-keys"),
        help: ArgumentHelp("The key sequence that detaches, leaving the VM running (ctrl-<letter> or one character, comma-separated).", valueName: "keys"))
    var detachKeys = "ctrl-p,ctrl-q"

    @Flag(name: .customLong("no-stdin"), help: "Do not forward standard input to the guest.")
    var noStdin = false

    func detachSequence() throws -> [UInt8] {
        try DetachKeys.parse(detachKeys)
    }
}

/// How an attached console session ended.
enum SessionEnd: Sendable {
    /// The VM ended (its exit reason).
    case ended(ExitReason)
    /// The user detached; the VM keeps running.
    case detached
}

/// What an interrupt (Ctrl-C, SIGTERM, SIGHUP) does.
enum InterruptAction: Sendable {
    /// Stop the VM gracefully (Ctrl-Alt-Del, then `grace`, then kill).
    case stop(grace: Duration)
    /// Detach and leave the VM running.
    case detach
}

/// The console of an attached VM on this process's standard streams: the guest's lines on
/// stdout, stdin to the guest's serial input, the detach keys and signals handled.
enum ConsoleSession {
    private enum Event: Sendable {
        case input([UInt8])
        case inputEnded
        case detach
        case interrupt
        case outputEnded
    }

    /// Attaches until the VM ends or the user detaches. `interrupts` were caught since the
    /// command started, so a signal that came before the console was shown is not lost.
    static func attach(
        _ vm: MicroVM, replay: Bool, forwardInput: Bool, detachKeys: [UInt8], interrupts: Interrupts, onInterrupt: InterruptAction
    ) async -> SessionEnd {
        // Bytes, not lines: the terminal gets exactly what the guest wrote, prompts included.
        let chunks = await vm.console.subscribeBytes(replay: replay)
        let (events, continuation) = AsyncStream<Event>.makeStream()
        let printer = Task {
            var readerGone = false
            for await chunk in chunks where !readerGone {
                // Nobody reads the console any more (`microvm run | head`): as a Ctrl-C. The rest
                // is drained, so the session still learns when the console ends.
                if !Output.bytes(chunk) {
                    readerGone = true
                    continuation.yield(.interrupt)
                }
            }
            continuation.yield(.outputEnded)
        }
        if forwardInput {
            Terminal.enterConsoleMode()
            StandardInput.read(detachKeys: detachKeys) { event in
                switch event {
                case .bytes(let bytes): continuation.yield(.input(bytes))
                case .detach: continuation.yield(.detach)
                case .end: continuation.yield(.inputEnded)
                }
            }
        }
        defer { Terminal.restore() }
        return await interrupts.handling({ continuation.yield(.interrupt) }) {
            await handle(events, vm: vm, printer: printer, onInterrupt: onInterrupt)
        }
    }

    private static func handle(
        _ events: AsyncStream<Event>, vm: MicroVM, printer: Task<Void, Never>, onInterrupt: InterruptAction
    ) async -> SessionEnd {
        var stopping: Task<ExitReason, Never>?
        for await event in events {
            switch event {
            case .input(let bytes):
                vm.write(bytes: bytes)
            case .inputEnded:
                continue
            case .detach:
                printer.cancel()
                return .detached
            case .interrupt:
                switch onInterrupt {
                case .detach:
                    printer.cancel()
                    return .detached
                case .stop(let grace):
                    if stopping == nil {
                        Output.note("[microvm] stopping VM \(vm.id) (Ctrl-Alt-Del, then \(grace) grace)")
                        stopping = Task { await vm.stop(grace: grace) }
                    }
                }
            case .outputEnded:
                if let stopping { return .ended(await stopping.value) }
                return .ended(await vm.waitForExit())
            }
        }
        return .ended(await vm.waitForExit())
    }

    /// Reports how a session ended; throws exit status 4 when the VM ended uncleanly.
    static func finish(_ end: SessionEnd, vm: MicroVM) throws {
        switch end {
        case .detached:
            Output.note("[microvm] detached from VM \(vm.id); it keeps running (`microvm console \(vm.id)` reattaches)")
        case .ended(let reason):
            Output.note("[microvm] VM \(vm.id) \(reason.isClean ? "stopped" : "failed"): \(reason)")
            if !reason.isClean {
                PostMortems.record(ended: reason, vm: vm)
                throw CLIError(.vmFailure, "VM \(vm.id) ended uncleanly: \(reason)", hint: reason.evidence.isEmpty ? nil : "Firecracker said: " + reason.evidence.joined(separator: " | "), id: vm.id.rawValue)
            }
        }
    }
}

/// The detach key sequence (docker's notation: `ctrl-p,ctrl-q`).
enum DetachKeys {
    static func parse(_ text: String) throws -> [UInt8] {
        var bytes: [UInt8] = []
        for key in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) {
            if key.hasPrefix("ctrl-"), key.count == 6, let letter = key.last?.asciiValue {
                switch letter {
                case UInt8(ascii: "a")...UInt8(ascii: "z"): bytes.append(letter - UInt8(ascii: "a") + 1)
                case UInt8(ascii: "@"): bytes.append(0)
                case UInt8(ascii: "["), UInt8(ascii: "\\"), UInt8(ascii: "]"), UInt8(ascii: "^"), UInt8(ascii: "_"):
                    bytes.append(letter - 0x40)
                default: throw ValidationError("--detach-keys: '\(key)' is not a control key")
                }
            } else if key.count == 1, let byte = key.first?.asciiValue {
                bytes.append(byte)
            } else {
                throw ValidationError("--detach-keys: '\(key)' is neither ctrl-<letter> nor one character")
            }
        }
        guard !bytes.isEmpty else { throw ValidationError("--detach-keys: empty sequence") }
        return bytes
    }

    /// Splits input into what goes to the guest and whether the sequence was typed. A partial
    /// match at the end of a read is held back until the next read decides.
    struct Matcher {
        let sequence: [UInt8]
        var held: [UInt8] = []

        mutating func feed(_ bytes: [UInt8]) -> (forward: [UInt8], detached: Bool) {
            var forward: [UInt8] = []
            for byte in bytes {
                if byte == sequence[held.count] {
                    held.append(byte)
                    if held.count == sequence.count { return (forward, true) }
                } else {
                    forward += held
                    held.removeAll()
                    if byte == sequence[0] {
                        held.append(byte)
                        if held.count == sequence.count { return (forward, true) }
                    } else {
                        forward.append(byte)
                    }
                }
            }
            return (forward, false)
        }
    }
}

/// Reads standard input on its own thread (a blocking read, as a terminal or pipe needs).
enum StandardInput {
    enum Event: Sendable {
        case bytes([UInt8])
        case detach
        case end
    }

    static func read(detachKeys: [UInt8], _ handler: @escaping @Sendable (Event) -> Void) {
        DispatchQueue.global().async {
            var matcher = DetachKeys.Matcher(sequence: detachKeys)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let count = buffer.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
                if count < 0, errno == EINTR { continue }
                guard count > 0 else {
                    if !matcher.held.isEmpty { handler(.bytes(matcher.held)) }
                    handler(.end)
                    return
                }
                let (forward, detached) = matcher.feed(Array(buffer[0..<count]))
                if !forward.isEmpty { handler(.bytes(forward)) }
                if detached {
                    handler(.detach)
                    return
                }
            }
        }
    }
}
