#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
public import SystemPackage

/// One VM's claim on an index: its names, subnet, MAC and uid follow from the index.
public struct NetworkLease: Sendable, Hashable {
    public enum Mode: String, Sendable, Hashable {
        /// A network namespace per VM (jailed VMs: the jailer joins it with `--netns`).
        case namespace
        /// A TAP in the host namespace (unjailed VMs, or hosts that want no namespaces).
        case tap
    }

    public let vm: VMIdentifier
    public let index: Int
    public let uid: UInt32
    public let gid: UInt32
    public let mode: Mode
}

/// Leases persisted under the state directory, so indices survive driver restarts and never
/// collide: `leases/<index>` (created with O_EXCL) holds the VM id, mode and owner;
/// `vms/<id>` is a symlink to the index. Every change happens under an exclusive `flock` on
/// `lock`, which also orders threads of one process (each call opens its own descriptor).
/// All calls block (file I/O and the lock).
public struct NetworkLeaseStore: Sendable {
    public let directory: FilePath
    public let capacity: Int
    let uidBase: UInt32

    public init(directory: FilePath, capacity: Int, uidBase: UInt32) {
        self.directory = directory
        self.capacity = capacity
        self.uidBase = uidBase
    }

    private var leasesDirectory: String { directory.string + "/leases" }
    private var vmsDirectory: String { directory.string + "/vms" }

    /// The VM's lease, created at the lowest free index (or at `index`, which must then be
    /// free) if it has none. An existing lease is returned unchanged (same index, owner and mode).
    public func acquire(
        for vm: VMIdentifier, mode: NetworkLease.Mode, owner: (uid: UInt32, gid: UInt32)?, index wanted: Int? = nil
    ) throws(NetworkError) -> (lease: NetworkLease, created: Bool) {
        try withLock { () throws(NetworkError) -> (NetworkLease, Bool) in
            if let existing = try lookup(vm) {
                if let wanted, existing.index != wanted { throw .leaseTaken(index: wanted, holder: nil, vm: vm.rawValue) }
                return (existing, false)
            }
            let used = try usedIndices()
            let index: Int
            if let wanted {
                guard (0..<capacity).contains(wanted) else {
                    throw .invalidSetting(
                        name: "lease index", value: "\(wanted)", reason: "outside the pool's \(capacity) leases",
                        fix: "use the configuration (address pool, uid range) the index was leased under")
                }
                if used.contains(wanted) { throw .leaseTaken(index: wanted, holder: (try? read(index: wanted))?.vm.rawValue, vm: vm.rawValue) }
                index = wanted
            } else {
                guard let free = (0..<capacity).first(where: { !used.contains($0) }) else {
                    throw .poolExhausted(capacity: capacity)
                }
                index = free
            }
            let uid = owner?.uid ?? uidBase + UInt32(index)
            let gid = owner?.gid ?? uidBase + UInt32(index)
            let lease = NetworkLease(vm: vm, index: index, uid: uid, gid: gid, mode: mode)
            let path = "\(leasesDirectory)/\(index)"
            let text = "vm=\(vm.rawValue)\nmode=\(mode.rawValue)\nuid=\(uid)\ngid=\(gid)\n"
            do throws(SystemCallError) {
                let fd = try SystemCallError.check("open(O_CREAT|O_EXCL)", path) {
                    open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
                }
                defer { close(fd) }
                let bytes = Array(text.utf8)
                let written = try SystemCallError.check("write", path) {
                    bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                }
                guard written == bytes.count else { throw SystemCallError(call: "write (short)", subject: path, errno: EIO) }
                try SystemCallError.check("fsync", path) { fsync(fd) }
                let link = "\(vmsDirectory)/\(vm.rawValue)"
                unlink(link)
                try SystemCallError.check("symlink", link) { symlink(String(index), link) }
            } catch {
                unlink(path)
                throw .system(vm: vm.rawValue, error)
            }
            return (lease, true)
        }
    }

    /// The VM's lease, or nil.
    public func lease(for vm: VMIdentifier) throws(NetworkError) -> NetworkLease? {
        try withLock { () throws(NetworkError) -> NetworkLease? in try lookup(vm) }
    }

    /// Drops the VM's lease; dropping one that does not exist succeeds.
    public func release(_ vm: VMIdentifier) throws(NetworkError) {
        try withLock { () throws(NetworkError) in
            let link = "\(vmsDirectory)/\(vm.rawValue)"
            if let index = readIndexLink(link), let lease = try? read(index: index), lease.vm == vm {
                unlink("\(leasesDirectory)/\(index)")
            }
            unlink(link)
        }
    }

    /// Every lease, ordered by index. Damaged lease files are reported in `damaged`.
    public func all() throws(NetworkError) -> (leases: [NetworkLease], damaged: [NetworkError]) {
        try withLock { () throws(NetworkError) -> ([NetworkLease], [NetworkError]) in
            var leases: [NetworkLease] = []
            var damaged: [NetworkError] = []
            for index in try usedIndices().sorted() {
                do throws(NetworkError) {
                    leases.append(try read(index: index))
                } catch {
                    damaged.append(error)
                }
            }
            return (leases, damaged)
        }
    }

    /// Removes the lease file of `index` whatever it holds (gc of damaged files).
    func removeIndex(_ index: Int) throws(NetworkError) {
        try withLock { () throws(NetworkError) in
            if let lease = try? read(index: index) { unlink("\(vmsDirectory)/\(lease.vm.rawValue)") }
            unlink("\(leasesDirectory)/\(index)")
        }
    }

    // MARK: Internals (call with the lock held)

    private func lookup(_ vm: VMIdentifier) throws(NetworkError) -> NetworkLease? {
        let link = "\(vmsDirectory)/\(vm.rawValue)"
        guard let index = readIndexLink(link) else { return nil }
        guard let lease = try? read(index: index), lease.vm == vm else {
            // A link left by a crash between the two writes, or pointing at another VM's lease.
            unlink(link)
            return nil
        }
        return lease
    }

    private func readIndexLink(_ link: String) -> Int? {
        var buffer = [CChar](repeating: 0, count: 32)
        let count = readlink(link, &buffer, buffer.count - 1)
        guard count > 0 else { return nil }
        return Int(String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self))
    }

    private func read(index: Int) throws(NetworkError) -> NetworkLease {
        let path = "\(leasesDirectory)/\(index)"
        let text: String
        do {
            text = try readSmallFile(path, limit: 4096)
        } catch {
            throw .system(vm: nil, error)
        }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let equals = line.firstIndex(of: "=") else { continue }
            fields[String(line[..<equals])] = String(line[line.index(after: equals)...])
        }
        guard let raw = fields["vm"], let vm = try? VMIdentifier(raw),
            let mode = fields["mode"].flatMap(NetworkLease.Mode.init(rawValue:)),
            let uid = fields["uid"].flatMap({ UInt32($0) }), let gid = fields["gid"].flatMap({ UInt32($0) })
        else {
            throw .leaseCorrupt(path: path, detail: "expected vm=, mode=, uid=, gid= lines, found \(String(reflecting: text))")
        }
        return NetworkLease(vm: vm, index: index, uid: uid, gid: gid, mode: mode)
    }

    private func usedIndices() throws(NetworkError) -> Set<Int> {
        guard let dir = opendir(leasesDirectory) else {
            throw .system(vm: nil, SystemCallError(call: "opendir", subject: leasesDirectory, errno: errno))
        }
        defer { closedir(dir) }
        var result = Set<Int>()
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if let index = Int(name), index >= 0 { result.insert(index) }
        }
        return result
    }

    private func withLock<T>(_ body: () throws(NetworkError) -> T) throws(NetworkError) -> T {
        let lockPath = directory.string + "/lock"
        let fd: Int32
        do throws(SystemCallError) {
            for path in [directory.string, leasesDirectory, vmsDirectory] {
                if mkdir(path, 0o700) != 0, errno != EEXIST {
                    throw SystemCallError(call: "mkdir", subject: path, errno: errno)
                }
            }
            fd = try SystemCallError.check("open", lockPath) { open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600) }
        } catch {
            throw .system(vm: nil, error)
        }
        defer { close(fd) }
        do {
            try SystemCallError.check("flock(LOCK_EX)", lockPath) { flock(fd, LOCK_EX) }
        } catch {
            throw .system(vm: nil, error)
        }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }
}
