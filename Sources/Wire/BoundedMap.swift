/// A dictionary that keeps at most `capacity` keys, the oldest inserted going first (replacing
/// a key's value keeps its place): for caches keyed by what the network brings, which would
/// otherwise grow with every new peer. Not synchronised; callers lock. Inlinable: used from
/// other modules on hot paths (the queue's inspected flows, the upstream session cache), where
/// an unspecialised generic looked its metadata up at run time on every call.
public struct BoundedMap<Key: Hashable, Value> {
    public let capacity: Int
    @usableFromInline var values: [Key: Value] = [:]
    /// Insertion order; the live keys are `order[start...]`.
    @usableFromInline var order: [Key] = []
    @usableFromInline var start = 0

    @inlinable public init(capacity: Int) { self.capacity = max(1, capacity) }

    @inlinable public var count: Int { values.count }

    @inlinable public subscript(key: Key) -> Value? { values[key] }

    @inlinable public mutating func insert(_ value: Value, for key: Key) {
        if values.updateValue(value, forKey: key) == nil { order.append(key) }
        while values.count > capacity {
            values[order[start]] = nil
            start += 1
        }
        // The spent head of the ring goes once it is most of it (amortised O(1)).
        if start >= min(capacity, 1024), start * 2 > order.count {
            order.removeFirst(start)
            start = 0
        }
    }
}

extension BoundedMap: Sendable where Key: Sendable, Value: Sendable {}
