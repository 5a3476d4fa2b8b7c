/// When a connection's handshake deadline has passed, when it has gone quiet (nothing moved
/// either way for `quiet`: its buffers can be given back) or idle (nothing for `idle`: it is
/// closed). Sans-IO: the socket handler records activity and asks at the times this returns,
/// with one timer per connection that is never cancelled — not a promise and callback per write
/// (NIO's IdleStateHandler) nor a deadline task cancelled per connection (NIO finds a cancelled
/// task by walking every timer of the event loop, one per idle connection).
struct ActivityClock {
    enum Due: Equatable {
        case deadline
        case quiet
        case idle
    }

    let quiet: UInt64
    let idle: UInt64
    private(set) var last: UInt64
    /// Quiet was reported since the last activity (once per quiet spell).
    private var toldQuiet = false
    /// The handshakes must be done by then (nil once they are).
    private(set) var deadline: UInt64?

    /// Times in nanoseconds on one monotonic clock.
    init(quiet: UInt64, idle: UInt64, now: UInt64) {
        self.quiet = quiet
        self.idle = idle
        last = now
    }

    /// Sets (or, with nil, lifts) the handshake deadline.
    mutating func expect(by deadline: UInt64?) {
        self.deadline = deadline
    }

    /// Bytes moved, either way.
    mutating func moved(at now: UInt64) {
        last = max(last, now)
        toldQuiet = false
    }

    /// What is due at `now`, and when to ask again.
    mutating func check(at now: UInt64) -> (due: Due?, next: UInt64) {
        if let deadline, now >= deadline {
            self.deadline = nil
            return (.deadline, now)  // ask again at once: quiet or idle may be due as well
        }
        let (due, next) = activityCheck(at: now)
        return (due, deadline.map { min($0, next) } ?? next)
    }

    private mutating func activityCheck(at now: UInt64) -> (due: Due?, next: UInt64) {
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
