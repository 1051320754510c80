#if canImport(Glibc)
    import Glibc
#endif

// microvm-monitor: the per-VM monitor that the driver starts for a detached VM (the conmon /
// containerd-shim pattern). It is its own small executable, not a mode of `microvm`: it stays
// for the VM's whole life, so its size is paid once per VM.
//
//   microvm-monitor --dir STATE_DIR [--log-fifo PATH] [--pid-file PATH] [--stdin-fifo PATH] [--cwd DIR]
//                   [--console-ring BYTES] [--file-max BYTES]
//                   [--uffd-socket PATH --uffd-memory FILE [--uffd-owner UID:GID]] -- EXECUTABLE [ARGUMENT...]
//
// With --uffd-socket, the monitor serves a lazily restored guest's memory from FILE: a
// page-fault handler thread listens at PATH before the VMM starts (Firecracker's `Uffd` backend).
//
// stdout: one line for the driver, `vmm PID` or `failed REASON`. Files in STATE_DIR:
// monitor.sock (the streams), console.log, stderr.log, firecracker.log (each rotated once at
// --file-max), exit (written once the VMM is reaped).

func usage(_ message: String) -> Never {
    let text = Array("microvm-monitor: \(message)\nusage: microvm-monitor --dir STATE_DIR [--log-fifo PATH] [--pid-file PATH] [--stdin-fifo PATH] [--cwd DIR] [--console-ring BYTES] [--file-max BYTES] -- EXECUTABLE [ARGUMENT...]\n".utf8)
    _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
    exit(2)
}

var options = MonitorOptions()
var arguments = CommandLine.arguments.dropFirst()
while let argument = arguments.popFirst() {
    if argument == "--" {
        options.command = Array(arguments)
        break
    }
    guard let value = arguments.popFirst() else { usage("\(argument) needs a value") }
    switch argument {
    case "--dir": options.directory = value
    case "--log-fifo": options.logFIFO = value
    case "--pid-file": options.pidFile = value
    case "--stdin-fifo": options.inputFIFO = value
    case "--cwd": options.workingDirectory = value
    case "--uffd-socket": options.lazyMemorySocket = value
    case "--uffd-memory": options.lazyMemoryFile = value
    case "--uffd-owner":
        let parts = value.split(separator: ":")
        guard parts.count == 2, let uid = Int32(parts[0]), let gid = Int32(parts[1]), uid >= 0, gid >= 0 else {
            usage("--uffd-owner: '\(value)' is not UID:GID")
        }
        options.lazyMemoryOwner = (uid, gid)
    case "--console-ring":
        guard let bytes = Int(value), bytes > 0 else { usage("--console-ring: '\(value)' is not a positive number of bytes") }
        options.consoleRingBytes = bytes
    case "--file-max":
        guard let bytes = Int(value), bytes > 0 else { usage("--file-max: '\(value)' is not a positive number of bytes") }
        options.fileMaximumBytes = bytes
    default: usage("unknown option \(argument)")
    }
}
if options.directory.isEmpty { usage("--dir is required") }
if options.command.isEmpty { usage("no command after --") }
if (options.lazyMemorySocket == nil) != (options.lazyMemoryFile == nil) { usage("--uffd-socket and --uffd-memory go together") }
exit(Monitor(options: options).run())
