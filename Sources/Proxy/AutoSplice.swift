import Foundation
import Synchronization

/// Hosts learnt for splicing because a client aborted Loupe's masquerade handshake (a pinned
/// or mutually authenticated client): kept until their TTL passes, bounded.
public final class AutoSplice: Sendable {
    public struct Entry: Sendable, Equatable {
        public var expires: Date
        public var reason: String
    }

    let entries = Mutex<[String: Entry]>([:])
    let capacity: Int

    public init(capacity: Int = 10_000) { self.capacity = capacity }

    public func learn(_ host: String, reason: String, ttl: Double, now: Date = Date()) {
        entries.withLock { entries in
            if entries.count >= capacity { entries = entries.filter { $0.value.expires > now } }
            if entries.count >= capacity, let oldest = entries.min(by: { $0.value.expires < $1.value.expires })?.key { entries[oldest] = nil }
            entries[host.lowercased()] = Entry(expires: now.addingTimeInterval(ttl), reason: reason)
        }
    }

    /// The live entry for `host`, if any.
    public func lookup(_ host: String, now: Date = Date()) -> Entry? {
        entries.withLock { entries in
            guard let entry = entries[host.lowercased()] else { return nil }
            if entry.expires <= now { entries[host.lowercased()] = nil; return nil }
            return entry
        }
    }
}
