import CMicroVMSys
import Foundation
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Tells when processes exit, for any number of pidfds, from one background thread.
///
/// A pidfd turns readable when its process exits, whether or not the process is our child, so
/// one epoll loop serves every supervised VMM (jailed ones included, which are not the children
/// of the process that spawned them) without polling and without a thread per VM. Waiting never
/// blocks a thread of Swift's cooperative pool.
final class ExitWatcher: Sendable {
    static let shared = ExitWatcher()

    private let epoll: Int32
    private let waiters = Mutex<[UInt64: CheckedContinuation<Void, Never>]>([:])
    private let nextToken = Atomic<UInt64>(1)

    private init() {
        epoll = cmv_epoll_create()
        precondition(epoll >= 0, "epoll unavailable: \(String(cString: strerror(errno)))")
        let thread = Thread { [self] in run() }
        thread.name = "microvm-exit-watcher"
        thread.stackSize = 64 * 1024
        thread.start()
    }

    private func run() {
        var tokens = [UInt64](repeating: 0, count: 64)
        while true {
            let count = tokens.withUnsafeMutableBufferPointer { buffer in
                cmv_epoll_wait(epoll, buffer.baseAddress, Int32(buffer.count), -1)
            }
            guard count > 0 else { continue }  // EINTR
            for token in tokens[0..<Int(count)] {
                waiters.withLock { $0.removeValue(forKey: token) }?.resume()
            }
        }
    }

    /// Returns once the process behind `pidfd` has exited. The caller keeps `pidfd` open until
    /// this returns.
    func waitForExit(pidfd: Int32) async {
        let token = nextToken.wrappingAdd(1, ordering: .relaxed).oldValue
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiters.withLock { $0[token] = continuation }
            if cmv_epoll_add_oneshot(epoll, pidfd, token) != 0 {
                // Not watchable (closed, or not a pidfd): report it as gone rather than hang.
                waiters.withLock { $0.removeValue(forKey: token) }?.resume()
            }
        }
        _ = cmv_epoll_remove(epoll, pidfd)
    }
}
