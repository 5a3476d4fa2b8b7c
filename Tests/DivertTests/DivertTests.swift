@testable import Divert
import Foundation
import Glibc
import Policy
import TestSupport
import Testing
import Wire

@Suite struct FlowClassifierTests {
    @Test func firstPacketsBecomeFacts() throws {
        guard case .newFlow(let tcp) = FlowClassifier.classify(TestPackets.tcpSYN(from: "10.0.0.1", 40000, to: "192.0.2.9", 443)[...], uid: 1000, gid: 100) else {
            Issue.record("a TCP SYN is a new flow"); return
        }
        #expect(tcp.proto == .tcp && tcp.src?.description == "10.0.0.1:40000" && tcp.dst?.description == "192.0.2.9:443")
        #expect(tcp.uid == 1000 && tcp.gid == 100 && tcp.family == .ipv4)
        guard case .newFlow(let udp) = FlowClassifier.classify(TestPackets.udp(from: "2001:db8::1", 5000, to: "2001:db8::2", 443)[...], uid: nil, gid: nil) else {
            Issue.record("a UDP datagram is a new flow"); return
        }
        #expect(udp.proto == .udp && udp.dst?.description == "[2001:db8::2]:443" && udp.family == .ipv6 && udp.uid == nil)
    }

    @Test func dnsAnswersAreSnooped() {
        let packet = TestPackets.udp(from: "10.0.0.53", 53, to: "10.0.0.1", 33333, payload: TestPackets.dnsAnswer("shop.example", "192.0.2.44"))
        guard case .dnsAnswer(let message) = FlowClassifier.classify(packet[...], uid: nil, gid: nil) else {
            Issue.record("an answer from port 53 is snooped"); return
        }
        #expect(message.namesByAddress.first?.names == ["shop.example"])
    }

    @Test func hostileBytesAreNotFlows() {
        for bytes: [UInt8] in [[], [0x45], [0x60, 0, 0], Array(repeating: 0xFF, count: 40),
                               TestPackets.ip("10.0.0.1", "10.0.0.2", transport: 6, [0, 1]),       // truncated TCP
                               TestPackets.ip("10.0.0.1", "10.0.0.2", transport: 1, [8, 0, 0, 0])] {  // ICMP
            guard case .other(let why) = FlowClassifier.classify(bytes[...], uid: nil, gid: nil) else {
                Issue.record("\(bytes) must not be a flow"); continue
            }
            #expect(!why.isEmpty)
        }
    }
}

@Suite struct ConnectOutcomeTests {
    let marks = Marks()

    func decision(_ verdict: Verdict, _ mode: BlockMode? = nil) -> Decision {
        Decision(stage: .connect, verdict: verdict, rule: "r", reason: "because", blockMode: mode)
    }

    func facts(_ proto: FlowFacts.Proto, port: UInt16) -> FlowFacts {
        var f = FlowFacts()
        f.proto = proto
        f.dst = FlowFacts.Endpoint(address: [192, 0, 2, 1], port: port)
        return f
    }

    @Test func verdictsBecomeMarks() {
        #expect(ConnectOutcome.of(decision(.allow), facts: facts(.tcp, port: 80), marks: marks).packet == .accept(mark: marks.allow))
        #expect(ConnectOutcome.of(decision(.inspect), facts: facts(.tcp, port: 443), marks: marks).packet == .accept(mark: marks.inspect))
        #expect(ConnectOutcome.of(decision(.block, .reject), facts: facts(.tcp, port: 80), marks: marks).packet == .accept(mark: marks.reject))
        #expect(ConnectOutcome.of(decision(.block, .drop), facts: facts(.tcp, port: 80), marks: marks).packet == .drop)
    }

    @Test func quicToInspectedDestinationsIsRefused() {
        let quic = ConnectOutcome.of(decision(.inspect), facts: facts(.udp, port: 443), marks: marks)
        #expect(quic.packet == .accept(mark: marks.reject) && quic.decision.verdict == .block && quic.decision.blockMode == .reject)
        #expect(quic.note?.contains("QUIC") == true)
        let otherUDP = ConnectOutcome.of(decision(.inspect), facts: facts(.udp, port: 5353), marks: marks)
        #expect(otherUDP.packet == .accept(mark: marks.allow) && otherUDP.note != nil)
    }
}

@Suite struct FlowHandlerTests {
    /// Allow by default; flows to names under shop.example dropped.
    static func noShop() throws -> Policy {
        try Policy.parse("""
            [defaults]
            connect = "allow"
            hello = "bump"
            request = "allow"
            [[rule]]
            name = "no-shop"
            stage = "connect"
            names = ["*.shop.example"]
            action = "block"
            block = "drop"
            """, file: "p.toml")
    }

    /// A DNS answer teaches a name; the next flow to that address matches a `names` rule.
    @Test func namesFromSnoopedAnswersDecide() throws {
        let policy = try FlowHandlerTests.noShop()
        let records = RecordBox()
        let handler = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { records.add($0) })
        let before = handler.handle([packet(TestPackets.tcpSYN(from: "10.0.0.1", 40000, to: "192.0.2.44", 443))])
        #expect(before == [.accept(mark: Marks().allow)], "no name known yet")
        let answer = TestPackets.udp(from: "10.0.0.53", 53, to: "10.0.0.1", 33333, payload: TestPackets.dnsAnswer("www.shop.example", "192.0.2.44", ttl: 0))
        let verdicts = handler.handle([packet(answer), packet(TestPackets.tcpSYN(from: "10.0.0.1", 40001, to: "192.0.2.44", 443)),
                                       packet([0x45, 1, 2])])
        #expect(verdicts == [.accept(mark: 0), .drop, .accept(mark: 0)], "answer passes, flow dropped, junk passes (fail open)")
        let last = try #require(records.all.last)
        #expect(last.facts.names == ["www.shop.example"] && last.outcome.decision.rule == "no-shop")
        #expect(last.json.contains("\"names\":[\"www.shop.example\"]") && last.json.contains("\"verdict\":\"block\""))
        #expect(handler.snapshot.byVerdict == ["allow": 1, "block": 1] && handler.snapshot.dnsAnswers == 1 && handler.snapshot.undecidable == 1)

        let again = handler.handle([packet(TestPackets.tcpSYN(from: "10.0.0.1", 40001, to: "192.0.2.44", 443))])
        #expect(again == [.drop] && records.all.count == 2, "a retransmitted SYN gets the same verdict, logged once")

        let strict = FlowHandler(marks: Marks(), failClosed: true, attribution: nil, policy: { policy }, record: { _ in })
        #expect(strict.handle([packet([0x45, 1, 2])]) == [.drop], "fail closed: what cannot be read is dropped")
    }

    @Test func inspectedFlowsAreFoundAgainByEndpoints() throws {
        let policy = Policy(defaults: [.connect: .inspect, .hello: .bump, .request: .allow], rules: [])
        let handler = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { _ in })
        var syn = QueuedPacket(queue: 0, id: 1, uid: 0, gid: 0, mark: nil, bytes: TestPackets.tcpSYN(from: "10.0.0.1", 40002, to: "192.0.2.5", 443))
        syn.uid = 0
        _ = handler.handle([syn])
        let found = handler.connectRecord(src: FlowFacts.Endpoint("10.0.0.1:40002")!, dst: FlowFacts.Endpoint("192.0.2.5:443")!)
        #expect(found?.facts.uid == 0 && found?.facts.user == "root")
        #expect(handler.connectRecord(src: FlowFacts.Endpoint("10.0.0.1:40003")!, dst: FlowFacts.Endpoint("192.0.2.5:443")!) == nil)
    }

    /// Repeats of many flows at once (a resolver's A/AAAA pairs, SYN retransmits under load):
    /// each gets its own first verdict and is logged once, and no flow takes another's answer.
    @Test func repeatsOfManyFlowsKeepTheirOwnVerdicts() throws {
        let policy = try Policy.parse("""
            [defaults]
            connect = "allow"
            hello = "bump"
            request = "allow"
            [[rule]]
            name = "odd-ports"
            stage = "connect"
            src_port = [40001, 40003, 40005, 40007]
            action = "block"
            block = "drop"
            """, file: "p.toml")
        let records = RecordBox()
        let handler = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { records.add($0) })
        let flows = (0..<8).map { TestPackets.tcpSYN(from: "10.0.0.1", 40000 + $0, to: "192.0.2.9", 443) }
        let first = handler.handle(flows.map(packet))
        let again = handler.handle(flows.reversed().map(packet))
        #expect(first == (0..<8).map { $0 % 2 == 1 ? PacketVerdict.drop : .accept(mark: Marks().allow) })
        #expect(again == first.reversed() && records.all.count == 8, "each repeat answered as its own first packet, logged once")
    }

    /// The repeat table: a slot per key hash, the newest entry wins; a key finds only itself.
    @Test func repeatCacheFindsOnlyItsOwnKey() throws {
        var cache = RepeatCache(slots: 4)
        let keys = (0..<64).map { FlowKey(src: FlowFacts.Endpoint("10.0.0.1:\(50000 + $0)")!, dst: FlowFacts.Endpoint("192.0.2.1:443")!) }
        for (i, key) in keys.enumerated() {
            cache.insert(RepeatCache.Entry(key: key, proto: .tcp, time: Double(i), packet: .accept(mark: UInt32(i))))
            #expect(cache.find(key)?.packet == .accept(mark: UInt32(i)), "the entry just filed is found")
        }
        var found = 0
        for (i, key) in keys.enumerated() {
            guard let entry = cache.find(key) else { continue }
            #expect(entry.key == key && entry.time == Double(i), "a slot answers only for the key it holds")
            found += 1
        }
        #expect(found >= 1 && found <= 4, "four slots hold at most four flows (\(found))")
        let v6 = FlowKey(src: FlowFacts.Endpoint("[2001:db8::1]:50000")!, dst: FlowFacts.Endpoint("[2001:db8::2]:443")!)
        #expect(cache.find(v6) == nil)
    }

    /// Verdicts set Loupe's field of the mark and keep the bits other tools set on the packet.
    @Test func verdictsKeepOtherToolsBits() throws {
        let policy = Policy(defaults: [.connect: .inspect, .hello: .bump, .request: .allow], rules: [])
        let m = Marks()
        let handler = FlowHandler(marks: m, failClosed: false, attribution: nil, policy: { policy }, record: { _ in })
        let syn = QueuedPacket(queue: 0, id: 1, uid: 0, gid: 0, mark: 0x0004_4000 | m.queue, bytes: TestPackets.tcpSYN(from: "10.0.0.1", 40010, to: "192.0.2.5", 443))
        let answer = TestPackets.udp(from: "10.0.0.53", 53, to: "10.0.0.1", 33333, payload: TestPackets.dnsAnswer("a.example", "192.0.2.5", ttl: 0))
        let dns = QueuedPacket(queue: 100, id: 2, uid: nil, gid: nil, mark: 0xCA6C | m.dns, bytes: answer)
        #expect(handler.handle([syn, dns]) == [.accept(mark: 0x0004_4000 | m.inspect), .accept(mark: 0xCA6C)])
        // Allowed, a packet another tool marked leaves with exactly its mark (the kernel would
        // re-route it by a changed one); unmarked ones carry the verdict into the conntrack mark.
        let allowAll = Policy(defaults: [.connect: .allow, .hello: .bump, .request: .allow], rules: [])
        let allowing = FlowHandler(marks: m, failClosed: false, attribution: nil, policy: { allowAll }, record: { _ in })
        let wireguard = QueuedPacket(queue: 0, id: 3, uid: 0, gid: 0, mark: 0xCA6C | m.queue, bytes: TestPackets.udp(from: "10.0.0.1", 51820, to: "192.0.2.7", 51820, payload: [1, 0, 0, 0]))
        let plain = QueuedPacket(queue: 0, id: 4, uid: 0, gid: 0, mark: m.queue, bytes: TestPackets.tcpSYN(from: "10.0.0.1", 40011, to: "192.0.2.5", 443))
        #expect(allowing.handle([wireguard, plain]) == [.accept(mark: 0xCA6C), .accept(mark: m.allow)])
    }

    func packet(_ bytes: [UInt8]) -> QueuedPacket { QueuedPacket(queue: 0, id: 1, uid: nil, gid: nil, mark: nil, bytes: bytes) }
}

final class RecordBox: @unchecked Sendable {
    let lock = NSLock()
    var records: [ConnectRecord] = []
    func add(_ r: ConnectRecord) { lock.withLock { records.append(r) } }
    var all: [ConnectRecord] { lock.withLock { records } }
}

/// DNS over TCP: messages framed by a two-byte length, split and joined across segments.
@Suite struct DNSStreamsTests {
    let server = FlowFacts.Endpoint("10.0.0.53:53")!, client = FlowFacts.Endpoint("10.0.0.1:40000")!
    var key: FlowKey { FlowKey(src: server, dst: client) }

    func segment(_ seq: UInt32, _ flags: UInt8, _ payload: [UInt8] = []) throws -> TCPSegment {
        let ip = try IPPacket.parse(TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: seq, flags: flags, payload: payload)[...])
        return try TCPSegment.parse(ip.payload)
    }

    func framed(_ message: [UInt8]) -> [UInt8] { [UInt8(message.count >> 8), UInt8(message.count & 0xFF)] + message }

    @Test func messagesAcrossAndWithinSegments() throws {
        var streams = DNSStreams<FlowKey>()
        let a = TestPackets.dnsAnswer("a.test", "192.0.2.1"), b = TestPackets.dnsAnswer("b.test", "192.0.2.2")
        let bytes = framed(a) + framed(b)
        #expect(streams.feed(try segment(0xFFFF_FFF0, 0x10, bytes), key: key).isEmpty, "no SYN-ACK seen: not followed")
        #expect(streams.feed(try segment(0xFFFF_FFF0, 0x12), key: key).isEmpty && streams.count == 1)
        // Sequence numbers wrap inside this stream; the first message is split mid-length.
        #expect(streams.feed(try segment(0xFFFF_FFF1, 0x18, Array(bytes[..<1])), key: key).isEmpty)
        #expect(streams.feed(try segment(0xFFFF_FFF2, 0x18, Array(bytes[1..<10])), key: key).isEmpty)
        #expect(streams.feed(try segment(0xFFFF_FFF2, 0x18, Array(bytes[1..<10])), key: key).isEmpty, "a retransmission adds nothing")
        let rest = try segment(0xFFFF_FFF1 &+ 10, 0x18, Array(bytes[10...]))
        #expect(streams.feed(rest, key: key) == [a, b], "both messages, in order")
        #expect(streams.feed(try segment(0xFFFF_FFF1 &+ UInt32(bytes.count), 0x11), key: key).isEmpty && streams.count == 0, "FIN ends it")
    }

    @Test func aGapEndsTheStream() throws {
        var streams = DNSStreams<FlowKey>()
        let a = framed(TestPackets.dnsAnswer("a.test", "192.0.2.1"))
        _ = streams.feed(try segment(100, 0x12), key: key)
        #expect(streams.feed(try segment(105, 0x18, Array(a[4...])), key: key).isEmpty && streams.count == 0, "a missing segment: unframable")
        #expect(streams.feed(try segment(101, 0x18, a), key: key).isEmpty, "not followed any more")
    }

    @Test func boundedStreamsAndTheLargestMessage() throws {
        var streams = DNSStreams<FlowKey>(capacity: 2)
        for port in 40000..<40005 {
            _ = streams.feed(try segment(1, 0x12), key: FlowKey(src: server, dst: FlowFacts.Endpoint("10.0.0.1:\(port)")!))
        }
        #expect(streams.count == 2, "at most `capacity` streams followed")
        var big = DNSStreams<FlowKey>()
        _ = big.feed(try segment(0, 0x12), key: key)
        // A length prefix announcing 65,535 bytes: held until they are all there.
        #expect(big.feed(try segment(1, 0x18, [0xFF, 0xFF] + [UInt8](repeating: 0, count: 40_000)), key: key).isEmpty && big.count == 1)
        #expect(big.feed(try segment(40_003, 0x18, [UInt8](repeating: 0, count: 30_000)), key: key).count == 1, "the 65,535-byte message")
    }

    /// Through the handler: a name learnt over TCP decides the next flow, as one over UDP does.
    @Test func namesLearntOverTCPDecide() throws {
        let policy = try FlowHandlerTests.noShop()
        let handler = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { _ in })
        func queued(_ bytes: [UInt8]) -> QueuedPacket { QueuedPacket(queue: 100, id: 1, uid: nil, gid: nil, mark: Marks().dns, bytes: bytes) }
        let answer = framed(TestPackets.dnsAnswer("www.shop.example", "192.0.2.44", ttl: 0))
        let segments = [TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 7, flags: 0x12),
                        TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 8, flags: 0x18, payload: Array(answer[..<20])),
                        TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 28, flags: 0x18, payload: Array(answer[20...]))]
        #expect(handler.handle(segments.map(queued)) == Array(repeating: .accept(mark: 0), count: 3), "every segment passes, Loupe's field cleared")
        #expect(handler.snapshot.dnsAnswers == 1)
        let syn = QueuedPacket(queue: 0, id: 2, uid: nil, gid: nil, mark: nil, bytes: TestPackets.tcpSYN(from: "10.0.0.1", 40001, to: "192.0.2.44", 443))
        #expect(handler.handle([syn]) == [.drop], "the name learnt over TCP decides")
        // A bare SYN from port 53 is a new flow, not a DNS segment.
        guard case .newFlow = FlowClassifier.classify(TestPackets.tcpSYN(from: "10.0.0.1", 53, to: "192.0.2.9", 80)[...], uid: nil, gid: nil) else {
            Issue.record("a SYN from port 53 starts a flow"); return
        }
    }
}

@Suite struct NameCacheTests {
    func message(_ name: String, _ address: String, ttl: UInt32) throws -> DNSMessage {
        try DNSMessage.parse(TestPackets.dnsAnswer(name, address, ttl: ttl)[...])
    }

    @Test func ttlsAreHonouredWithAFloor() throws {
        var cache = NameCache()
        try cache.learn(message("a.example", "192.0.2.1", ttl: 0), at: 1000)
        try cache.learn(message("b.example", "192.0.2.1", ttl: 600), at: 1000)
        #expect(cache.names(for: [192, 0, 2, 1], at: 1029) == ["a.example", "b.example"], "TTL 0 still lasts the 30 s floor")
        #expect(cache.names(for: [192, 0, 2, 1], at: 1031) == ["b.example"])
        #expect(cache.names(for: [192, 0, 2, 1], at: 1601) == [])
    }

    @Test func boundedInAddresses() throws {
        var cache = NameCache(capacity: 3)
        for i in 1...5 { try cache.learn(message("h\(i).example", "192.0.2.\(i)", ttl: 300), at: 0) }
        #expect(cache.count == 3)
        #expect(cache.names(for: [192, 0, 2, 1], at: 1) == [] && cache.names(for: [192, 0, 2, 5], at: 1) == ["h5.example"], "oldest evicted first")
    }
}

@Suite struct ProcNetTableTests {
    let table = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
           1: 0100000A:9C40 0200000A:01BB 02 00000001:00000000 01:00000060 00000000  1000        0 2222 2 0000000000000000 200 0 0 10 -1
           2: 00000000:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
        """

    @Test func findsTheSocketOfALocalEndpoint() {
        #expect(ProcNetTable.inode(in: table[...], local: FlowFacts.Endpoint("10.0.0.1:40000")!) == 2222)
        #expect(ProcNetTable.inode(in: table[...], local: FlowFacts.Endpoint("10.9.9.9:53")!) == 3333, "wildcard-bound socket")
        #expect(ProcNetTable.inode(in: table[...], local: FlowFacts.Endpoint("10.0.0.1:40001")!) == nil)
        let v6 = """
              sl  local_address                         remote_address                        st
               0: 0000000000000000FFFF00000100000A:9C41 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 4444 1
               1: B80D0120000000000000000001000000:9C42 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000     0        0 5555 1
            """
        #expect(ProcNetTable.inode(in: v6[...], local: FlowFacts.Endpoint("10.0.0.1:40001")!) == 4444, "IPv4 on a dual-stack socket")
        #expect(ProcNetTable.inode(in: v6[...], local: FlowFacts.Endpoint("[2001:db8::1]:40002")!) == 5555)
    }
}

/// The fd scan behind `exe` facts, on a made-up /proc: the socket's process is found, the
/// newest processes of the socket's user first, and the scan stops there.
@Suite struct ProcessScanTests {
    @Test func scanStopsAtTheSocketsProcess() throws {
        let root = TestEnv.scratch("proc")
        defer { TestEnv.remove(root) }
        let fm = FileManager.default
        for (pid, inodes) in [(100, [11, 12]), (200, [21]), (300, [31, 32])] {
            try fm.createDirectory(atPath: "\(root)/\(pid)/fd", withIntermediateDirectories: true)
            for (fd, inode) in inodes.enumerated() {
                try fm.createSymbolicLink(atPath: "\(root)/\(pid)/fd/\(fd + 3)", withDestinationPath: "socket:[\(inode)]")
            }
            try fm.createSymbolicLink(atPath: "\(root)/\(pid)/fd/0", withDestinationPath: "/dev/null")
            try fm.createSymbolicLink(atPath: "\(root)/\(pid)/exe", withDestinationPath: "/usr/bin/tool\(pid)")
        }
        try fm.createDirectory(atPath: "\(root)/net", withIntermediateDirectories: true)
        try """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 0100000A:9C40 0200000A:01BB 02 00000001:00000000 01:00000060 00000000  1000        0 21 2 0000000000000000 200 0 0 10 -1
            """.write(toFile: "\(root)/net/tcp", atomically: true, encoding: .utf8)
        let attribution = ProcessAttribution(procRoot: root, rescanInterval: 0)
        let me = getuid()
        let seen = attribution.scan(for: 21, uid: me)
        #expect(seen[21] == 200 && seen[31] == 300 && seen[11] == nil, "newest first, stopped at 200: \(seen)")
        #expect(attribution.scan()[11] == 100, "without a target, everything")
        var facts = FlowFacts()
        facts.src = FlowFacts.Endpoint("10.0.0.1:40000")!
        facts.dst = FlowFacts.Endpoint("10.0.0.2:443")!
        facts.uid = me
        let found = attribution.resolve(facts)
        #expect(found?.pid == 200 && found?.exe == "/usr/bin/tool200")
    }
}

/// sock_diag against real sockets of this process: the inode it names is the socket's own
/// (fstat's st_ino), and the attribution finds this process. Every socket is close-on-exec: a
/// test running beside this one spawns processes, which would otherwise inherit them — and hold
/// the same socket, a newer holder than this process (a CI run found pid 4615, a child).
@Suite struct SocketDiagTests {
    /// socket(2) with SOCK_CLOEXEC.
    func privateSocket(_ family: Int32, _ type: Int32) -> Int32 {
        socket(family, type | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// A socket bound to `address` (an ephemeral port), with its local endpoint.
    func bound(_ type: Int32, _ address: String) throws -> (fd: Int32, local: FlowFacts.Endpoint) {
        let v6 = address.contains(":")
        let fd = privateSocket(v6 ? AF_INET6 : AF_INET, type)
        try #require(fd >= 0)
        var storage = sockaddr_storage()
        var length: socklen_t
        if v6 {
            var a = sockaddr_in6(); a.sin6_family = sa_family_t(AF_INET6); inet_pton(AF_INET6, address, &a.sin6_addr)
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            withUnsafeBytes(of: a) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
        } else {
            var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); inet_pton(AF_INET, address, &a.sin_addr)
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
            withUnsafeBytes(of: a) { raw in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: raw) } }
        }
        try #require(withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } } == 0)
        return (fd, try local(fd))
    }

    func local(_ fd: Int32) throws -> FlowFacts.Endpoint {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        try #require(withUnsafeMutablePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } } == 0)
        return withUnsafeBytes(of: storage) { raw in
            if storage.ss_family == sa_family_t(AF_INET6) {
                let a = raw.load(as: sockaddr_in6.self)
                return FlowFacts.Endpoint(address: withUnsafeBytes(of: a.sin6_addr) { Array($0) }, port: UInt16(bigEndian: a.sin6_port))
            }
            let a = raw.load(as: sockaddr_in.self)
            return FlowFacts.Endpoint(address: withUnsafeBytes(of: a.sin_addr) { Array($0) }, port: UInt16(bigEndian: a.sin_port))
        }
    }

    func inode(_ fd: Int32) -> UInt64 {
        var info = stat()
        fstat(fd, &info)
        return UInt64(info.st_ino)
    }

    func connect(_ fd: Int32, to peer: FlowFacts.Endpoint) -> Int32 {
        let text = IPAddress.format(peer.address)
        if peer.address.count == 16 {
            var a = sockaddr_in6(); a.sin6_family = sa_family_t(AF_INET6); a.sin6_port = peer.port.bigEndian; inet_pton(AF_INET6, text, &a.sin6_addr)
            return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        var a = sockaddr_in(); a.sin_family = sa_family_t(AF_INET); a.sin_port = peer.port.bigEndian; inet_pton(AF_INET, text, &a.sin_addr)
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }

    @Test(arguments: ["127.0.0.1", "::1"])
    func tcpAndUDPSocketsAreFound(address: String) throws {
        let server = try bound(Int32(SOCK_STREAM.rawValue), address)
        defer { close(server.fd) }
        try #require(listen(server.fd, 256) == 0)
        let client = privateSocket(address.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue))
        defer { close(client) }
        try #require(connect(client, to: server.local) == 0)
        let clientEnd = try local(client)
        #expect(SocketDiag.inode(proto: .tcp, src: clientEnd, dst: server.local) == inode(client), "the connecting socket")
        #expect(SocketDiag.inode(proto: .udp, src: clientEnd, dst: server.local) == nil, "not a UDP socket")
        // An unconnected UDP socket (sendto) is found by the flow it sends.
        let udp = try bound(Int32(SOCK_DGRAM.rawValue), address)
        defer { close(udp.fd) }
        #expect(SocketDiag.inode(proto: .udp, src: udp.local, dst: server.local) == inode(udp.fd))
        let nobody = FlowFacts.Endpoint(address: clientEnd.address, port: 9)
        #expect(SocketDiag.inode(proto: .tcp, src: nobody, dst: server.local) == nil)
        // The /proc/net fallback reads the whole table: with a hundred more sockets open, this
        // one sits past the first page (where Foundation's String(contentsOfFile:) stopped).
        var others: [Int32] = []
        defer { for fd in others { close(fd) } }
        for _ in 0..<100 {
            let fd = privateSocket(address.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue))
            if connect(fd, to: server.local) == 0 { others.append(fd) } else { close(fd) }
        }
        let late = privateSocket(address.contains(":") ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue))
        defer { close(late) }
        try #require(connect(late, to: server.local) == 0)
        #expect(ProcNetTable.inode(proto: .tcp, local: try local(late)) == inode(late), "found in /proc/net past its first page")
        var facts = FlowFacts()
        facts.src = clientEnd
        facts.dst = server.local
        #expect(SocketDiag.works(), "this kernel answers sock_diag for TCP and UDP")
        let found = ProcessAttribution().resolve(facts)
        #expect(found?.pid == getpid())
    }
}

@Suite struct RulesetTests {
    @Test func nativeBackendQueuesInsideLoupesTable() {
        var s = DivertSettings()
        s.queues = 2...3
        s.proxyPort = 9443
        let text = Ruleset(s).nftScript
        #expect(text.hasPrefix("# Loupe") && text.contains("table inet loupe\ndelete table inet loupe\n"), "replaced in one transaction")
        #expect(text.contains("meta mark & 0xf000000 == 0x6000000 accept"), "Loupe's own sockets first")
        #expect(text.contains("ct state new meta l4proto { tcp, udp } meta mark set meta mark & 0xf0ffffff | 0x4000000"), "only Loupe's field is set")
        #expect(text.contains("meta mark & 0xf000000 == 0x1000000 ct mark set ct mark & 0xf0ffffff | 0x1000000"))
        #expect(text.contains("queue flags bypass,fanout to 2-3"))
        #expect(text.contains("redirect to :9443"))
        #expect(text.contains("reject with tcp reset"))
        #expect(!text.contains("prerouting"), "no gateway chains unless asked")
        #expect(!text.contains("flush ruleset"))
    }

    @Test func failClosedAndGateway() {
        var s = DivertSettings()
        s.failClosed = true
        s.gateway = true
        let text = Ruleset(s).nftScript
        #expect(!text.contains("flags bypass") && text.contains("queue to 0"))
        #expect(text.contains("hook prerouting") && text.contains("fib daddr type local accept") && text.contains("hook forward"))
        // DNS answers the gateway forwards are snooped as its own are (names for forwarded flows).
        let forwardDNS = text.components(separatedBy: "chain forward_dns {").dropFirst().first?.components(separatedBy: "}").first ?? ""
        #expect(forwardDNS.contains("udp sport 53 meta mark set") && forwardDNS.contains("tcp sport 53 meta mark set"), "\(text)")
        #expect(text.contains("chain forward_queue {") && text.contains("hook forward priority -150"))
        s.backend = .iptablesNFT
        let fallback = Ruleset(s)
        #expect(!fallback.nftScript.contains(" queue "), "the queue rule moves to iptables-nft")
        #expect(fallback.iptablesRestoreScript.contains("-j NFQUEUE --queue-num 0\n") && !fallback.iptablesRestoreScript.contains("bypass"))
        #expect(fallback.iptablesRestoreScript.contains("-I PREROUTING 1 -j LOUPE-QUEUE") && fallback.iptablesRestoreScript.contains("-I FORWARD 1 -j LOUPE-QUEUE"))
        #expect(!fallback.nftScript.contains("forward_queue") && fallback.nftScript.contains("forward_dns"))
        s.failClosed = false
        s.queues = 0...1
        #expect(Ruleset(s).iptablesRestoreScript.contains("--queue-balance 0:1 --queue-bypass"))
    }

    /// Loupe's marks live in a field of their own; other bits belong to other tools.
    @Test func marksAreAFieldOfTheirOwn() {
        let m = Marks()
        #expect(m.mask == 0x0F00_0000 && m.bypass == 0x0600_0000 && "0x" + String(m.bypass, radix: 16) == TestEnv.bypassMark)
        let values = [m.allow, m.inspect, m.reject, m.queue, m.dns, m.bypass]
        #expect(Set(values).count == 6 && values.allSatisfy { $0 & ~m.mask == 0 && $0 != 0 })
        #expect(values.allSatisfy { $0 & 0x4000 == 0 }, "not kube-proxy's masquerade bit (0x4c41… had it)")
        #expect(m.setting(m.allow, in: 0x0004_4000 | m.queue) == 0x0004_4000 | m.allow && m.setting(0, in: 0xCA6C | m.dns) == 0xCA6C)
        #expect(m.verdict(m.allow, forPacketMarked: 0xCA6C | m.queue) == 0xCA6C && m.verdict(m.allow, forPacketMarked: m.queue) == m.allow
                && m.verdict(m.reject, forPacketMarked: 0xCA6C | m.queue) == 0xCA6C | m.reject, "allowed foreign-marked packets keep their own mark")
        let low = Marks(mask: 0x70)
        #expect(low.allow == 0x10 && low.bypass == 0x60)
        for bad: UInt32 in [0, 0x3, 0x5, 0x8000_0000, 0xC000_0000] { #expect(Marks.problem(with: bad) != nil, "\(bad)") }
        #expect(Marks.problem(with: 0x0F00_0000) == nil && Marks.problem(with: 0xE000_0000) == nil)
    }

    static let canLoad = TestEnv.isRoot && TestEnv.has("nft") && TestEnv.has("ip")

    /// Real nft: a packet leaving through Loupe's chains keeps the bits another tool put in its
    /// mark (here a socket's SO_MARK 0x4000, kube-proxy's bit); only Loupe's field is cleared.
    @Test(.enabled(if: canLoad && TestEnv.has("python3"), "needs root, ip, nft and python3 (CI has them)"))
    func otherToolsMarkBitsSurvive() throws {
        let ns = "lmk\(getpid() % 100_000)"
        defer { _ = TestEnv.sh("ip netns del \(ns)") }
        #expect(TestEnv.sh("ip netns add \(ns) && ip -n \(ns) link add v0 type veth peer name v1 && ip -n \(ns) addr add 10.207.0.1/24 dev v0 && ip -n \(ns) link set v0 up && ip -n \(ns) link set v1 up").status == 0)
        var s = DivertSettings()
        s.backend = .iptablesNFT  // no queue rule in the table: the packet meets the fail-open rule
        #expect(TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(Ruleset(s).nftScript.utf8)).status == 0)
        let watch = "table inet watch {\n chain post { type filter hook postrouting priority 0; policy accept;\n"
            + "  udp dport 9999 meta mark 0x4000 counter\n  udp dport 9999 meta mark != 0x4000 counter\n }\n}\n"
        #expect(TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(watch.utf8)).status == 0)
        let send = TestEnv.sh("""
            ip netns exec \(ns) python3 -c 'import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.SOL_SOCKET, 36, 0x4000); s.sendto(b"x", ("10.207.0.2", 9999))'
            """)
        #expect(send.status == 0, "\(send.err)")
        let counters = TestEnv.sh("ip netns exec \(ns) nft list chain inet watch post").out
        let packets = counters.split(separator: "\n").filter { $0.contains("counter") }.map { line in
            line.split(separator: " ").drop { $0 != "packets" }.dropFirst().first.flatMap { Int($0) } ?? -1
        }
        #expect(packets == [1, 0], "the packet left with exactly 0x4000: \(counters)")
    }

    /// Real nft in a private namespace: the table loads, replaces itself, and removal leaves
    /// other tables alone.
    @Test(.enabled(if: canLoad, "needs root, ip and nft (CI has them)"))
    func loadsReplacesAndRemovesOnlyItself() throws {
        let ns = "lrs\(getpid() % 100_000)"
        defer { _ = TestEnv.sh("ip netns del \(ns)") }
        #expect(TestEnv.sh("ip netns add \(ns)").status == 0)
        var s = DivertSettings()
        s.backend = .iptablesNFT   // loads on every kernel; the native queue rule only where nft_queue exists
        s.gateway = true
        let other = "table inet someone_else {\n chain c { type filter hook output priority 0; policy accept; counter; }\n}\n"
        #expect(TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(other.utf8)).status == 0)
        for _ in 0..<2 {
            let r = TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(Ruleset(s).nftScript.utf8))
            #expect(r.status == 0, "\(r.err)")
        }
        let listing = TestEnv.sh("ip netns exec \(ns) nft list ruleset").out
        #expect(listing.components(separatedBy: "table inet loupe").count == 2, "one copy after two loads")
        let drain = TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(Ruleset(s).nftDrainingScript.utf8))
        #expect(drain.status == 0, "\(drain.err)")
        let draining = TestEnv.sh("ip netns exec \(ns) nft list table inet loupe").out
        #expect(draining.contains("chain output_nat") && draining.contains("chain prerouting_nat") && !draining.contains("classify")
                && !draining.contains("verdict") && !draining.contains("input_dns") && !draining.contains("forward_dns"), "draining keeps only the nat chains: \(draining)")
        #expect(TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(Ruleset(s).nftRemoveScript.utf8)).status == 0)
        #expect(TestEnv.sh("ip netns exec \(ns) nft -f -", stdin: Array(Ruleset(s).nftRemoveScript.utf8)).status == 0, "removing twice is fine")
        let after = TestEnv.sh("ip netns exec \(ns) nft list ruleset").out
        #expect(!after.contains("table inet loupe") && after.contains("table inet someone_else"))
    }
}
