/// When a connection has gone quiet (nothing moved either way for `quiet`: its buffers can be
/// given back) or idle (nothing for `idle`: it is closed). Sans-IO: the socket handler records
/// activity and asks at the times this returns, with one timer per connection — not a promise
/// and callback per write, as NIO's IdleStateHandler makes for its write timeout.
struct ActivityClock {
    enum Due: Equatable {
        case quiet
        case idle
    }

    let quiet: UInt64
    let idle: UInt64
    private(set) var last: UInt64
    /// Quiet was reported since the last activity (once per quiet spell).
    private var toldQuiet = false

    /// Times in nanoseconds on one monotonic clock.
    init(quiet: UInt64, idle: UInt64, now: UInt64) {
        self.quiet = quiet
        self.idle = idle
        last = now
    }

    /// Bytes moved, either way.
    mutating func moved(at now: UInt64) {
        last = max(last, now)
        toldQuiet = false
    }

    /// What is due at `now`, and when to ask again.
    mutating func check(at now: UInt64) -> (due: Due?, next: UInt64) {
        let still = now >= last ? now - last : 0
        if still >= idle { return (.idle, now + idle) }
        var due: Due?
        if !toldQuiet, still >= quiet {
            toldQuiet = true
            due = .quiet
        }
        let idleAt = last + idle
        return (due, toldQuiet ? idleAt : min(last + quiet, idleAt))
    }
}
