#if canImport(Glibc)
    import Glibc
#endif

extension String {
    /// Whether `needle`'s bytes occur in this string's UTF-8, as the guest or Firecracker wrote
    /// them.
    ///
    /// Every console and log line is tested against the waiters' needles. `contains(_:)`, which
    /// this module's Foundation import makes the default for strings, goes through `NSString`'s
    /// `range(of:)`: profiled, that was the largest single cost of reading a launch's log.
    func containsBytes(_ needle: String) -> Bool {
        if needle.isEmpty { return true }
        var haystack = self
        var needle = needle
        return haystack.withUTF8 { text in
            needle.withUTF8 { pattern in
                guard pattern.count <= text.count, let start = text.baseAddress, let wanted = pattern.baseAddress else { return false }
                let last = text.count - pattern.count
                var offset = 0
                // memchr to each candidate first byte, memcmp the rest.
                while offset <= last {
                    guard let found = memchr(start + offset, Int32(wanted.pointee), last - offset + 1) else { return false }
                    offset = UnsafeRawPointer(found) - UnsafeRawPointer(start)
                    if memcmp(start + offset, wanted, pattern.count) == 0 { return true }
                    offset += 1
                }
                return false
            }
        }
    }
}
