import Foundation
@testable import Proxy
import TestSupport
import Testing

/// The bounded tables behind auto-splice and the name probe: the expired go first when full,
/// else the soonest to expire — as a plain scan of every entry would choose — and the heap
/// that finds them stays bounded however often keys come back.
@Suite struct ExpiringEntriesTests {
    struct Stamp: Expiring, Equatable { var expires: Date; var tag: Int }

    /// The plain version: every entry scanned when full.
    struct Scanned {
        let capacity: Int
        var entries: [String: Stamp] = [:]
        mutating func insert(_ value: Stamp, for key: String, now: Date) {
            if entries[key] == nil, entries.count >= capacity {
                entries = entries.filter { $0.value.expires > now }
                if entries.count >= capacity, let soonest = entries.min(by: { $0.value.expires < $1.value.expires })?.key { entries[soonest] = nil }
            }
            entries[key] = value
        }
        mutating func live(_ key: String, now: Date) -> Stamp? {
            guard let value = entries[key] else { return nil }
            guard value.expires > now else { entries[key] = nil; return nil }
            return value
        }
    }

    @Test(arguments: [1, 5, 40])
    func choosesAsAScanWould(capacity: Int) {
        var random = SplitMix(seed: UInt64(capacity))
        var table = ExpiringEntries<Stamp>(capacity: capacity)
        var reference = Scanned(capacity: capacity)
        let t0 = Date(timeIntervalSince1970: 1_000_000)
        for step in 0..<20_000 {
            let now = t0.addingTimeInterval(Double(step))
            let key = "k\(Int.random(in: 0..<(capacity * 3), using: &random))"
            if Bool.random(using: &random) {
                // Distinct expiries: with ties, either of two entries may fairly go first.
                let value = Stamp(expires: now.addingTimeInterval(Double(Int.random(in: 1...200, using: &random)) + Double(step) * 1e-6), tag: step)
                table.insert(value, for: key, now: now)
                reference.insert(value, for: key, now: now)
            } else {
                #expect(table.live(key, now: now) == reference.live(key, now: now), "step \(step), \(key)")
            }
            #expect(table.count == reference.entries.count, "step \(step)")
            #expect(table.count <= capacity)
        }
    }

    @Test func keysInsertedAgainDoNotGrowTheHeap() {
        var table = ExpiringEntries<Stamp>(capacity: 10_000)
        let t0 = Date()
        for i in 0..<50_000 {
            table.insert(Stamp(expires: t0.addingTimeInterval(Double(60 + i % 7)), tag: i), for: "host\(i % 3)", now: t0)
        }
        #expect(table.count == 3 && table.heapCount <= 33, "\(table.heapCount) heap items for 3 entries")
        #expect(table.live("host2", now: t0)?.tag == 49_997, "the last insertion of the key stands")
    }
}
