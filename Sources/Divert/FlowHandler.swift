import Foundation
import Policy
import Synchronization
import Wire

/// What the connect stage decided for one flow: a flow-log line and the facts the proxy later
/// adds to its own (uid, process, names), found again by the flow's endpoints.
public struct ConnectRecord: Sendable {
    public var flow: UInt64
    public var time: Date
    public var facts: FlowFacts
    public var pid: Int32?
    public var outcome: ConnectOutcome

    /// One JSON object (DESIGN.md "Flow log" fields known at connect).
    public var json: String {
        let f = facts, d = outcome.decision
        var line = JSONLine(time: time)
        line.add("flow", flow)
        line.add("stage", "connect")
        line.add("family", f.family?.rawValue)
        line.add("proto", f.proto.rawValue)
        line.add("src", f.src?.description)
        line.add("dst", f.dst?.description)
        line.add("uid", f.uid)
        line.add("user", f.user)
        line.add("pid", pid)
        line.add("exe", f.exe)
        line.add("names", f.names.isEmpty ? nil : f.names)
        line.add("verdict", d.verdict.rawValue)
        line.add("block", d.blockMode?.rawValue)
        line.add("rule", d.rule)
        line.add("reason", d.reason)
        line.add("note", outcome.note)
        return line.line
    }
}

/// Counters for status and metrics.
public struct FlowCounters: Sendable, Equatable {
    public var byVerdict: [String: Int] = [:]
    public var dnsAnswers = 0
    public var undecidable = 0

    public init() {}
}

/// The queue's flow handler: classifies each packet, learns names from DNS answers, builds
/// FlowFacts (uid/user, pid/exe best effort, names) and answers with stage connect's verdict.
public final class FlowHandler: Sendable {
    public let marks: Marks
    let policy: @Sendable () -> Policy
    let attribution: ProcessAttribution?
    let record: @Sendable (ConnectRecord) -> Void
    let failClosed: Bool
    let names = Mutex(NameCache())
    let dnsStreams = Mutex(DNSStreams<FlowKey>())
    let recent = Mutex(RecentFlows<ConnectRecord>(capacity: 16_384))
    /// First packets seen again shortly after their verdict (a resolver's parallel A/AAAA
    /// queries from one socket, SYN retransmits after a drop) get the same answer, logged once.
    let repeats = Mutex(RepeatCache(slots: 8192))
    static let repeatWindow: Double = 5
    let userNames = Mutex([UInt32: String]())
    let groupNames = Mutex([UInt32: String]())
    let counters = Mutex(FlowCounters())
    let nextFlow = Atomic<UInt64>(1)

    public init(marks: Marks, failClosed: Bool, attribution: ProcessAttribution?, policy: @escaping @Sendable () -> Policy,
                record: @escaping @Sendable (ConnectRecord) -> Void) {
        self.marks = marks
        self.failClosed = failClosed
        self.attribution = attribution
        self.policy = policy
        self.record = record
    }

    public func handle(_ packets: [QueuedPacket]) -> [PacketVerdict] {
        let policy = self.policy()
        let resolveProcesses = policy.usesExecutable
        let now = Date()
        return packets.map { packet in
            let answer: PacketVerdict
            switch FlowClassifier.classify(packet.bytes[...], uid: packet.uid, gid: packet.gid) {
            case .dnsAnswer(let message):
                names.withLock { $0.learn(message, at: now.timeIntervalSince1970) }
                counters.withLock { $0.dnsAnswers += 1 }
                answer = .accept(mark: 0)
            case .dnsSegment(let segment, let server, let client):
                let messages = dnsStreams.withLock { $0.feed(segment, key: FlowKey(src: server, dst: client)) }
                for bytes in messages {
                    guard let message = try? DNSMessage.parse(bytes[...]), message.isResponse else { continue }
                    names.withLock { $0.learn(message, at: now.timeIntervalSince1970) }
                    counters.withLock { $0.dnsAnswers += 1 }
                }
                answer = .accept(mark: 0)
            case .other:
                counters.withLock { $0.undecidable += 1 }
                // Not a flow Loupe decides (or unreadable): the fail mode says what happens.
                answer = failClosed ? .drop : .accept(mark: 0)
            case .newFlow(var facts):
                answer = decide(&facts, policy: policy, resolveProcess: resolveProcesses, at: now)
            }
            // The verdict writes only Loupe's field of the mark; the packet keeps other tools' bits.
            guard let mark = answer.mark else { return answer }
            return PacketVerdict(accept: answer.accept, mark: marks.verdict(mark, forPacketMarked: packet.mark ?? 0))
        }
    }

    func decide(_ facts: inout FlowFacts, policy: Policy, resolveProcess: Bool, at now: Date) -> PacketVerdict {
        let key = facts.src.flatMap { src in facts.dst.map { FlowKey(src: src, dst: $0) } }
        if let key, let seen = repeats.withLock({ $0.find(key) }), seen.proto == facts.proto, now.timeIntervalSince1970 - seen.time < Self.repeatWindow {
            return seen.packet
        }
        if let dst = facts.dst { facts.names = names.withLock { $0.names(for: dst.address, at: now.timeIntervalSince1970) } }
        if let uid = facts.uid { facts.user = userName(uid) }
        if let gid = facts.gid { facts.group = groupName(gid) }
        var pid: Int32?
        if resolveProcess, facts.uid != nil, let found = attribution?.resolve(facts) {
            pid = found.pid
            facts.exe = found.exe
        }
        let outcome = ConnectOutcome.of(policy.decide(.connect, facts), facts: facts, marks: marks)
        let entry = ConnectRecord(flow: nextFlow.wrappingAdd(1, ordering: .relaxed).oldValue, time: now, facts: facts, pid: pid, outcome: outcome)
        if let key {
            if outcome.decision.verdict == .inspect { recent.withLock { $0.insert(entry, for: key) } }
            repeats.withLock { $0.insert(RepeatCache.Entry(key: key, proto: facts.proto, time: now.timeIntervalSince1970, packet: outcome.packet)) }
        }
        counters.withLock { $0.byVerdict[outcome.decision.verdict.rawValue, default: 0] += 1 }
        record(entry)
        return outcome.packet
    }

    /// The connect-stage record of an inspected flow, by its client endpoint and destination.
    public func connectRecord(src: FlowFacts.Endpoint, dst: FlowFacts.Endpoint) -> ConnectRecord? {
        recent.withLock { $0.find(src: src, dst: dst) }
    }

    public var snapshot: FlowCounters { counters.withLock { $0 } }
    public var knownAddresses: Int { names.withLock { $0.count } }

    func userName(_ uid: UInt32) -> String? {
        Self.cachedName(uid, in: userNames) {
            var entry = passwd(), result: UnsafeMutablePointer<passwd>?
            var buffer = [CChar](repeating: 0, count: 4096)
            guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
            return String(cString: entry.pw_name)
        }
    }

    func groupName(_ gid: UInt32) -> String? {
        Self.cachedName(gid, in: groupNames) {
            var entry = group(), result: UnsafeMutablePointer<group>?
            var buffer = [CChar](repeating: 0, count: 4096)
            guard getgrgid_r(gid, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
            return String(cString: entry.gr_name)
        }
    }

    /// NSS lookups read files: each id is looked up once (misses are retried).
    static func cachedName(_ id: UInt32, in cache: borrowing Mutex<[UInt32: String]>, lookup: () -> String?) -> String? {
        if let known = cache.withLock({ $0[id] }) { return known }
        guard let name = lookup() else { return nil }
        cache.withLock { $0[id] = name }
        return name
    }
}

/// A flow's endpoints as fixed-width integers: hashing them costs a few word mixes, not one
/// hasher round per address byte.
struct FlowKey: Hashable {
    var src0: UInt64, src1: UInt64, dst0: UInt64, dst1: UInt64, ports: UInt32

    init(src: FlowFacts.Endpoint, dst: FlowFacts.Endpoint) {
        (src0, src1) = Self.words(src.address)
        (dst0, dst1) = Self.words(dst.address)
        ports = UInt32(src.port) << 16 | UInt32(dst.port)
    }

    static func words(_ address: [UInt8]) -> (UInt64, UInt64) {
        var hi: UInt64 = 0, lo: UInt64 = 0
        for (i, b) in address.enumerated() {
            if i < 8 { hi = hi << 8 | UInt64(b) } else { lo = lo << 8 | UInt64(b) }
        }
        // IPv4 and IPv6 never collide: IPv4 leaves `lo` zero and sets a marker bit.
        return address.count == 4 ? (hi | 1 << 40, 0) : (hi, lo)
    }
}

/// Recent flows by endpoints, bounded (oldest dropped first).
struct RecentFlows<Value> {
    private var byKey: BoundedMap<FlowKey, Value>

    init(capacity: Int) { byKey = BoundedMap(capacity: capacity) }

    mutating func insert(_ value: Value, for key: FlowKey) { byKey.insert(value, for: key) }

    func find(src: FlowFacts.Endpoint, dst: FlowFacts.Endpoint) -> Value? {
        byKey[FlowKey(src: src, dst: dst)]
    }
}

/// First packets answered in the last few seconds, by endpoints: a direct-mapped table, one
/// slot per hash of the key, the newest entry taking the slot. A repeat whose slot another flow
/// took since is decided (and logged) again — what a bounded map does once full, without its
/// hashing, ordering and eviction on every packet of the queue.
struct RepeatCache {
    struct Entry {
        var key: FlowKey
        var proto: FlowFacts.Proto
        /// Seconds since 1970.
        var time: Double
        var packet: PacketVerdict
    }

    private var slots: [Entry?]
    private let mask: Int

    /// `slots` is rounded up to a power of two.
    init(slots: Int) {
        var size = 1
        while size < slots { size <<= 1 }
        self.slots = Array(repeating: nil, count: size)
        mask = size - 1
    }

    mutating func insert(_ entry: Entry) { slots[slot(entry.key)] = entry }

    func find(_ key: FlowKey) -> Entry? {
        guard let entry = slots[slot(key)], entry.key == key else { return nil }
        return entry
    }

    /// A multiply-xorshift mix of the key's words (not keyed: colliding on purpose only makes
    /// the colliding flows' repeats be decided again).
    private func slot(_ key: FlowKey) -> Int {
        var h = key.src0 &* 0x9E37_79B9_7F4A_7C15
        h = (h ^ key.src1 ^ (h >> 29)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ key.dst0 ^ (h >> 31)) &* 0x94D0_49BB_1331_11EB
        h = (h ^ key.dst1 ^ (h >> 29)) &* 0x9E37_79B9_7F4A_7C15
        h = (h ^ UInt64(key.ports) ^ (h >> 32)) &* 0xBF58_476D_1CE4_E5B9
        return Int(truncatingIfNeeded: h ^ (h >> 31)) & mask
    }
}
