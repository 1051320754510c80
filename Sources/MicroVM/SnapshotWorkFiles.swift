/// Where snapshot files lie on the host while the library works on them. The library reports
/// no progress of its own; a caller that shows one (the CLI, on a terminal) watches these grow.
public enum SnapshotWorkFiles {
    /// Firecracker's state and memory files during `MicroVM.snapshot(to:)`, before they move
    /// to the destination, under a VM's directory (a jail's `root/`).
    public static func snapshot(inVMDirectory directory: String) -> (state: String, memory: String) {
        (directory + VMFiles.snapshotState.string, directory + VMFiles.snapshotMemory.string)
    }

    /// The snapshot's state and memory as `MicroVM.restore` stages them for Firecracker (a
    /// copy when the snapshot lies on another filesystem than the jail: what takes the time).
    public static func restore(inVMDirectory directory: String) -> (state: String, memory: String) {
        (directory + VMFiles.restoreState.string, directory + VMFiles.restoreMemory.string)
    }
}

/// Where a VM's writable drives are copied while it is created (`MicroVM.create`/`run`): the
/// copy of a large image is what a create waits for.
public enum DriveCopyFiles {
    /// The per-VM copy of drive `id` under a VM's directory (a jail's `root/`).
    public static func copy(of id: String, inVMDirectory directory: String) -> String {
        directory + VMFiles.drive(id).string
    }
}

extension VMRecord {
    public var snapshotWorkFiles: (state: String, memory: String) { SnapshotWorkFiles.snapshot(inVMDirectory: directory) }
    public var restoreWorkFiles: (state: String, memory: String) { SnapshotWorkFiles.restore(inVMDirectory: directory) }
}
