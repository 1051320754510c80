import CMicroVMSys

#if canImport(Glibc)
    import Glibc
#endif

/// What the driver tells the monitor (see `main.swift` for the command line).
struct MonitorOptions {
    var directory = ""
    var logFIFO: String?
    var pidFile: String?
    var inputFIFO: String?
    var workingDirectory: String?
    /// A lazy restore's page-fault server: its socket, the snapshot's memory file, and the
    /// VMM's user (who must be able to connect to the socket).
    var lazyMemorySocket: String?
    var lazyMemoryFile: String?
    var lazyMemoryOwner: (uid: Int32, gid: Int32)?
    var consoleRingBytes = 256 * 1024
    var fileMaximumBytes = 8 * 1024 * 1024
    var command: [String] = []
}

/// The per-VM monitor: the parent (and child subreaper) of the VMM, so it alone learns its real
/// exit status; the one reader of its console, stderr and Firecracker's log, which it keeps in
/// rings and files, so a guest never waits for a driver to read; and the server of those streams
/// (and of the console's input) on `monitor.sock` to any number of drivers, from any offset.
///
/// One thread, one epoll set, no allocation per byte beyond the rings. It writes `exit` in the
/// VM's directory once the VMM is reaped and the streams are drained, then exits.
final class Monitor {
    private enum Token: UInt64 {
        case children = 1, listener, console, standardError, log, input
    }
    private static let firstClientToken: UInt64 = 1 << 32
    /// A client that falls this far behind is dropped (it reconnects from its offset).
    private static let clientBacklogLimit = 1 << 20
    /// The request `input 0`: a client that only writes the guest's input.
    private static let inputOnly = 3

    private let options: MonitorOptions
    private var epoll: Int32 = -1
    private var childrenFD: Int32 = -1
    private var listener: Int32 = -1
    private var inputWrite: Int32 = -1
    private var sources: [Int32] = [-1, -1, -1]  // console, stderr, log
    private var streams: [MonitoredStream] = []
    private var pendingInput: [UInt8] = []
    private var clients: [Int32: Client] = [:]

    private var lazyMemory: OpaquePointer?
    private var launcherPID: Int32 = 0
    private var vmmPID: Int32?
    private var reaped: [Int32: (exited: Bool, value: Int32)] = [:]
    private var childrenGone = false
    private var reported = false
    /// The console's bursts (below): when its latest line-ending reads happened, and when its
    /// descriptor, taken out of the epoll set in the middle of a line, is read again.
    private var consoleLineEnds: [ContinuousClock.Instant] = []
    private var consoleResumes: ContinuousClock.Instant?
    /// The end: every source is read out, bursts or not.
    private var draining = false

    init(options: MonitorOptions) {
        self.options = options
    }

    /// Runs until the VMM is gone; the process's exit status.
    func run() -> Int32 {
        guard cmv_set_child_subreaper() == 0 else { return fail("prctl(PR_SET_CHILD_SUBREAPER)") }
        epoll = cmv_epoll_create()
        childrenFD = cmv_signalfd_children()
        guard epoll >= 0, childrenFD >= 0 else { return fail("epoll/signalfd") }
        let directory = options.directory

        // The VMM's standard streams: pipes whose far ends only the child holds.
        var input: [Int32] = [-1, -1]
        var output: [Int32] = [-1, -1]
        var error: [Int32] = [-1, -1]
        guard cmv_pipe_cloexec(&output) == 0, cmv_pipe_cloexec(&error) == 0 else { return fail("pipe") }
        if let fifo = options.inputFIFO {
            // The VMM's stdin is a FIFO it holds read-write: it never reads end of file, even if
            // this monitor dies, so a later driver can still write to it by its path.
            input = [open(fifo, O_RDWR | O_CLOEXEC), open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)]
            if input[0] < 0 || input[1] < 0 { return fail("open \(fifo)") }
        } else if cmv_pipe_cloexec(&input) != 0 {
            return fail("pipe")
        }
        inputWrite = input[1]
        sources[0] = output[0]
        sources[1] = error[0]
        for fd in [inputWrite, output[0], error[0]] { setNonBlocking(fd) }
        if let fifo = options.logFIFO {
            // Read-write: the FIFO never reads end of file between Firecracker's opens of it.
            sources[2] = open(fifo, O_RDWR | O_NONBLOCK | O_CLOEXEC)
            if sources[2] < 0 { return fail("open \(fifo)") }
        }

        // A lazy restore's page-fault server listens before the VMM exists: Firecracker
        // connects to it during its snapshot load. A failure here starts nothing.
        if let socket = options.lazyMemorySocket, let memory = options.lazyMemoryFile {
            if let failure = startLazyMemory(socket: socket, memoryFile: memory) {
                report("failed \(failure)")
                return 1
            }
        }

        // Spawn the launcher (the jailer, or Firecracker itself).
        var pid: pid_t = 0
        let spawnErrno: Int32 = withCStrings(options.command) { argv in
            cmv_spawn(options.command[0], argv, options.workingDirectory, input[0], output[1], error[1], 0, &pid, nil) == 0 ? 0 : errno
        }
        close(input[0])
        close(output[1])
        close(error[1])
        if spawnErrno != 0 {
            let message = "could not start \(options.command[0]): \(String(cString: strerror(spawnErrno)))"
            writeExitFile(["role launcher", "spawn-error \(spawnErrno)", "message \(message)"])
            report("failed \(message)")
            return 1
        }
        launcherPID = pid
        // The files and the socket are made while the VMM starts, not before: each is an inode,
        // which on a busy ext4 costs up to half a millisecond, and the VMM's first output waits
        // in its pipes meanwhile. Nobody connects before the announcement below.
        streams = [
            MonitoredStream(name: "console", ringCapacity: options.consoleRingBytes, file: LogFile(path: directory + "/console.log", maximumBytes: options.fileMaximumBytes)),
            MonitoredStream(name: "stderr", ringCapacity: 64 * 1024, file: LogFile(path: directory + "/stderr.log", maximumBytes: 1 << 20)),
            MonitoredStream(name: "log", ringCapacity: 256 * 1024, file: LogFile(path: directory + "/firecracker.log", maximumBytes: options.fileMaximumBytes)),
        ]
        listener = cmv_unix_listen(directory + "/monitor.sock", 64)
        guard listener >= 0 else {
            let status = fail("listen on \(directory)/monitor.sock")
            // The driver is told it failed and searches the jail; the launcher ends with us.
            kill(pid, SIGKILL)
            return status
        }
        if options.pidFile == nil { announce(vmm: pid) }

        watch(childrenFD, .children)
        watch(listener, .listener)
        watch(sources[0], .console)
        watch(sources[1], .standardError)
        if sources[2] >= 0 { watch(sources[2], .log) }
        loop()
        finish()
        return 0
    }

    // MARK: The loop

    private func loop() {
        var tokens = [UInt64](repeating: 0, count: 64)
        while !childrenGone {
            var timeout: Int32 = -1
            if let resumes = consoleResumes {
                let left = ContinuousClock.now.duration(to: resumes)
                let (seconds, attoseconds) = left.components
                timeout = left <= .zero ? 0 : Int32(clamping: seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
            }
            let count = cmv_epoll_wait(epoll, &tokens, 64, timeout)
            if count < 0 {
                if errno == EINTR { continue }
                _ = fail("epoll_wait")
                return
            }
            for token in tokens.prefix(Int(count)) { handle(token) }
            if let resumes = consoleResumes, ContinuousClock.now >= resumes {
                consoleResumes = nil
                if sources[0] >= 0 {
                    watch(sources[0], .console)
                    pump(0)
                }
            }
        }
    }

    /// While the guest writes a burst of lines (a kernel's boot messages: the last eight
    /// line-ending reads within 40 ms), a console read that ends within a line leaves the
    /// console out of the epoll set for a millisecond: Firecracker writes the serial port a
    /// byte per write(2), and the bytes written meanwhile then come in one read (and go to the
    /// clients in one send) instead of one wake-up each. Sparse output (a banner, a prompt, an
    /// echo) is read at once, as before. The driver's console readers do the same.
    private func consoleRead(_ bytes: ArraySlice<UInt8>) -> Bool {
        let now = ContinuousClock.now
        if bytes.contains(UInt8(ascii: "\n")) {
            if consoleLineEnds.count == 8 { consoleLineEnds.removeFirst() }
            consoleLineEnds.append(now)
        }
        guard bytes.last != UInt8(ascii: "\n"), consoleLineEnds.count == 8, let oldest = consoleLineEnds.first, let newest = consoleLineEnds.last,
            oldest.duration(to: newest) < .milliseconds(40), newest.duration(to: now) < .milliseconds(40)
        else { return false }
        _ = cmv_epoll_remove(epoll, sources[0])
        consoleResumes = now.advanced(by: .milliseconds(1))
        return true
    }

    private func handle(_ token: UInt64) {
        if token >= Self.firstClientToken {
            serve(client: Int32(token - Self.firstClientToken))
            return
        }
        switch Token(rawValue: token) {
        case .children?: reapChildren()
        case .listener?: acceptClients()
        case .console?: pump(0)
        case .standardError?: pump(1)
        case .log?: pump(2)
        case .input?: flushInput()
        case nil: break
        }
    }

    /// Reads what a source has (until it would block); end of file ends the stream.
    private func pump(_ index: Int) {
        let fd = sources[index]
        guard fd >= 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                buffer.withUnsafeBytes { deliver(UnsafeRawBufferPointer(rebasing: $0[..<count]), on: index) }
                if index == 0, !draining, consoleResumes == nil, consoleRead(buffer[..<count]) { return }
                if count < buffer.count { return }
                continue
            }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN { return }
            // End of file (every writer closed it) or an error: no more bytes.
            _ = cmv_epoll_remove(epoll, fd)
            close(fd)
            sources[index] = -1
            return
        }
    }

    private func deliver(_ bytes: UnsafeRawBufferPointer, on index: Int) {
        streams[index].append(bytes)
        for (fd, client) in clients where client.stream == index {
            client.pending.append(contentsOf: bytes)
            flush(fd, client)
        }
    }

    // MARK: Children

    private func reapChildren() {
        _ = cmv_signalfd_drain(childrenFD)
        while true {
            var pid: pid_t = 0
            var exited: Int32 = 0
            var value: Int32 = 0
            let result = cmv_reap_any(&pid, &exited, &value)
            if result == 0 { return }
            if result < 0 {
                if errno == EINTR { continue }
                childrenGone = true  // ECHILD: the VMM and its launcher are all gone
                if !reported { report("failed the launcher exited before the VMM started") }
                return
            }
            reaped[pid] = (exited == 1, value)
            if pid == launcherPID, vmmPID == nil, let pidFile = options.pidFile {
                // The jailer cloned the VMM into its PID namespace and left: its pid file names it.
                if let vmm = readPIDFile(pidFile) {
                    announce(vmm: vmm)
                } else {
                    report("failed the launcher exited (\(exited == 1 ? "code" : "signal") \(value)) without starting the VMM")
                }
            }
        }
    }

    private func readPIDFile(_ path: String) -> Int32? {
        for _ in 0..<200 {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 {
                var buffer = [UInt8](repeating: 0, count: 32)
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                close(fd)
                if count > 0, let pid = Int32(String(decoding: buffer[..<count], as: UTF8.self).trimmingWhitespace()), pid > 0 {
                    return pid
                }
            }
            usleep(1000)
        }
        return nil
    }

    /// Tells the driver (the monitor's stdout, read once) which process is the VMM.
    private func announce(vmm pid: Int32) {
        vmmPID = pid
        report("vmm \(pid)")
    }

    private func report(_ line: String) {
        guard !reported else { return }
        reported = true
        let text = Array((line + "\n").utf8)
        _ = text.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
        // Nobody reads it again: point it at /dev/null so a gone driver can never matter.
        let null = open("/dev/null", O_WRONLY | O_CLOEXEC)
        if null >= 0 {
            dup2(null, 1)
            close(null)
        }
    }

    // MARK: Clients

    private final class Client {
        var request: [UInt8] = []
        /// The stream it reads, once its request line is in.
        var stream: Int?
        var pending: [UInt8] = []
        var watchingOutput = false
        /// A one-shot request (`lazy-memory`): the connection ends once its answer is sent.
        var closesWhenFlushed = false
    }

    private func acceptClients() {
        while true {
            let fd = cmv_accept(listener)
            if fd < 0 { return }
            clients[fd] = Client()
            _ = cmv_epoll_watch(epoll, fd, CMV_EPOLLIN, Self.firstClientToken + UInt64(fd), 0)
        }
    }

    private func serve(client fd: Int32) {
        guard let client = clients[fd] else { return }
        if !client.pending.isEmpty { flush(fd, client) }
        guard clients[fd] != nil else { return }
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count > 0 {
                received(buffer[..<count], from: fd, client)
                if clients[fd] == nil { return }
                continue
            }
            if count < 0 && (errno == EAGAIN || errno == EINTR) { return }
            // The client went away. Its input stops; what it read is its own business.
            drop(fd)
            return
        }
    }

    private func received(_ bytes: ArraySlice<UInt8>, from fd: Int32, _ client: Client) {
        guard client.stream == nil else {
            if client.stream == 0 || client.stream == Self.inputOnly { queueInput(bytes) }
            return
        }
        client.request.append(contentsOf: bytes)
        guard let newline = client.request.firstIndex(of: UInt8(ascii: "\n")) else {
            if client.request.count > 256 { drop(fd) }
            return
        }
        let line = String(decoding: client.request[..<newline], as: UTF8.self)
        let rest = client.request[(newline + 1)...]
        client.request = []
        let words = line.split(separator: " ")
        if words.first == "lazy-memory" {
            // The page-fault server's counters as they are now (`key value` lines, as in the
            // `lazy-memory` file), for a driver or `microvm stats` while the VM runs.
            if let server = lazyMemory {
                var stats = cmv_uffd_stats()
                cmv_uffd_server_stats(server, &stats)
                client.pending = Array((["ok"] + Self.lazyMemoryReport(stats)).map { $0 + "\n" }.joined().utf8)
            } else {
                client.pending = Array("error this VM has no lazy memory server (or it has ended)\n".utf8)
            }
            client.closesWhenFlushed = true
            flush(fd, client)
            return
        }
        let names = ["console", "stderr", "log", "input"]
        guard words.count == 2, let index = names.firstIndex(of: String(words[0])), let offset = UInt64(words[1]) else {
            client.pending = Array("error expected 'console|stderr|log|input OFFSET'\n".utf8)
            flush(fd, client)
            drop(fd)
            return
        }
        if index == Self.inputOnly {
            client.stream = index
            client.pending = Array("ok 0\n".utf8)
            flush(fd, client)
            if !rest.isEmpty { queueInput(rest) }
            return
        }
        let (start, retained) = streams[index].bytes(from: offset)
        client.stream = index
        // `ok START END`: the retained bytes run from START to END, what the stream held when
        // asked; what follows is new (an attaching driver re-emits only that part of the log).
        client.pending = Array("ok \(start) \(start + UInt64(retained.count))\n".utf8) + retained
        flush(fd, client)
        if index == 0, !rest.isEmpty { queueInput(rest) }
    }

    private func flush(_ fd: Int32, _ client: Client) {
        while !client.pending.isEmpty {
            let count = client.pending.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if count > 0 {
                client.pending.removeFirst(count)
                continue
            }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN { break }
            drop(fd)
            return
        }
        if client.pending.isEmpty, client.closesWhenFlushed {
            drop(fd)
            return
        }
        if client.pending.count > Self.clientBacklogLimit {
            drop(fd)
            return
        }
        let wantOutput = !client.pending.isEmpty
        if wantOutput != client.watchingOutput {
            client.watchingOutput = wantOutput
            let events = CMV_EPOLLIN | (wantOutput ? CMV_EPOLLOUT : 0)
            _ = cmv_epoll_watch(epoll, fd, events, Self.firstClientToken + UInt64(fd), 1)
        }
    }

    private func drop(_ fd: Int32) {
        guard clients.removeValue(forKey: fd) != nil else { return }
        _ = cmv_epoll_remove(epoll, fd)
        close(fd)
    }

    // MARK: The guest's input

    private func queueInput(_ bytes: ArraySlice<UInt8>) {
        guard inputWrite >= 0 else { return }
        let wasEmpty = pendingInput.isEmpty
        pendingInput.append(contentsOf: bytes)
        if pendingInput.count > Self.clientBacklogLimit {
            pendingInput.removeFirst(pendingInput.count - Self.clientBacklogLimit)  // a guest that reads nothing
        }
        if wasEmpty { flushInput() }
    }

    private func flushInput() {
        while !pendingInput.isEmpty {
            let count = pendingInput.withUnsafeBytes { write(inputWrite, $0.baseAddress, $0.count) }
            if count > 0 {
                pendingInput.removeFirst(count)
                continue
            }
            if count < 0 && errno == EINTR { continue }
            if count < 0 && errno == EAGAIN {
                _ = cmv_epoll_watch(epoll, inputWrite, CMV_EPOLLOUT, Token.input.rawValue, 0)
                return
            }
            pendingInput = []  // the VMM closed its stdin
            break
        }
        _ = cmv_epoll_remove(epoll, inputWrite)
    }

    // MARK: The end

    /// Every child is gone: read what the streams still hold, record the exit, let the clients
    /// read the rest, and leave.
    /// Listens at `socket` and starts the C handler thread; a sentence when it could not. The
    /// thread kills the VMM if it fails once Firecracker connected (its guest would freeze).
    private func startLazyMemory(socket: String, memoryFile: String) -> String? {
        let slash = socket.lastIndex(of: "/")
        let directory = slash.map { String(socket[..<$0]) } ?? "."
        let name = slash.map { String(socket[socket.index(after: $0)...]) } ?? socket
        var step = "listening"
        var path = socket
        var code: Int32 = 0
        let directoryFD = open(directory.isEmpty ? "/" : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directoryFD < 0 {
            code = errno
        } else {
            defer { close(directoryFD) }
            let listener = cmv_uffd_listen(directoryFD, name, options.lazyMemoryOwner?.uid ?? -1, options.lazyMemoryOwner?.gid ?? -1)
            if listener < 0 {
                code = errno
            } else {
                let memory = open(memoryFile, O_RDONLY | O_CLOEXEC)
                if memory < 0 {
                    (code, step, path) = (errno, "opening-memory", memoryFile)
                } else if cmv_uffd_server_start(listener, memory, 1, &lazyMemory) != 0 {
                    (code, step, path) = (errno, errno == ENODATA ? "opening-memory" : "starting", memoryFile)
                    close(memory)
                } else {
                    return nil
                }
                close(listener)
                unlink(socket)
            }
        }
        writeLazyMemoryFile(["state failed", "step \(step)", "path \(path)", "errno \(code)"])
        return "lazy memory: \(step) \(path): \(String(cString: strerror(code)))"
    }

    /// Stops and joins the page-fault server and records how it ended (the driver reads the
    /// failure from `lazy-memory` when its create fails).
    private func finishLazyMemory() {
        guard let server = lazyMemory else { return }
        // The VMM is reaped: its connection is closed, so the thread has ended or is ending,
        // and a failure it had is recorded (before it killed the VMM).
        cmv_uffd_server_signal_stop(server)
        var stats = cmv_uffd_stats()
        cmv_uffd_server_stats(server, &stats)
        cmv_uffd_server_free(server)
        lazyMemory = nil
        if let socket = options.lazyMemorySocket { unlink(socket) }
        let detail = withUnsafeBytes(of: stats.error_detail) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let step =
            switch stats.error_step {
            case CMV_UFFD_STEP_ACCEPT: "accepting"
            case CMV_UFFD_STEP_HANDSHAKE: "handshake"
            default: "serving"
            }
        var lines = Self.lazyMemoryReport(stats, ended: true)
        if stats.state == CMV_UFFD_FAILED {
            lines += ["step \(step)", "path \(options.lazyMemorySocket ?? "")", "errno \(stats.error_errno)", "detail \(detail)"]
        }
        writeLazyMemoryFile(lines)
    }

    /// The server's counters as `key value` lines (the driver's `LazyMemoryStatistics` reads
    /// them); `ended`: the server's thread is over, whatever state it last set.
    private static func lazyMemoryReport(_ stats: cmv_uffd_stats, ended: Bool = false) -> [String] {
        let state =
            switch stats.state {
            case CMV_UFFD_FAILED: "failed"
            case _ where ended, CMV_UFFD_ENDED: "ended"
            case CMV_UFFD_WAITING: "waiting"
            case CMV_UFFD_HANDSHAKE: "handshake"
            default: "serving"
            }
        return [
            "state \(state)", "faults \(stats.faults)", "pages-copied \(stats.pages_copied)", "zero-pages \(stats.zero_pages)",
            "already-present \(stats.already_present)", "remove-events \(stats.removes)", "regions \(stats.regions)", "pid \(stats.peer_pid)",
        ]
    }

    private func writeLazyMemoryFile(_ lines: [String]) {
        let fd = open(options.directory + "/lazy-memory", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let text = Array((lines.joined(separator: "\n") + "\n").utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }

    private func finish() {
        draining = true
        finishLazyMemory()
        for index in 0..<3 where sources[index] >= 0 {
            pump(index)
            if index == 2, sources[2] >= 0 {
                close(sources[2])  // the log FIFO never reads end of file: drained is the end
                sources[2] = -1
            }
        }
        var lines: [String]
        if let vmm = vmmPID, let status = reaped[vmm] {
            lines = ["role vmm", "pid \(vmm)", status.exited ? "exited \(status.value)" : "signaled \(status.value)"]
        } else if let status = reaped[launcherPID] {
            lines = ["role launcher", "pid \(launcherPID)", status.exited ? "exited \(status.value)" : "signaled \(status.value)"]
        } else {
            lines = ["role unknown"]
        }
        writeExitFile(lines)
        for stream in streams {
            stream.ended = true
            stream.close()
        }
        // A driver that connected while the VMM ended (a guest that ends at once, read on
        // demand) is answered too: connections waiting to be accepted, and requests not read
        // yet, get the whole retained stream.
        acceptClients()
        for fd in Array(clients.keys) where clients[fd]?.stream == nil { serve(client: fd) }
        unlink(options.directory + "/monitor.sock")
        close(listener)
        // Clients get what they have not read yet (bounded), then end of file; one whose
        // request has not come yet gets 200 ms to send it.
        var deadline = 200  // x 10 ms
        while deadline > 0, clients.values.contains(where: { !$0.pending.isEmpty || ($0.stream == nil && deadline > 180) }) {
            var tokens = [UInt64](repeating: 0, count: 64)
            let count = cmv_epoll_wait(epoll, &tokens, 64, 10)
            for token in tokens.prefix(Int(max(count, 0))) where token >= Self.firstClientToken {
                let fd = Int32(token - Self.firstClientToken)
                guard let client = clients[fd] else { continue }
                if client.stream == nil { serve(client: fd) } else { flush(fd, client) }
            }
            deadline -= 1
        }
        for fd in Array(clients.keys) {
            shutdown(fd, Int32(SHUT_RDWR))
            drop(fd)
        }
    }

    /// `exit` in the VM's directory, atomically (write, fsync, rename, fsync the directory): a
    /// reader sees the whole status or none.
    private func writeExitFile(_ lines: [String]) {
        let path = options.directory + "/exit"
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let text = Array((lines.joined(separator: "\n") + "\n").utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        fsync(fd)
        close(fd)
        rename(temporary, path)
        let directory = open(options.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if directory >= 0 {
            fsync(directory)
            close(directory)
        }
    }

    // MARK: Helpers

    private func watch(_ fd: Int32, _ token: Token) {
        _ = cmv_epoll_watch(epoll, fd, CMV_EPOLLIN, token.rawValue, 0)
    }

    private func setNonBlocking(_ fd: Int32) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    private func fail(_ what: String) -> Int32 {
        let message = "microvm-monitor: \(what): \(String(cString: strerror(errno)))"
        report("failed \(message)")
        let text = Array((message + "\n").utf8)
        _ = text.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        return 1
    }
}

/// Calls `body` with a NULL-terminated C array of the strings.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var pointers: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    pointers.append(nil)
    defer { for pointer in pointers { free(pointer) } }
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}

extension String {
    func trimmingWhitespace() -> String {
        var scalars = Substring(self)
        while let first = scalars.first, first.isWhitespace { scalars.removeFirst() }
        while let last = scalars.last, last.isWhitespace { scalars.removeLast() }
        return String(scalars)
    }
}
