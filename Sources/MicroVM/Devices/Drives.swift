public import FirecrackerAPI
import Logging
import MicroVMHost
public import SystemPackage

// Block devices of a running VM: media swap and rate limiters (`PATCH /drives/{id}`).

/// Drives with an update in flight (the VM's directory + drive id): two swaps of one drive
/// would race on its staged names.
private let drivesBeingUpdated = DeviceRegistry<Bool>()

extension MicroVM {
    /// Swaps the file behind drive `driveID` of a running or paused VM (media swap): the guest
    /// sees new contents on the same device.
    ///
    /// The new file is staged like the original was (a read-only drive gets a hard link, or a
    /// copy across filesystems; a writable drive a per-VM copy, so `path` is never written), then
    /// it takes the drive's own name in the VM's directory (`/drives/<id>`) and Firecracker is
    /// told to reopen that name. Keeping the name means everything else that finds drives by name
    /// (snapshots copy `/drives/<id>`, a restore links it back) keeps working after a swap. The
    /// previous file is kept under a second name until Firecracker accepted the change, and put
    /// back if it refused, so a failed swap leaves the drive as it was.
    ///
    /// Firecracker reopens the file and raises a config-change interrupt; a guest that caches
    /// the capacity must re-read it. Requests the guest sends after the call see the new file.
    public func updateDrive(id driveID: String, path: String) async throws(MicroVMError) {
        let vmID = id.rawValue
        try VMOperation.updateDevice.check(in: state, id: vmID)
        guard let drive = spec.drives.first(where: { $0.id == driveID }) else {
            throw .invalidSpec(
                id: vmID,
                problems: [SpecProblem(field: "drives", message: "the VM has no drive '\(driveID)'", hint: "drives: \(spec.drives.map(\.id))")])
        }
        let key = directory.string + "\u{0}" + driveID
        guard drivesBeingUpdated.insert(true, for: key) else {
            throw .api(
                id: vmID, operation: "PATCH /drives/\(driveID)",
                .invalidArgument("another update of drive '\(driveID)' is in progress", hint: "wait for it to finish"))
        }
        defer { _ = drivesBeingUpdated.remove(key) }

        let canonical = VMFiles.drive(driveID)
        let name = driveID
        let incoming = driveID + ".incoming"
        let previous = driveID + ".previous"
        let parents = canonical.removingLastComponent().components.map(\.string)
        let incomingPath = canonical.removingLastComponent().appending(incoming)
        let request: StagingRequest =
            drive.isReadOnly ? .readOnly(FilePath(path), at: incomingPath) : .writableCopy(FilePath(path), at: incomingPath)
        let stager = self.stager
        let root = directory

        // 1. Stage under a temporary name, keep the current file under a second name, then move
        //    the new one onto the drive's name (atomic: Firecracker keeps its open descriptor of
        //    the old file until it reopens).
        let method = try await Self.deviceOffPool(id: vmID) { () throws(MicroVMError) -> StagingMethod in
            let drives = try VMDirectory(root: root, relative: parents, vmID: vmID)
            try drives.removeIfPresent(incoming, vmID: vmID)
            try drives.removeIfPresent(previous, vmID: vmID)
            let staged: StagedFile
            do throws(JailError) {
                staged = try stager.stage(request)
            } catch {
                throw .sandbox(id: vmID, error)
            }
            do throws(MicroVMError) {
                try drives.link(name, to: previous, vmID: vmID)
                try drives.rename(incoming, to: name, vmID: vmID)
            } catch {
                try? drives.removeIfPresent(incoming, vmID: vmID)
                try? drives.removeIfPresent(previous, vmID: vmID)
                throw error
            }
            return staged.method
        }

        // 2. Firecracker reopens the name; on refusal the previous file gets its name back.
        let update = PartialDrive(driveId: driveID, pathOnHost: vmmPath(canonical))
        do throws(MicroVMError) {
            try await Self.call("PATCH /drives/\(driveID)", id: vmID) { try await client.patchDrive(update) }
        } catch {
            do {
                try await Self.deviceOffPool(id: vmID) { () throws(MicroVMError) in
                    let drives = try VMDirectory(root: root, relative: parents, vmID: vmID)
                    try drives.rename(previous, to: name, vmID: vmID)
                }
            } catch let restoreError {
                logger.error(
                    "could not put the previous drive file back after a refused swap",
                    metadata: ["drive": "\(driveID)", "error": "\(restoreError)"])
            }
            throw error
        }

        // 3. The previous file is no longer used (a hard link only loses its name here).
        try await Self.deviceOffPool(id: vmID) { () throws(MicroVMError) in
            let drives = try VMDirectory(root: root, relative: parents, vmID: vmID)
            try drives.removeIfPresent(previous, vmID: vmID)
        }
        driveSources[driveID] = path
        persist()
        logger.info("drive swapped", metadata: ["drive": "\(driveID)", "source": "\(path)", "method": "\(method.rawValue)"])
    }

    /// Changes the rate limiter of drive `driveID` (running or paused VM). Firecracker updates
    /// the buckets in place: a nil bucket is left as it is, ``TokenBucket/unlimited`` removes
    /// that limit, any other bucket replaces it (starting full). A request the old bucket holds
    /// back still waits for that bucket's timer.
    public func updateDrive(id driveID: String, rateLimiter: RateLimiter) async throws(MicroVMError) {
        try VMOperation.updateDevice.check(in: state, id: id.rawValue)
        let update = PartialDrive(driveId: driveID, rateLimiter: rateLimiter)
        try await Self.call("PATCH /drives/\(driveID)", id: id.rawValue) { try await client.patchDrive(update) }
        logger.info("drive rate limiter updated", metadata: ["drive": "\(driveID)"])
    }

    /// The host path of drive `driveID`'s file in the VM's directory (a writable drive's per-VM
    /// copy): what the guest writes lands there. Nil for an unknown drive.
    public nonisolated func drivePath(id driveID: String) -> FilePath? {
        spec.drives.contains { $0.id == driveID } ? executor.hostPath(VMFiles.drive(driveID)) : nil
    }
}

extension TokenBucket {
    /// In a run-time update (`PATCH`), removes the limit: Firecracker reads a bucket of size 0
    /// as "no bucket", while a missing bucket means "unchanged".
    public static let unlimited = TokenBucket(size: 0, refillTime: 0)
}
