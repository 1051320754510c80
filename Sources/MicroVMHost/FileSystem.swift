#if canImport(Glibc)
    import Glibc
#endif

/// Small filesystem queries shared by the host mechanisms.
public enum FileSystem {
    /// Whether something exists at `path`, without following a final symlink.
    public static func exists(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0
    }
}
