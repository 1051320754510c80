#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A system call that failed, with what it was doing and on what, so the message is actionable.
public struct SystemCallError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The call, e.g. `ioctl(TUNSETIFF)`.
    public var call: String
    /// What it acted on: a path, an interface name, a pid.
    public var subject: String
    public var errno: Int32

    public init(call: String, subject: String, errno: Int32) {
        self.call = call
        self.subject = subject
        self.errno = errno
    }

    public var description: String {
        "\(call) on \(subject) failed: \(String(cString: strerror(errno))) (errno \(errno))"
    }

    /// Runs a C wrapper that returns -1/errno (the convention of CMicroVMSys and most libc
    /// calls) and turns a failure into a typed error. Retries on EINTR.
    @discardableResult
    public static func check<T: BinaryInteger>(
        _ call: String, _ subject: String, _ body: () -> T
    ) throws(SystemCallError) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let code = Glibc.errno
            if code == EINTR { continue }
            throw SystemCallError(call: call, subject: subject, errno: code)
        }
    }
}
