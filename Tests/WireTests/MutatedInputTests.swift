import Foundation
import TestSupport
import Testing
@testable import Wire

/// Every parser that reads bytes from outside — queued packets (any local process sends them),
/// snooped DNS answers, HTTP heads from clients and origins, capture files — against mutations
/// of inputs it really parses: no trap, and what it returns stays inside what it was given.
/// (Seeds from `mutationFuzz` are ClientHellos, which these parsers refuse at their first bytes.)
@Suite struct MutatedInputTests {
    static let dns = TestPackets.dnsAnswer("www.example.test", "192.0.2.7")
    static let dnsCNAME: [UInt8] = {
        var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]
        m += [3] + Array("www".utf8) + [7] + Array("example".utf8) + [4] + Array("test".utf8) + [0, 0, 1, 0, 1]
        m += [0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 11] + [4] + Array("edge".utf8) + [3] + Array("cdn".utf8) + [0xC0, 24]
        m += [0xC0, 46, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 192, 0, 2, 7]
        return m
    }()
    static let packets: [[UInt8]] = [
        TestPackets.tcpSYN(from: "10.0.0.1", 40000, to: "192.0.2.7", 443),
        TestPackets.tcpSYN(from: "2001:db8::1", 40000, to: "2001:db8::7", 443),
        TestPackets.udp(from: "192.0.2.53", 53, to: "10.0.0.1", 40001, payload: dns),
        TestPackets.udp(from: "2001:db8::53", 53, to: "2001:db8::1", 40001, payload: dnsCNAME),
        TestPackets.tcp(from: "192.0.2.53", 53, to: "10.0.0.1", 40002, seq: 7, flags: 0x18,
                        payload: [0, UInt8(dnsCNAME.count)] + dnsCNAME),
    ]
    static let heads: [[UInt8]] = [
        "GET /a?b=1 HTTP/1.1\r\nHost: www.example.test\r\nAccept: */*\r\n\r\n",
        "POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nSet-Cookie: a=b\r\n\r\nabc",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ].map { Array($0.utf8) }

    static let capture = CaptureTests.pcap(link: 101, frames: packets)

    @Test func packetsAndDNSAnswers() {
        var (iterations, rng) = Mutation.campaign(iterations: 20_000, seed: 0x9AC7)
        let seeds = Self.packets + [Self.dns, Self.dnsCNAME]
        for i in 0..<iterations {
            let bytes = Mutation.apply(to: seeds[i % seeds.count], rng: &rng)
            if let packet = try? IPPacket.parse(bytes[...]) {
                #expect(packet.payload.startIndex >= bytes.startIndex && packet.payload.endIndex <= bytes.endIndex, "iteration \(i)")
                if let tcp = try? TCPSegment.parse(packet.payload) {
                    #expect(tcp.payload.startIndex >= packet.payload.startIndex && tcp.payload.endIndex <= packet.payload.endIndex, "iteration \(i)")
                    var streams = DNSStreams<Int>(capacity: 4)
                    var open = tcp
                    open.flags = 0x12  // as if the segment before this one opened the stream
                    open.sequence = tcp.sequence &- 1
                    open.payload = []
                    _ = streams.feed(open, key: 1)
                    for message in streams.feed(tcp, key: 1) { #expect(message.count <= bytes.count, "iteration \(i)") }
                }
                if let udp = try? UDPDatagram.parse(packet.payload) {
                    #expect(udp.payload.startIndex >= packet.payload.startIndex && udp.payload.endIndex <= packet.payload.endIndex, "iteration \(i)")
                    _ = try? DNSMessage.parse(udp.payload)
                }
            }
            if let message = try? DNSMessage.parse(bytes[...]) {
                // Every record takes at least 11 bytes; names stay inside DNS's limit.
                #expect(message.answers.count * 11 <= bytes.count, "iteration \(i)")
                #expect((message.questions + message.answers.map(\.name)).allSatisfy { $0.utf8.count <= 255 }, "iteration \(i)")
                _ = message.namesByAddress
            }
        }
    }

    /// A head that parses whole is "need more" at every shorter cut: TCP may split it anywhere.
    @Test func httpHeads() {
        var (iterations, rng) = Mutation.campaign(iterations: 20_000, seed: 0x4E4D)
        for i in 0..<iterations {
            let bytes = Mutation.apply(to: Self.heads[i % Self.heads.count], rng: &rng)
            let expectRequest = i % Self.heads.count < 2
            guard case .head(let head) = HTTPHead.parse(bytes[...], expectRequest: expectRequest) else { continue }
            #expect(head.length <= bytes.count && head.headers.count <= HTTPHead.maximumFields, "iteration \(i)")
            let cut = Int.random(in: 0..<head.length, using: &rng)
            #expect(HTTPHead.parse(bytes[..<cut], expectRequest: expectRequest) == .needMore, "iteration \(i): cut at \(cut) of \(head.length)")
            _ = try? head.requestFraming()
            for (name, _) in head.headers { _ = head.fieldValues(name) }
        }
    }

    @Test func captureFiles() {
        var (iterations, rng) = Mutation.campaign(iterations: 5_000, seed: 0xCA97)
        for i in 0..<iterations {
            let bytes = Mutation.apply(to: Self.capture, rounds: 6, rng: &rng)
            guard let packets = try? CaptureFile.packets(bytes) else { continue }
            #expect(packets.count <= Self.packets.count + bytes.count / 16, "iteration \(i)")
            for packet in packets {
                #expect(packet.ip.startIndex >= 0 && packet.ip.endIndex <= bytes.count, "iteration \(i)")
            }
        }
    }
}
