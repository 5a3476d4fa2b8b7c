import Foundation

/// A value that lapses at `expires`.
protocol Expiring { var expires: Date { get } }

/// Entries by key that lapse when they expire, at most `capacity` of them: when full, the
/// expired go first, else the one expiring soonest (learnt splices, name-probe
/// answers — each a client can make more of at will, so a full table must stay cheap: a heap
/// by expiry finds the soonest in O(log n) instead of a scan and copy of every entry under
/// the callers' lock). Not synchronised; callers lock.
struct ExpiringEntries<Value: Expiring> {
    let capacity: Int
    private var entries: [String: (value: Value, serial: UInt64)] = [:]
    /// Every insertion's expiry, soonest first; an item whose serial no longer matches its
    /// entry (replaced or dropped) is stale and skipped.
    private var heap: [(expires: Date, key: String, serial: UInt64)] = []
    private var nextSerial: UInt64 = 0

    init(capacity: Int) { self.capacity = max(1, capacity) }

    var count: Int { entries.count }
    /// Items the heap holds, stale ones included (bounded: see `insert`).
    var heapCount: Int { heap.count }

    mutating func insert(_ value: Value, for key: String, now: Date) {
        if entries[key] == nil, entries.count >= capacity { makeRoom(now: now) }
        nextSerial += 1
        entries[key] = (value, nextSerial)
        push((value.expires, key, nextSerial))
        // Keys inserted again and again leave stale items behind: rebuilt from the entries
        // when they outnumber the live ones, so the heap stays within twice the table.
        if heap.count > 2 * max(entries.count, 16) { rebuild() }
    }

    /// The entry for `key` if it has not expired (an expired one is dropped).
    mutating func live(_ key: String, now: Date) -> Value? {
        guard let entry = entries[key] else { return nil }
        guard entry.value.expires > now else { entries[key] = nil; return nil }
        return entry.value
    }

    /// Drops every expired entry, or else the one expiring soonest — the heap's top either way
    /// (each item is popped once, so this is O(log n) an insertion over time).
    private mutating func makeRoom(now: Date) {
        var dropped = false
        while let top = heap.first, !dropped || top.expires <= now {
            popTop()
            guard entries[top.key]?.serial == top.serial else { continue }  // stale
            entries[top.key] = nil
            dropped = true
        }
    }

    private mutating func rebuild() {
        heap = entries.map { ($0.value.value.expires, $0.key, $0.value.serial) }
        for i in stride(from: heap.count / 2 - 1, through: 0, by: -1) { siftDown(i) }
    }

    private mutating func push(_ item: (expires: Date, key: String, serial: UInt64)) {
        heap.append(item)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard heap[child].expires < heap[parent].expires else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    private mutating func popTop() {
        heap.swapAt(0, heap.count - 1)
        heap.removeLast()
        if !heap.isEmpty { siftDown(0) }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1, right = left + 1
            var soonest = parent
            if left < heap.count, heap[left].expires < heap[soonest].expires { soonest = left }
            if right < heap.count, heap[right].expires < heap[soonest].expires { soonest = right }
            if soonest == parent { return }
            heap.swapAt(parent, soonest)
            parent = soonest
        }
    }
}
