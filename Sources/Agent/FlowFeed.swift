import Foundation
import Synchronization

/// The flow log as the agent keeps it: every line goes to the configured sink, into a bounded
/// ring of recent lines (`loupe flows`), and to live followers (`loupe flows --follow`). A line
/// nobody reads yet stays unrendered until `loupe flows` asks for it.
public final class FlowFeed: Sendable {
    struct State {
        var ring: [@Sendable () -> String] = []
        var next = 0
        var followers: [UInt64: @Sendable (String) -> Void] = [:]
        var nextFollower: UInt64 = 0
    }
    let state = Mutex(State())
    let capacity: Int
    let sink: (@Sendable (String) -> Void)?

    /// The file the sink writes to, if it is one (flushed when the agent stops).
    let writer: LineWriter?

    public init(capacity: Int = 1000, sink: (@Sendable (String) -> Void)?) {
        self.capacity = capacity
        self.sink = sink
        writer = nil
    }

    /// Lines go to `writer` (a file or stdout), written off the caller's thread.
    public init(capacity: Int = 1000, writer: LineWriter?) {
        self.capacity = capacity
        if let writer {
            self.sink = { @Sendable line in writer.write(line) }
        } else {
            self.sink = nil
        }
        self.writer = writer
    }

    /// Flow-log lines the file (or pipe) lost so far (see `LineWriter.lostLines`).
    public var lostLines: Int { writer?.lostLines ?? 0 }

    /// Returns once every line so far is in the file, or after `seconds`.
    public func flush(seconds: Double? = nil) { writer?.flush(seconds: seconds) }

    /// Opens the flow log's file again (see `LineWriter.reopen`).
    public func reopen() throws { try writer?.reopen() }

    public func append(_ line: String) { append(rendering: { line }) }

    /// Renders the line only when a sink or follower needs it now.
    public func append(rendering render: @escaping @Sendable () -> String) {
        var rendered: String?
        var entry = render
        if let sink {
            let line = render()
            sink(line)
            rendered = line
            entry = { line }
        }
        let followers = state.withLock { s -> [@Sendable (String) -> Void] in
            if s.ring.count < capacity { s.ring.append(entry) } else { s.ring[s.next] = entry }
            s.next = (s.next + 1) % capacity
            return Array(s.followers.values)
        }
        guard !followers.isEmpty else { return }
        let line = rendered ?? render()
        for follower in followers { follower(line) }
    }

    /// The most recent lines, oldest first.
    public func recent(_ limit: Int) -> [String] {
        let entries = state.withLock { s in
            let ordered = s.ring.count < capacity ? s.ring : Array(s.ring[s.next...] + s.ring[..<s.next])
            return Array(ordered.suffix(limit))
        }
        return entries.map { $0() }
    }

    public func follow(_ receive: @escaping @Sendable (String) -> Void) -> UInt64 {
        state.withLock { s in
            s.nextFollower += 1
            s.followers[s.nextFollower] = receive
            return s.nextFollower
        }
    }

    public func unfollow(_ id: UInt64) { state.withLock { _ = $0.followers.removeValue(forKey: id) } }
}

public struct AgentError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
