import CMicroVMSys
import Logging
import Synchronization
public import SystemPackage

#if canImport(Glibc)
    import Glibc
#endif

/// Where a restored guest's memory comes from.
public enum RestoreMemory: String, Sendable, Hashable, CaseIterable, Codable {
    /// The snapshot's memory file is staged into the VM's directory (linked, or copied when it
    /// lies on another filesystem) and Firecracker maps it: simple, and every page is there
    /// before the guest runs.
    case file
    /// Nothing is staged: a page-fault handler in the driver (or the VM's monitor) serves each
    /// page from the snapshot's memory file the first time the guest touches it (userfaultfd,
    /// Firecracker's `Uffd` backend). A restore no longer waits for a copy of the whole memory
    /// across filesystems, and a guest that touches little of its memory costs little; the
    /// price is a fault round trip on each first touch, and nothing may write into the
    /// snapshot's memory file while the VM runs (the server holds it open: removing or
    /// replacing it is harmless).
    case lazy
}

/// What the lazy memory server has done (``MicroVM/lazyMemory``).
public struct LazyMemoryStatistics: Sendable, Hashable {
    public enum Phase: String, Sendable, Hashable {
        /// Listening; Firecracker has not connected yet.
        case waiting
        /// Connected; reading the memory regions.
        case handshake
        case serving
        /// Firecracker went away (or the server was stopped) without an error.
        case ended
        case failed
    }

    public var phase: Phase
    /// Page-fault events read from the userfaultfd.
    public var faults: UInt64
    /// Pages answered from the snapshot's memory file.
    public var pagesCopied: UInt64
    /// Pages answered with zeros (ranges the balloon had removed).
    public var zeroPages: UInt64
    /// Faults on a page another fault had already brought in.
    public var alreadyPresent: UInt64
    /// Ranges the balloon removed (`UFFD_EVENT_REMOVE`).
    public var removeEvents: UInt64
    /// Guest memory regions Firecracker described.
    public var regions: Int
    /// The VMM that connected (in this process's PID namespace); nil before it connected.
    public var firecrackerPID: Int32?

    /// Pages put into the guest's memory, from the file or as zeros.
    public var pagesServed: UInt64 { pagesCopied + zeroPages }

    /// From the monitor's report of its server (`state`, `faults`, `pages-copied`, ... as
    /// `key value` fields); nil without a state it knows.
    init?(report fields: [String: String]) {
        guard let state = fields["state"], let phase = Phase(rawValue: state) else { return nil }
        func count(_ key: String) -> UInt64 { fields[key].flatMap { UInt64($0) } ?? 0 }
        self.phase = phase
        faults = count("faults")
        pagesCopied = count("pages-copied")
        zeroPages = count("zero-pages")
        alreadyPresent = count("already-present")
        removeEvents = count("remove-events")
        regions = Int(clamping: count("regions"))
        firecrackerPID = fields["pid"].flatMap { Int32($0) }.flatMap { $0 > 0 ? $0 : nil }
    }

    /// `key value` lines as a dictionary (a line without a value is skipped).
    static func reportFields(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { fields[parts[0]] = parts[1] }
        }
        return fields
    }

    init(_ stats: cmv_uffd_stats) {
        phase =
            switch stats.state {
            case CMV_UFFD_WAITING: .waiting
            case CMV_UFFD_HANDSHAKE: .handshake
            case CMV_UFFD_SERVING: .serving
            case CMV_UFFD_ENDED: .ended
            default: .failed
            }
        faults = stats.faults
        pagesCopied = stats.pages_copied
        zeroPages = stats.zero_pages
        alreadyPresent = stats.already_present
        removeEvents = stats.removes
        regions = Int(stats.regions)
        firecrackerPID = stats.peer_pid > 0 ? stats.peer_pid : nil
    }
}

/// Why the lazy memory server could not serve a restored guest.
public struct LazyMemoryError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Step: String, Sendable, Hashable {
        case listening = "listening for Firecracker"
        case openingMemory = "opening the snapshot's memory file"
        case starting = "starting the page-fault handler"
        case accepting = "accepting Firecracker's connection"
        case handshake = "reading Firecracker's memory regions"
        case serving = "serving page faults"
    }

    public var step: Step
    /// The socket or memory file concerned.
    public var path: String
    public var errno: Int32
    /// The handler's own words (which region, which address), when it has some.
    public var detail: String

    public init(step: Step, path: String, errno: Int32, detail: String = "") {
        self.step = step
        self.path = path
        self.errno = errno
        self.detail = detail
    }

    public var description: String {
        let reason = detail.isEmpty ? String(cString: strerror(errno)) : "\(detail) (\(String(cString: strerror(errno))))"
        return "lazy memory: \(step.rawValue) (\(path)) failed: \(reason)"
    }

    public var hint: String {
        switch step {
        case .listening: "check that the VM's directory is writable and the socket path is not in use"
        case .openingMemory: "the snapshot's memory file must stay readable while a lazily restored VM runs; restore with the file backend to copy it in"
        case .starting: "the host refused a thread or a mapping; check its limits (ulimit -u, vm.max_map_count)"
        case .accepting, .handshake:
            errno == ERANGE
                ? "the snapshot's memory file is shorter than the guest's memory: the snapshot is incomplete or corrupt; take it again"
                : "Firecracker's userfaultfd handshake was not understood; check that the snapshot and the Firecracker version match"
        case .serving: "the guest's memory could not be served (Firecracker was stopped so the guest does not freeze); check the memory file and the host's memory"
        }
    }

    init(_ stats: cmv_uffd_stats, path: String) {
        let step: Step =
            switch stats.error_step {
            case CMV_UFFD_STEP_ACCEPT: .accepting
            case CMV_UFFD_STEP_HANDSHAKE: .handshake
            default: .serving
            }
        let detail = withUnsafeBytes(of: stats.error_detail) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        self.init(step: step, path: path, errno: stats.error_errno, detail: detail)
    }
}

/// The userfaultfd page-fault server of one lazily restored VM: a C thread (its own pthread,
/// never one of Swift's cooperative threads) that Firecracker connects to during
/// `PUT /snapshot/load`, and that serves the guest's pages from the snapshot's memory file until
/// the VMM is gone.
///
/// A failure after Firecracker connected (a handshake it cannot read, a page it cannot copy)
/// kills the VMM: nobody else would serve its faults, and the guest would freeze forever. The
/// VM's teardown then reports it (``failure``).
public final class LazyMemory: Sendable {
    /// The socket, as the driver sees it (in the VM's directory).
    public let socketPath: FilePath
    /// The snapshot's memory file the pages come from.
    public let memoryFile: FilePath
    private let server: Mutex<ServerHandle?>
    private let last = Mutex<(LazyMemoryStatistics, LazyMemoryError?)?>(nil)
    /// Resolves once the handler thread has ended, for whatever reason.
    private let ended: Task<Void, Never>

    /// The C server's handle; the thread behind it is the only other user until it is freed.
    private struct ServerHandle: @unchecked Sendable {
        let pointer: OpaquePointer
    }

    /// The socket's name in the VM's directory.
    static let socketName = "uffd.sock"

    /// Listens in `directory` (owned by `owner` when the VMM runs as another user), opens the
    /// memory file and starts the handler thread. Nothing is left behind when it throws.
    static func start(
        directory: FilePath, memoryFile: FilePath, owner: (uid: UInt32, gid: UInt32)?, id: String, logger: Logger
    ) throws(LazyMemoryError) -> LazyMemory {
        let socket = directory.appending(socketName)
        let directoryFD = open(directory.string, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directoryFD >= 0 else { throw LazyMemoryError(step: .listening, path: directory.string, errno: errno) }
        defer { close(directoryFD) }
        let listener = cmv_uffd_listen(directoryFD, socketName, owner.map { Int32(bitPattern: $0.uid) } ?? -1, owner.map { Int32(bitPattern: $0.gid) } ?? -1)
        guard listener >= 0 else { throw LazyMemoryError(step: .listening, path: socket.string, errno: errno) }
        let memory = open(memoryFile.string, O_RDONLY | O_CLOEXEC)
        guard memory >= 0 else {
            let code = errno
            close(listener)
            unlink(socket.string)
            throw LazyMemoryError(step: .openingMemory, path: memoryFile.string, errno: code)
        }
        var pointer: OpaquePointer?
        guard cmv_uffd_server_start(listener, memory, 1, &pointer) == 0, let pointer else {
            let code = errno
            close(listener)
            close(memory)
            unlink(socket.string)
            throw LazyMemoryError(step: code == ENODATA ? .openingMemory : .starting, path: memoryFile.string, errno: code, detail: code == ENODATA ? "the memory file is empty" : "")
        }
        return LazyMemory(socket: socket, memoryFile: memoryFile, server: ServerHandle(pointer: pointer), id: id, logger: logger)
    }

    private init(socket: FilePath, memoryFile: FilePath, server: ServerHandle, id: String, logger: Logger) {
        self.socketPath = socket
        self.memoryFile = memoryFile
        self.server = Mutex(server)
        let done = cmv_uffd_server_done_fd(server.pointer)
        let path = socket.string
        ended = Task.detached {
            // The done eventfd stays open until `finish()`, which waits for this task first.
            await ExitWatcher.shared.waitForExit(pidfd: done)
            var stats = cmv_uffd_stats()
            cmv_uffd_server_stats(server.pointer, &stats)
            if stats.state == CMV_UFFD_FAILED {
                let error = LazyMemoryError(stats, path: path)
                logger.error("lazy memory server failed; Firecracker was stopped", metadata: ["vm": "\(id)", "error": "\(error)"])
            } else {
                logger.debug("lazy memory server ended", metadata: ["vm": "\(id)", "pages": "\(stats.pages_copied + stats.zero_pages)"])
            }
        }
    }

    /// The counters now (or as they were when the server was finished).
    public var statistics: LazyMemoryStatistics { current.0 }

    /// Pages put into the guest's memory so far.
    public var pagesServed: UInt64 { statistics.pagesServed }

    /// Why the server failed, if it did.
    public var failure: LazyMemoryError? { current.1 }

    private var current: (LazyMemoryStatistics, LazyMemoryError?) {
        server.withLock { handle -> (LazyMemoryStatistics, LazyMemoryError?)? in
            guard let handle else { return nil }
            return Self.read(handle, path: socketPath.string)
        } ?? last.withLock { $0! }
    }

    private static func read(_ handle: ServerHandle, path: String) -> (LazyMemoryStatistics, LazyMemoryError?) {
        var stats = cmv_uffd_stats()
        cmv_uffd_server_stats(handle.pointer, &stats)
        return (LazyMemoryStatistics(stats), stats.state == CMV_UFFD_FAILED ? LazyMemoryError(stats, path: path) : nil)
    }

    /// One guest memory region of Firecracker's handshake.
    struct Region: Sendable, Hashable {
        var address: UInt64
        var size: UInt64
        var offset: UInt64
        var pageSize: UInt64
    }

    /// Parses a handshake the way the handler thread does (the C parser), for tests and
    /// diagnostics: the regions, or the handler's sentence about what is wrong.
    static func parseRegions(_ json: String) -> Result<[Region], LazyMemoryError> {
        var regions = [cmv_uffd_region](repeating: cmv_uffd_region(), count: Int(CMV_UFFD_MAX_REGIONS))
        var message = [CChar](repeating: 0, count: 192)
        let bytes = Array(json.utf8)
        let count = bytes.withUnsafeBufferPointer { text in
            text.withMemoryRebound(to: CChar.self) { text in
                cmv_uffd_parse_regions(text.baseAddress, text.count, &regions, CMV_UFFD_MAX_REGIONS, &message, message.count)
            }
        }
        guard count >= 0 else {
            let detail = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return .failure(LazyMemoryError(step: .handshake, path: "", errno: EINVAL, detail: detail))
        }
        return .success(
            regions.prefix(Int(count)).map { Region(address: $0.base_host_virt_addr, size: $0.size, offset: $0.offset, pageSize: $0.page_size) })
    }

    /// Waits until the handler thread has ended by itself (Firecracker gone, or a failure).
    func waitUntilEnded() async {
        await ended.value
    }

    /// Stops the thread (if Firecracker has not already gone), joins it, releases its
    /// descriptors and mapping and removes the socket. Idempotent; the counters stay readable.
    func finish() async {
        guard let handle = server.withLock({ $0 }) else { return }
        cmv_uffd_server_signal_stop(handle.pointer)
        await ended.value
        // The thread has written its last word: the join below returns at once.
        server.withLock { stored in
            guard let handle = stored else { return }
            let final = Self.read(handle, path: socketPath.string)
            last.withLock { $0 = final }
            cmv_uffd_server_free(handle.pointer)
            unlink(socketPath.string)
            stored = nil
        }
    }
}
