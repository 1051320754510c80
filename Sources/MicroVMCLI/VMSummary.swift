import Foundation
import MicroVM

/// One VM as `ls --json` and `inspect --json` show it (stable keys, documented in README).
struct VMSummary: Encodable {
    var id: String
    /// creating (a live driver has not written its first record yet), created, running,
    /// paused, stopped, failed; nil when the record cannot be read.
    var state: String?
    /// The state with its exit reason, in words.
    var detail: String?
    var pid: Int32?
    /// alive, gone, reused, never-started: the recorded Firecracker compared with /proc now.
    var process: String
    /// Whether a live microvm process (or other driver) is attached to it.
    var attached: Bool
    /// Its per-VM monitor: alive, or gone (killed, or exited with its VM); nil without one.
    var monitor: String?
    var sandboxed: Bool?
    var directory: String?
    var createdAt: Date?
    var exitReason: ExitReason?
    /// Why the record cannot be read.
    var problem: String?

    enum CodingKeys: String, CodingKey {
        case id, state, detail, pid, process, attached, monitor, sandboxed, directory
        case createdAt = "created_at"
        case exitReason = "exit_reason"
        case problem
    }

    init(_ listing: VMListing) {
        id = listing.id
        state = listing.state?.name
        detail = listing.state?.description
        pid = listing.record?.pid
        switch listing.process {
        case .alive: process = "alive"
        case .gone: process = "gone"
        case .reused: process = "reused"
        case .neverStarted: process = "never-started"
        }
        attached = listing.supervised
        monitor = listing.record.flatMap { record in record.monitorPID.map { _ in record.monitorIsAlive ? "alive" : "gone" } }
        sandboxed = listing.record?.sandboxed
        directory = listing.record?.directory
        createdAt = listing.record?.createdAt
        exitReason = listing.state?.exitReason
        problem = listing.problem.map { "\($0)" }
        switch listing.creation {
        case .inProgress:
            state = "creating"
            detail = "creating (no record yet)"
            problem = nil
        case .interrupted:
            state = "failed"
            detail = "failed: the driver died while creating it (gc removes what it left)"
            problem = nil
        case nil:
            break
        }
    }
}
