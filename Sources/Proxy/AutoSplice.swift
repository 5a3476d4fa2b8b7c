import Foundation
import Synchronization

/// Hosts learnt for splicing because a client aborted Loupe's masquerade handshake (a pinned
/// or mutually authenticated client): kept until their TTL passes, bounded.
public final class AutoSplice: Sendable {
    public struct Entry: Sendable, Equatable, Expiring {
        public var expires: Date
        public var reason: String
    }

    let entries: Mutex<ExpiringEntries<Entry>>

    public init(capacity: Int = 10_000) { entries = Mutex(ExpiringEntries(capacity: capacity)) }

    public func learn(_ host: String, reason: String, ttl: Double, now: Date = Date()) {
        entries.withLock { $0.insert(Entry(expires: now.addingTimeInterval(ttl), reason: reason), for: host.lowercased(), now: now) }
    }

    /// The live entry for `host`, if any.
    public func lookup(_ host: String, now: Date = Date()) -> Entry? {
        entries.withLock { $0.live(host.lowercased(), now: now) }
    }
}
