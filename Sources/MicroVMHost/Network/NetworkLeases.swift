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
///
/// The files exist only while a lease does: the release of the last one removes them (and the
/// directory), so a host with no networked VM keeps nothing of them. Only ``acquire`` makes
/// them; a lookup on a store that has none finds nothing.
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
        try withLock(creating: true, absent: nil) { () throws(NetworkError) -> (NetworkLease, Bool)? in
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
        }!  // never absent: an acquire makes the files
    }

    /// The VM's lease, or nil.
    public func lease(for vm: VMIdentifier) throws(NetworkError) -> NetworkLease? {
        try withLock(creating: false, absent: nil) { () throws(NetworkError) -> NetworkLease? in try lookup(vm) }
    }

    /// Drops the VM's lease; dropping one that does not exist succeeds. When no lease is left,
    /// `whenLast` runs (still under the lock: no lease can be taken meanwhile) and the store's
    /// files go.
    public func release(_ vm: VMIdentifier, whenLast: () -> Void = {}) throws(NetworkError) {
        try withLock(creating: false, absent: ()) { () throws(NetworkError) in
            let link = "\(vmsDirectory)/\(vm.rawValue)"
            if let index = readIndexLink(link), let lease = try? read(index: index), lease.vm == vm {
                unlink("\(leasesDirectory)/\(index)")
            }
            unlink(link)
            try removeFilesIfUnused(whenLast: whenLast)
        }
    }

    /// Every lease, ordered by index. Damaged lease files are reported in `damaged`.
    public func all() throws(NetworkError) -> (leases: [NetworkLease], damaged: [NetworkError]) {
        try withLock(creating: false, absent: ([], [])) { () throws(NetworkError) -> ([NetworkLease], [NetworkError]) in
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
    func removeIndex(_ index: Int, whenLast: () -> Void = {}) throws(NetworkError) {
        try withLock(creating: false, absent: ()) { () throws(NetworkError) in
            if let lease = try? read(index: index) { unlink("\(vmsDirectory)/\(lease.vm.rawValue)") }
            unlink("\(leasesDirectory)/\(index)")
            try removeFilesIfUnused(whenLast: whenLast)
        }
    }

    /// With no lease at all (under the lock, so none is taken meanwhile): `whenNone`, then the
    /// store's files go (gc, for what a crash or an earlier version left).
    func ifNoLease(_ whenNone: () -> Void) throws(NetworkError) {
        try withLock(creating: true, absent: ()) { () throws(NetworkError) in try removeFilesIfUnused(whenLast: whenNone) }
    }

    /// With no lease left: `whenLast`, then the store's files. Waiters on the lock find its
    /// file gone once they hold it, and start again (``withLock``).
    private func removeFilesIfUnused(whenLast: () -> Void) throws(NetworkError) {
        guard try usedIndices().isEmpty else { return }
        whenLast()
        // Links a crash left behind point at no lease: nothing holds them.
        if let dir = opendir(vmsDirectory) {
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name != ".", name != ".." { unlink("\(vmsDirectory)/\(name)") }
            }
            closedir(dir)
        }
        rmdir(leasesDirectory)
        rmdir(vmsDirectory)
        unlink(lockPath)
        rmdir(directory.string)
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
            if errno == ENOENT { return [] }  // a removal interrupted after this directory went
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

    private var lockPath: String { directory.string + "/lock" }

    /// Runs `body` holding the store's lock. Without the lock file (no lease exists), `absent`
    /// is the answer, unless `creating` (an acquire), which makes the directories and the file.
    /// A lock whose file was removed while this call waited for it (the last release) is
    /// taken again on the new file.
    private func withLock<T>(creating: Bool, absent: T, _ body: () throws(NetworkError) -> T) throws(NetworkError) -> T {
        while true {
            let fd: Int32
            do throws(SystemCallError) {
                if creating, mkdir(directory.string, 0o700) != 0, errno != EEXIST {
                    throw SystemCallError(call: "mkdir", subject: directory.string, errno: errno)
                }
                fd = open(lockPath, O_RDWR | O_CLOEXEC | (creating ? O_CREAT : 0), 0o600)
                if fd < 0 {
                    // Removed between the mkdir and the open by the last release: again.
                    if errno == ENOENT, creating { continue }
                    if errno == ENOENT { return absent }
                    throw SystemCallError(call: "open", subject: lockPath, errno: errno)
                }
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
            var held = stat()
            var current = stat()
            guard fstat(fd, &held) == 0, stat(lockPath, &current) == 0, held.st_dev == current.st_dev, held.st_ino == current.st_ino else {
                continue  // the file this lock is on was removed: no lease existed then
            }
            if creating {
                do throws(SystemCallError) {
                    for path in [leasesDirectory, vmsDirectory] where mkdir(path, 0o700) != 0 && errno != EEXIST {
                        throw SystemCallError(call: "mkdir", subject: path, errno: errno)
                    }
                } catch {
                    throw .system(vm: nil, error)
                }
            }
            return try body()
        }
    }
}
