import Testing
@testable import Proxy

/// The quiet and idle rule of a relaying connection, on a clock the test moves (seconds as ns).
@Suite struct ActivityClockTests {
    static let s: UInt64 = 1_000_000_000

    @Test func quietOncePerSpellIdleAfterNothingMovedEitherWay() {
        let s = Self.s
        var clock = ActivityClock(quiet: 2 * s, idle: 10 * s, now: 100 * s)
        #expect(clock.check(at: 101 * s) == (nil, 102 * s), "nothing due; ask again when quiet would be")
        #expect(clock.check(at: 102 * s) == (.quiet, 110 * s), "two quiet seconds: buffers go back; next, the idle deadline")
        #expect(clock.check(at: 105 * s) == (nil, 110 * s), "quiet is told once a spell")
        clock.moved(at: 106 * s)  // a byte either way ends the spell
        #expect(clock.check(at: 107 * s) == (nil, 108 * s))
        #expect(clock.check(at: 108 * s).due == .quiet)
        #expect(clock.check(at: 116 * s) == (.idle, 126 * s), "ten seconds with nothing moved: idle")
    }

    /// The handshake deadline shares the clock's one timer: due once when it passes, lifted when
    /// the handshakes are done.
    @Test func theHandshakeDeadlineIsOneMoreTimeToAskAt() {
        let s = Self.s
        var clock = ActivityClock(quiet: 2 * s, idle: 10 * s, now: 0)
        clock.expect(by: 1 * s)
        #expect(clock.check(at: s / 2) == (nil, 1 * s), "the deadline comes before quiet")
        #expect(clock.check(at: 1 * s) == (.deadline, 1 * s) && clock.deadline == nil, "told once")
        #expect(clock.check(at: 1 * s) == (nil, 2 * s))
        var lifted = ActivityClock(quiet: 2 * s, idle: 10 * s, now: 0)
        lifted.expect(by: 5 * s)
        #expect(lifted.check(at: 2 * s) == (.quiet, 5 * s))
        lifted.expect(by: nil)  // relaying: only quiet and idle from here
        #expect(lifted.check(at: 6 * s) == (nil, 10 * s))
    }

    @Test func movingKeepsTheConnectionFromQuietAndIdle() {
        let s = Self.s
        var clock = ActivityClock(quiet: 2 * s, idle: 10 * s, now: 0)
        for t in stride(from: 1, through: 30, by: 1) {
            clock.moved(at: UInt64(t) * s)
            #expect(clock.check(at: UInt64(t) * s + s / 2).due == nil, "a steady download (writes only) is neither quiet nor idle")
        }
        clock.moved(at: 5 * s)  // a stale time never moves the clock back
        #expect(clock.last == 30 * s)
    }
}
