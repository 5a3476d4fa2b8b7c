import Wire

/// Address → host names learnt from DNS answers, the `names` fact of stage connect. Shared by the
/// live agent (snooped answers) and capture replay, so both know exactly the same names.
/// Bounded: at most `capacity` addresses and `namesPerAddress` names each; the oldest go first.
public struct NameCache: Sendable {
    /// Answers are kept at least this long: clients connect right after TTL-0 answers
    /// (dnsmasq's local answers carry TTL 0).
    public static let minimumTTL: Double = 30
    public static let namesPerAddress = 16

    struct Entry { var names: [String: Double] }   // name → expiry

    public let capacity: Int
    var entries: [[UInt8]: Entry] = [:]
    /// Insertion order of addresses, for eviction (may hold addresses already gone).
    var order: [[UInt8]] = []
    var orderStart = 0

    public init(capacity: Int = 65_536) { self.capacity = max(1, capacity) }

    public var count: Int { entries.count }

    /// Learns every address a successful response answers.
    public mutating func learn(_ message: DNSMessage, at time: Double) {
        guard message.isResponse, message.rcode == 0 else { return }
        for (address, names, ttl) in message.namesByAddress {
            let expiry = time + max(Double(ttl), Self.minimumTTL)
            if entries[address] == nil {
                evictIfFull(at: time)
                order.append(address)
                entries[address] = Entry(names: [:])
            }
            for name in names { entries[address]!.names[name.lowercased()] = expiry }
            if entries[address]!.names.count > Self.namesPerAddress {
                let keep = entries[address]!.names.sorted { $0.value > $1.value }.prefix(Self.namesPerAddress)
                entries[address]!.names = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
            }
        }
    }

    /// Names of `address` still valid at `time`, sorted.
    public func names(for address: [UInt8], at time: Double) -> [String] {
        guard let entry = entries[address] else { return [] }
        return entry.names.filter { $0.value >= time }.keys.sorted()
    }

    mutating func evictIfFull(at time: Double) {
        while entries.count >= capacity, orderStart < order.count {
            let oldest = order[orderStart]
            orderStart += 1
            entries[oldest] = nil
        }
        if orderStart > 1024 && orderStart * 2 > order.count {
            order.removeFirst(orderStart)
            orderStart = 0
        }
    }
}
