#if canImport(Glibc)
    import Glibc
#endif

/// What Firecracker on x86_64 boots: an uncompressed ELF64 x86-64 kernel (`vmlinux`). Handed
/// the `bzImage` (`vmlinuz`) a distribution installs, or any other file, it fails only after
/// the VM's files, jail and process exist ("Invalid Elf magic number"); the file's first bytes
/// say so before anything is made, and `microvm doctor` reads them the same way.
public enum KernelImage {
    /// What is wrong with the file, as the rest of a sentence that starts with its path
    /// ("is a bzImage …"); nil when it is an ELF64 x86-64 file, or cannot be read (whoever
    /// opens it next says why). Only x86_64 hosts are judged.
    public static func defect(at path: String) -> String? {
        #if arch(x86_64)
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var header = [UInt8](repeating: 0, count: 0x206)
            let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            guard count >= 0 else { return nil }
            if count == 0 { return "is empty" }
            let isELF = count >= 20 && header[0..<4].elementsEqual([0x7F, 0x45, 0x4C, 0x46])
            guard isELF else {
                if count >= 0x206, header[0x202..<0x206].elementsEqual([0x48, 0x64, 0x72, 0x53]) {
                    return "is a bzImage (a compressed, self-decompressing kernel)"
                }
                if count >= 2, header[0] == 0x1F, header[1] == 0x8B { return "is gzip-compressed" }
                let start = header.prefix(min(count, 8)).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: " ")
                return "is not an ELF file (it starts with \(start))"
            }
            if header[4] != 2 { return "is a 32-bit ELF file, not a 64-bit vmlinux" }
            let machine = UInt16(header[18]) | UInt16(header[19]) << 8
            if machine != 0x3E { return "is an ELF file for machine 0x\(String(machine, radix: 16)), not x86-64" }
            return nil
        #else
            return nil
        #endif
    }

    /// What to do about a ``defect(at:)``.
    public static func hint(for path: String) -> String {
        "use the kernel build tree's vmlinux (`file` says 'ELF 64-bit LSB executable, x86-64'), or extract it: scripts/extract-vmlinux \(path) > vmlinux"
    }
}

/// Firecracker's block devices expose their file as raw bytes. A cloud image is often a qcow2
/// file (`*-cloudimg-*.img`): attached as it is, the guest finds no filesystem and panics at
/// "VFS: Unable to mount root fs", long after the launch succeeded. The container formats
/// below say so in their first bytes.
public enum DiskImage {
    /// The container format `path` is in, when it is one Firecracker cannot use ("qcow2",
    /// "VMDK", "VHDX", "VDI"); nil for anything else (raw images have no signature) or a file
    /// that cannot be read.
    public static func containerFormat(at path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var header = [UInt8](repeating: 0, count: 0x44)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count >= 4 else { return nil }
        if header[0..<4].elementsEqual([0x51, 0x46, 0x49, 0xFB]) { return "qcow2" }
        if header[0..<4].elementsEqual(Array("KDMV".utf8)) { return "VMDK" }
        if count >= 8, header[0..<8].elementsEqual(Array("vhdxfile".utf8)) { return "VHDX" }
        if count >= 0x44, header[0x40..<0x44].elementsEqual([0x7F, 0x10, 0xDA, 0xBE]) { return "VDI" }
        return nil
    }
}
