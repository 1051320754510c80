import NIOCore
import Testing

@testable import MicroVM

@Suite("Console bursts: when a reader gathers bytes instead of waking per byte")
struct BurstDetectorTests {
    static let start = NIODeadline.uptimeNanoseconds(1_000_000_000)

    @Test("Eight lines within 40 ms make a burst; a pause or sparse lines end it")
    func bursts() {
        var detector = BurstDetector()
        #expect(!detector.isBursting(now: Self.start), "nothing read yet")
        for line in 0..<7 { detector.lineEnded(at: Self.start + .milliseconds(Int64(line))) }
        #expect(!detector.isBursting(now: Self.start + .milliseconds(7)), "seven lines are not a burst yet")
        detector.lineEnded(at: Self.start + .milliseconds(7))
        #expect(detector.isBursting(now: Self.start + .milliseconds(8)))
        #expect(!detector.isBursting(now: Self.start + .milliseconds(48)), "40 ms without a line: over")
        // The ring keeps only the newest eight: a line every 10 ms (80 ms for eight) is sparse.
        var sparse = BurstDetector()
        for line in 0..<20 { sparse.lineEnded(at: Self.start + .milliseconds(Int64(line) * 10)) }
        #expect(!sparse.isBursting(now: Self.start + .milliseconds(191)))
        // A burst after sparse lines is found once eight of its lines are in.
        for line in 0..<8 { sparse.lineEnded(at: Self.start + .milliseconds(300 + Int64(line))) }
        #expect(sparse.isBursting(now: Self.start + .milliseconds(308)))
    }
}
