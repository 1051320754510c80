#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif
import CMicroVMSys

/// Copies of files that keep holes exactly where the source has them and copy every data
/// extent verbatim, zeros included. A diff snapshot's memory file is such a file: its extents
/// are the dirtied pages (an all-zero page among them must still be written), its holes the
/// pages left as they were.
public enum SparseFile {
    /// Copies `source` to a new file `destination` (created with `mode`, failing if it exists):
    /// the same size, the same holes, the same data. Returns the number of data bytes copied.
    @discardableResult
    public static func copy(_ source: String, to destination: String, mode: UInt32 = 0o600) throws(SystemCallError) -> Int64 {
        let input = try SystemCallError.check("open", source) { open(source, O_RDONLY | O_CLOEXEC) }
        defer { close(input) }
        let output = try SystemCallError.check("open(O_CREAT|O_EXCL)", destination) {
            open(destination, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode_t(mode))
        }
        var keep = false
        defer {
            close(output)
            if !keep { unlink(destination) }
        }
        let size = try JailFileSystem.fstatDescriptor(input, source).st_size
        if cmv_ficlone(output, input) == 0 {
            keep = true
            return Int64(size)
        }
        let copied = try copyExtents(from: input, to: output, source: source, destination: destination)
        try SystemCallError.check("ftruncate", destination) { ftruncate(output, size) }
        keep = true
        return copied
    }

    /// Writes every data extent of `source` over `destination` at the same offsets, leaving the
    /// destination's bytes under the source's holes as they are (a diff applied onto a base).
    @discardableResult
    public static func overlay(_ source: String, onto destination: String) throws(SystemCallError) -> Int64 {
        let input = try SystemCallError.check("open", source) { open(source, O_RDONLY | O_CLOEXEC) }
        defer { close(input) }
        let output = try SystemCallError.check("open", destination) { open(destination, O_WRONLY | O_NOFOLLOW | O_CLOEXEC) }
        defer { close(output) }
        return try copyExtents(from: input, to: output, source: source, destination: destination)
    }

    /// Copies every data extent of `input` to the same offsets of `output`; holes are skipped.
    /// With `skippingZeroBlocks`, 64 KiB blocks of zeros inside extents are skipped too (they
    /// stay holes in a new file: right for an image copy, wrong for an overlay).
    static func copyExtents(
        from input: Int32, to output: Int32, source: String, destination: String, skippingZeroBlocks: Bool = false
    ) throws(SystemCallError) -> Int64 {
        let size = try JailFileSystem.fstatDescriptor(input, source).st_size
        let chunk = 1 << 20
        let zeroBlock = 64 * 1024
        var buffer = [UInt8](repeating: 0, count: chunk)
        var offset: off_t = 0
        var copied: Int64 = 0
        while offset < size {
            var start = cmv_seek_data(input, offset)
            if start < 0 {
                if errno == ENXIO { break }  // only a hole remains
                start = offset  // no SEEK_DATA: everything is data
            }
            var end = cmv_seek_hole(input, start)
            if end < 0 { end = size }
            var position = start
            while position < end {
                let want = Int(min(off_t(chunk), end - position))
                let count = try SystemCallError.check("pread", source) {
                    buffer.withUnsafeMutableBytes { pread(input, $0.baseAddress, want, position) }
                }
                if count == 0 { break }
                var block = 0
                while block < count {
                    let blockEnd = skippingZeroBlocks ? min(block + zeroBlock, count) : count
                    if !skippingZeroBlocks || !buffer[block..<blockEnd].allSatisfy({ $0 == 0 }) {
                        var written = block
                        while written < blockEnd {
                            written += try SystemCallError.check("pwrite", destination) {
                                buffer.withUnsafeBytes {
                                    pwrite(output, $0.baseAddress! + written, blockEnd - written, position + off_t(written))
                                }
                            }
                        }
                        copied += Int64(blockEnd - block)
                    }
                    block = blockEnd
                }
                position += off_t(count)
            }
            offset = max(end, position)
        }
        return copied
    }
}
