/// A dictionary that keeps at most `capacity` keys, the oldest inserted going first (replacing
/// a key's value keeps its place): for caches keyed by what the network brings, which would
/// otherwise grow with every new peer. Not synchronised; callers lock.
public struct BoundedMap<Key: Hashable, Value> {
    public let capacity: Int
    private var values: [Key: Value] = [:]
    /// Insertion order; the live keys are `order[start...]`.
    private var order: [Key] = []
    private var start = 0

    public init(capacity: Int) { self.capacity = max(1, capacity) }

    public var count: Int { values.count }

    public subscript(key: Key) -> Value? { values[key] }

    public mutating func insert(_ value: Value, for key: Key) {
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
