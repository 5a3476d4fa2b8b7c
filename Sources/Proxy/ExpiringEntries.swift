import Foundation

/// A value that lapses at `expires`.
protocol Expiring { var expires: Date { get } }

/// Entries by key that lapse when they expire, at most `capacity` of them: when full, the
/// expired go first, then the one expiring soonest (learnt splices, name-probe answers — each
/// a client can make more of at will). Not synchronised; callers lock.
struct ExpiringEntries<Value: Expiring> {
    let capacity: Int
    private var entries: [String: Value] = [:]

    init(capacity: Int) { self.capacity = max(1, capacity) }

    var count: Int { entries.count }

    mutating func insert(_ value: Value, for key: String, now: Date) {
        if entries[key] == nil, entries.count >= capacity {
            entries = entries.filter { $0.value.expires > now }
            if entries.count >= capacity, let soonest = entries.min(by: { $0.value.expires < $1.value.expires })?.key { entries[soonest] = nil }
        }
        entries[key] = value
    }

    /// The entry for `key` if it has not expired (an expired one is dropped).
    mutating func live(_ key: String, now: Date) -> Value? {
        guard let value = entries[key] else { return nil }
        guard value.expires > now else { entries[key] = nil; return nil }
        return value
    }
}
