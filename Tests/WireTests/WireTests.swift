import Foundation
import TestSupport
import Testing
@testable import Wire

/// A ClientHello as openssl s_client sent it on this machine (SNI www.example.test, ALPN h2 +
/// http/1.1), captured by a listening socket: the seed for the splitting and fuzz tests.
let realHello = Array(try! Data(contentsOf: URL(fileURLWithPath: "\(TestEnv.packageRoot)/Tests/WireTests/Fixtures/clienthello-openssl.bin")))

/// Builds a ClientHello record by hand: `records` splits the handshake over that many records.
func makeHello(sni: String? = "a.test", alpn: [String] = ["h2"], padding: Int = 0, records: Int = 1,
               suites: [UInt16] = [0x1301, 0x1302], versions: [UInt16] = [0x0304, 0x0303],
               signatureAlgorithms: [UInt16]? = nil, groups: [UInt16]? = nil) -> [UInt8] {
    func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    func list16(_ type: Int, _ values: [UInt16]) -> [UInt8] {
        let bytes = values.flatMap { u16(Int($0)) }
        return u16(type) + u16(bytes.count + 2) + u16(bytes.count) + bytes
    }
    var extensions: [UInt8] = []
    if let signatureAlgorithms { extensions += list16(13, signatureAlgorithms) }
    if let groups { extensions += list16(10, groups) }
    if let sni {
        let name = Array(sni.utf8)
        let entry = [0] + u16(name.count) + name
        extensions += u16(0) + u16(entry.count + 2) + u16(entry.count) + entry
    }
    if !alpn.isEmpty {
        let list = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        extensions += u16(16) + u16(list.count + 2) + u16(list.count) + list
    }
    let versionBytes = versions.flatMap { u16(Int($0)) }
    extensions += u16(43) + u16(versionBytes.count + 1) + [UInt8(versionBytes.count)] + versionBytes
    if padding > 0 { extensions += u16(0xFE0D) + u16(padding) + [UInt8](repeating: 0xAB, count: padding) }  // e.g. a PQ key share
    var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [0] + u16(suites.count * 2) + suites.flatMap { u16(Int($0)) } + [1, 0]
    body += u16(extensions.count) + extensions
    let handshake: [UInt8] = [1, UInt8(body.count >> 16), UInt8(body.count >> 8 & 0xFF), UInt8(body.count & 0xFF)] + body
    let chunk = (handshake.count + records - 1) / records
    var out: [UInt8] = []
    var offset = 0
    while offset < handshake.count {
        let piece = handshake[offset..<min(handshake.count, offset + chunk)]
        out += [0x16, 3, 1] + u16(piece.count) + piece
        offset += chunk
    }
    return out
}

@Suite struct ClientHelloTests {
    @Test func realOpenSSLHello() throws {
        var reader = ClientHelloReader()
        guard case .hello(let hello) = reader.feed(realHello) else { Issue.record("\(reader.result)"); return }
        #expect(hello.serverName == "www.example.test")
        #expect(hello.alpn == ["h2", "http/1.1"])
        #expect(hello.supportedVersions.contains(0x0304))
        #expect(hello.signatureAlgorithms.contains(0x0403) && hello.supportedGroups.contains(0x001D))
        #expect(hello.acceptsP256ECDSA(at: 0x0304) && hello.acceptsP256ECDSA(at: 0x0303))
        #expect(hello.newestVersion == 0x0304)
        // GREASE (RFC 8701) and unknown future versions are not versions anyone can speak.
        var greased = ClientHelloReader()
        guard case .hello(let g) = greased.feed(makeHello(versions: [0x0A0A, 0x7F1C, 0x0303, 0x0302])) else { Issue.record("\(greased.result)"); return }
        #expect(g.newestVersion == 0x0303)
    }

    /// Which clients may get the P-256 masquerade leaf: a client that cannot verify it would
    /// fail through Loupe against an RSA origin it reaches directly.
    @Test func whoAcceptsAP256Leaf() throws {
        func hello(_ bytes: [UInt8]) throws -> ClientHello {
            var reader = ClientHelloReader()
            guard case .hello(let h) = reader.feed(bytes) else { throw WireError.malformed("\(reader.result)") }
            return h
        }
        let rsaPSS: [UInt16] = [0x0804, 0x0805, 0x0806, 0x0401]
        // TLS 1.3: only ecdsa_secp256r1_sha256 signs with a P-256 key.
        #expect(try hello(makeHello(signatureAlgorithms: [0x0403] + rsaPSS)).acceptsP256ECDSA(at: 0x0304))
        #expect(try !hello(makeHello(signatureAlgorithms: rsaPSS)).acceptsP256ECDSA(at: 0x0304))
        #expect(try !hello(makeHello(signatureAlgorithms: [0x0503] + rsaPSS)).acceptsP256ECDSA(at: 0x0304))
        #expect(try !hello(makeHello()).acceptsP256ECDSA(at: 0x0304), "no signature_algorithms at all")
        // TLS 1.2: an ECDHE_ECDSA suite, an ECDSA/SHA-2 scheme and P-256 among the named curves.
        let tls12 = { (suites: [UInt16], schemes: [UInt16]?, groups: [UInt16]?) in
            try hello(makeHello(suites: suites, versions: [0x0303], signatureAlgorithms: schemes, groups: groups))
        }
        #expect(try tls12([0xC02F, 0xC02B], [0x0403, 0x0401], [0x001D, 0x0017]).acceptsP256ECDSA(at: 0x0303))
        #expect(try tls12([0xC02B], [0x0503], nil).acceptsP256ECDSA(at: 0x0303), "no supported_groups: any curve")
        #expect(try !tls12([0xC02F, 0xC030], [0x0403, 0x0401], [0x0017]).acceptsP256ECDSA(at: 0x0303), "ECDHE_RSA suites only")
        #expect(try !tls12([0xC02B], [0x0401, 0x0804], [0x0017]).acceptsP256ECDSA(at: 0x0303), "RSA schemes only")
        #expect(try !tls12([0xC02B], nil, [0x0017]).acceptsP256ECDSA(at: 0x0303), "SHA-1 by default")
        #expect(try !tls12([0xC02B], [0x0403], [0x0018, 0x001D]).acceptsP256ECDSA(at: 0x0303), "P-384 and X25519 only")
        // P-384 and RSA (the other two leaf keys): P-384 only when the client plainly takes no RSA.
        let p384Only13 = try hello(makeHello(signatureAlgorithms: [0x0503]))
        #expect(p384Only13.acceptsECDSA(curve: 0x0018, at: 0x0304) && p384Only13.refusesRSA(at: 0x0304))
        #expect(try !hello(makeHello(signatureAlgorithms: [0x0503, 0x0804])).refusesRSA(at: 0x0304), "rsa_pss_rsae_sha256 takes RSA")
        #expect(try !hello(makeHello(signatureAlgorithms: [0x0403])).acceptsECDSA(curve: 0x0018, at: 0x0304))
        let p384Only12 = try tls12([0x0A0A, 0xC02B, 0xC02C, 0x00FF], [0x0403, 0x0503], [0x0018])
        #expect(!p384Only12.acceptsP256ECDSA(at: 0x0303) && p384Only12.acceptsECDSA(curve: 0x0018, at: 0x0303))
        #expect(p384Only12.refusesRSA(at: 0x0303), "GREASE and signalling values are not RSA suites")
        #expect(try !tls12([0xC02B, 0xC02F], [0x0503, 0x0401], [0x0018]).refusesRSA(at: 0x0303), "an ECDHE_RSA suite takes RSA")
        // A TLS 1.3 client held to 1.2 (a 1.2-only upstream) is judged by its 1.2 offer.
        let both = try hello(makeHello(suites: [0x1301, 0xC02F], signatureAlgorithms: [0x0403, 0x0401], groups: [0x0017]))
        #expect(both.acceptsP256ECDSA(at: 0x0304) && !both.acceptsP256ECDSA(at: 0x0303))
        // Malformed lists are errors, not empty offers.
        var odd = makeHello(signatureAlgorithms: [0x0403])
        let sigalgs: [UInt8] = [0x00, 0x0D, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]
        let at = try #require(odd.indices.first { odd[$0...].starts(with: sigalgs) })
        odd[at + 5] = 3  // the inner list length, made odd
        var reader = ClientHelloReader()
        guard case .malformed = reader.feed(odd) else { Issue.record("odd signature_algorithms length: \(reader.result)"); return }
    }

    /// Fed in every possible two-piece split, and byte by byte, the answer is the same.
    @Test func everySplitGivesTheSameHello() {
        var whole = ClientHelloReader()
        let expected = whole.feed(realHello)
        for cut in 0...realHello.count {
            var reader = ClientHelloReader()
            let first = reader.feed(realHello[..<cut])
            if cut < realHello.count { #expect(first == .needMore, "cut \(cut)") }
            #expect(reader.feed(realHello[cut...]) == expected, "cut \(cut)")
        }
        var trickle = ClientHelloReader()
        for byte in realHello { _ = trickle.feed([byte]) }
        #expect(trickle.result == expected)
    }

    @Test func helloSpanningRecordsAndLargeKeyShares() {
        for records in [1, 2, 3, 7] {
            var reader = ClientHelloReader()
            guard case .hello(let hello) = reader.feed(makeHello(sni: "pq.test", padding: 1800, records: records)) else {
                Issue.record("\(records) records: \(reader.result)"); continue
            }
            #expect(hello.serverName == "pq.test" && hello.alpn == ["h2"])
        }
    }

    @Test func noSNIAndNotTLS() {
        var reader = ClientHelloReader()
        guard case .hello(let hello) = reader.feed(makeHello(sni: nil, alpn: [])) else { Issue.record("\(reader.result)"); return }
        #expect(hello.serverName == nil && hello.alpn.isEmpty)
        var http = ClientHelloReader()
        #expect(http.feed(Array("GET / HTTP/1.1\r\n".utf8)) == .notTLS)
        var ssh = ClientHelloReader()
        #expect(ssh.feed(Array("SSH-2.0-OpenSSH\r\n".utf8)) == .notTLS)
    }

    @Test func hostileHellosAreTypedErrors() {
        func result(_ bytes: [UInt8]) -> ClientHelloReader.Result { var r = ClientHelloReader(); return r.feed(bytes) }
        var hello = makeHello(sni: "a.test")
        // The SNI length claims more than the extension holds.
        if let i = hello.firstIndex(of: UInt8(ascii: "a")) { hello[i - 1] = 200 }
        guard case .malformed = result(hello) else { Issue.record("bad SNI length accepted"); return }
        guard case .malformed = result(makeHello(sni: "a\u{0}b.test")) else { Issue.record("NUL in SNI accepted"); return }
        guard case .malformed = result([0x16, 3, 1, 0, 4, 2, 0, 0, 0]) else { Issue.record("ServerHello accepted"); return }
        guard case .malformed = result([0x16, 3, 1, 0x50, 0x00]) else { Issue.record("oversized record accepted"); return }
        guard case .malformed = result([0x16, 3, 1, 0, 4, 1, 0xFF, 0xFF, 0xFF]) else { Issue.record("16 MiB hello accepted"); return }
        let truncatedRecord = Array(realHello.prefix(100))
        #expect(result(truncatedRecord) == .needMore)
    }

    /// Property test over random mutations of real and built hellos: no trap or hang, the same
    /// answer however the bytes are split, and parsed fields that respect their limits. LOUPE_FUZZ_ITERATIONS / LOUPE_FUZZ_SEED run longer
    /// or different campaigns (see README).
    @Test func mutationFuzz() {
        var (iterations, rng) = Mutation.campaign(iterations: 20_000, seed: 0x10_0BE)
        let seeds = [realHello, makeHello(), makeHello(sni: nil, padding: 900, records: 3)]
        for i in 0..<iterations {
            let bytes = Mutation.apply(to: seeds[i % seeds.count], rng: &rng)
            // Properties, not just survival:
            // 1. Segmentation never changes the answer (TCP may split anywhere).
            var whole = ClientHelloReader()
            let answer = whole.feed(bytes)
            var split = ClientHelloReader()
            let cut = Int(rng.next() % UInt64(bytes.count + 1))
            _ = split.feed(bytes[..<cut])
            #expect(split.feed(bytes[cut...]) == answer, "iteration \(i): split at \(cut) changed the result")
            // 2. A hello that parses only ever yields an ASCII host name without controls.
            if case .hello(let hello) = answer, let name = hello.serverName {
                #expect(name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F } && name.utf8.count <= 255, "iteration \(i): \(name)")
            }
            // 3. Parsed lengths stay inside the input; names stay inside DNS limits.
            if let packet = try? IPPacket.parse(bytes[...]) {
                #expect(packet.payload.startIndex >= bytes.startIndex && packet.payload.endIndex <= bytes.endIndex)
            }
            if let message = try? DNSMessage.parse(bytes[...]) {
                #expect((message.questions + message.answers.map(\.name)).allSatisfy { $0.utf8.count <= 255 })
            }
            if case .head(let head) = HTTPHead.parse(bytes[...], expectRequest: i % 2 == 0) {
                #expect(head.length <= bytes.count && head.headers.count <= HTTPHead.maximumFields)
            }
            _ = try? ClientHelloReader.parseHello(bytes[...])
            _ = try? TCPSegment.parse(bytes[...])
            _ = try? UDPDatagram.parse(bytes[...])
            _ = try? CaptureFile.packets(bytes)
        }
    }
}

/// A small deterministic PRNG so fuzz runs are reproducible.

@Suite struct PacketTests {
    func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    @Test func ipv4TCP() throws {
        let tcp: [UInt8] = u16(51514) + u16(443) + [0, 0, 0, 1] + [0, 0, 0, 0] + [0x50, 0x02] + u16(64240) + [0, 0, 0, 0] + Array("hi".utf8)
        let ip: [UInt8] = [0x45, 0] + u16(20 + tcp.count) + [0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 2, 203, 0, 113, 10] + tcp + [0, 0, 0]  // Ethernet padding
        let packet = try IPPacket.parse(ip[...])
        #expect(packet.version == 4 && packet.transport == 6 && !packet.isLaterFragment)
        #expect(IPAddress.format(packet.destination) == "203.0.113.10")
        let segment = try TCPSegment.parse(packet.payload)
        #expect(segment.sourcePort == 51514 && segment.destinationPort == 443 && segment.isSYN && !segment.isACK)
        #expect(Array(segment.payload) == Array("hi".utf8))
    }

    @Test func ipv6WithExtensionHeadersAndFragments() throws {
        let udp: [UInt8] = u16(5353) + u16(53) + u16(10) + [0, 0, 0xAA, 0xBB]
        let hopByHop: [UInt8] = [60, 0, 1, 4, 0, 0, 0, 0]        // next: destination options
        let destOpts: [UInt8] = [44, 0, 1, 4, 0, 0, 0, 0]        // next: fragment
        let fragment: [UInt8] = [17, 0, 0, 0, 0, 0, 0, 1]        // first fragment, next: UDP
        let payload = hopByHop + destOpts + fragment + udp
        var ip: [UInt8] = [0x60, 0, 0, 0] + u16(payload.count) + [0, 64]
        ip += IPAddress.parse("2001:db8::1")! + IPAddress.parse("2001:db8::53")!
        let packet = try IPPacket.parse((ip + payload)[...])
        #expect(packet.transport == 17 && !packet.isLaterFragment)
        let datagram = try UDPDatagram.parse(packet.payload)
        #expect(datagram.destinationPort == 53 && Array(datagram.payload) == [0xAA, 0xBB])
        var later = ip + hopByHop + destOpts + [17, 0, 0, 8, 0, 0, 0, 1] + udp
        later[5] = UInt8(payload.count)
        #expect(try IPPacket.parse(later[...]).isLaterFragment)
    }

    @Test func malformedPackets() {
        #expect(throws: WireError.self) { try IPPacket.parse([][...]) }
        #expect(throws: WireError.self) { try IPPacket.parse([0x45, 0, 0, 10][...]) }
        #expect(throws: WireError.self) { try IPPacket.parse([0x41] + [UInt8](repeating: 0, count: 30)) }  // IHL 4 bytes
        #expect(throws: WireError.self) { try IPPacket.parse([0x75] + [UInt8](repeating: 0, count: 30)) }
        #expect(throws: WireError.self) { try TCPSegment.parse([0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0][...]) }
        #expect(throws: WireError.self) { try UDPDatagram.parse([0, 1, 0, 2, 0, 4, 0, 0][...]) }
    }
}

@Suite struct DNSTests {
    /// www.example.test CNAME edge.cdn.test; edge.cdn.test A 192.0.2.7 and AAAA; compressed names.
    func response() -> [UInt8] {
        var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 3, 0, 0, 0, 0]
        m += [3] + Array("www".utf8) + [7] + Array("example".utf8) + [4] + Array("test".utf8) + [0, 0, 1, 0, 1]
        m += [0xC0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 11] + [4] + Array("edge".utf8) + [3] + Array("cdn".utf8) + [0xC0, 24]
        let edge = 12 + 18 + 4 + 12  // offset of "edge" in the CNAME RDATA
        m += [0xC0, UInt8(edge), 0, 1, 0, 1, 0, 0, 1, 0, 0, 4, 192, 0, 2, 7]
        m += [0xC0, UInt8(edge), 0, 28, 0, 1, 0, 0, 0, 30, 0, 16] + IPAddress.parse("2001:db8::7")!
        return m
    }

    @Test func answersAndCNAMEChains() throws {
        let message = try DNSMessage.parse(response()[...])
        #expect(message.isResponse && message.rcode == 0 && message.questions == ["www.example.test"])
        #expect(message.answers.count == 3)
        #expect(message.answers[0].data == .cname("edge.cdn.test"))
        let byAddress = message.namesByAddress
        #expect(byAddress.count == 2)
        #expect(byAddress[0].names == ["edge.cdn.test", "www.example.test"] && byAddress[0].ttl == 256)
        #expect(IPAddress.format(byAddress[1].address) == "2001:db8::7")
    }

    @Test func hostileMessages() {
        var loop = response()
        loop[12] = 0xC0; loop[13] = 12  // the question name points at itself
        #expect(throws: WireError.self) { try DNSMessage.parse(loop[...]) }
        var lying = response()
        lying[7] = 200  // ANCOUNT far beyond the message
        #expect(throws: WireError.self) { try DNSMessage.parse(lying[...]) }
        #expect(throws: WireError.self) { try DNSMessage.parse(Array(response().prefix(40))[...]) }
        var badA = response()
        badA[badA.count - 16 - 12 - 5] = 5  // A RDLENGTH 5
        #expect(throws: WireError.self) { try DNSMessage.parse(badA[...]) }
    }
}

@Suite struct HTTPHeadTests {
    @Test func requestAndResponseHeads() {
        let text = "POST /admin/upload?x=1 HTTP/1.1\r\nHost: intranet.corp.test\r\nContent-Length: 5\r\n\r\nhello"
        guard case .head(let head) = HTTPHead.parse(Array(text.utf8)[...], expectRequest: true) else { Issue.record("no head"); return }
        #expect(head.kind == .request(method: "POST", target: "/admin/upload?x=1"))
        #expect(head.header("host") == "intranet.corp.test" && head.length == text.utf8.count - 5)
        for cut in 0..<(head.length - 1) {
            #expect(HTTPHead.parse(Array(text.utf8)[..<cut], expectRequest: true) == .needMore, "cut \(cut)")
        }
        guard case .head(let response) = HTTPHead.parse(Array("HTTP/1.1 403 Forbidden\r\nX-A:  b \r\n\r\n".utf8)[...], expectRequest: false) else {
            Issue.record("no response head"); return
        }
        #expect(response.kind == .response(status: 403, reason: "Forbidden") && response.header("x-a") == "b")
        // Names compare ASCII case-insensitively, and only letters fold ("^" is not "~").
        #expect(head.header("CONTENT-length") == "5" && head.header("Content-Lengtх") == nil)
        guard case .head(let odd) = HTTPHead.parse(Array("GET / HTTP/1.1\r\nX^: 1\r\n\r\n".utf8)[...], expectRequest: true) else {
            Issue.record("no head"); return
        }
        #expect(odd.header("x^") == "1" && odd.header("x~") == nil)
    }

    /// The scheme of an absolute-form target, in any case — and only letters fold: a control
    /// byte that becomes ":" or "/" once 0x20 is set ("\u{1A}" | 0x20 == ":") is no scheme.
    @Test func absoluteFormSchemesFoldOnlyLetters() {
        let cases: [(String, Int?)] = [
            ("https://h/x", 8), ("http://h/x", 7), ("HTTPS://h", 8), ("HtTp://h", 7), ("http://", 7),
            ("/path", nil), ("", nil), ("http", nil), ("https:/", nil), ("http:\\\\h", nil), ("httpx://h", nil),
            ("ftp://h", nil), ("http\u{1A}//h", nil), ("http:\u{0F}/h", nil), ("https:\u{0F}\u{0F}h", nil), ("hTtPs:/", nil),
        ]
        for (target, length) in cases {
            #expect(HTTPHead.absoluteFormScheme(target) == length, "\(target.debugDescription)")
            // The same bytes as a slice of a longer string (a request line's target).
            let line = "GET " + target
            #expect(HTTPHead.absoluteFormScheme(line.dropFirst(4)) == length, "substring \(target.debugDescription)")
        }
    }

    /// List-valued fields (RFC 9110 5.6.1): every field of the name, in order, split at commas,
    /// optional whitespace trimmed, empty elements dropped — what the framing, Host and Upgrade
    /// checks count and compare.
    @Test func fieldValuesSplitEveryFieldOfTheName() {
        let text = "GET / HTTP/1.1\r\nTransfer-Encoding: gzip , ,chunked\r\nHost: a.test\r\nX: \r\ntransfer-encoding:\tbr,\t\r\nUpgrade: h2c\r\n\r\n"
        guard case .head(let head) = HTTPHead.parse(Array(text.utf8)[...], expectRequest: true) else { Issue.record("no head"); return }
        #expect(head.fieldValues("transfer-encoding") == ["gzip", "chunked", "br"])
        #expect(head.fieldValues("HOST") == ["a.test"] && head.fieldValues("x").isEmpty && head.fieldValues("content-length").isEmpty)
        #expect(head.fieldValues("upgrade") == ["h2c"] && head.fieldValues("upgrad").isEmpty)
        guard case .head(let twoHosts) = HTTPHead.parse(Array("GET / HTTP/1.1\r\nHost: a.test, b.test\r\n\r\n".utf8)[...], expectRequest: true) else {
            Issue.record("no head"); return
        }
        #expect(twoHosts.fieldValues("host") == ["a.test", "b.test"], "one field naming two hosts is two hosts")
    }

    @Test func malformedHeads() {
        for bad in ["GET\r\n\r\n", "GET / HTTP/2\r\n\r\n", "GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "GET / HTTP/1.1\r\nNoColon\r\n\r\n", "G(T / HTTP/1.1\r\n\r\n",
                    "GET  / HTTP/1.1\r\n\r\n", "GET / HTTP/1.1 x\r\n\r\n", "GET / HTTP/1.10\r\n\r\n", "GET /a b HTTP/1.1\r\n\r\n", "\r\n\r\n"] {
            guard case .malformed = HTTPHead.parse(Array(bad.utf8)[...], expectRequest: true) else { Issue.record("accepted \(bad)"); continue }
        }
        for bad in ["HTTP/1.1 +12 OK\r\n\r\n", "HTTP/1.1 2000\r\n\r\n", "HTTP/1.1 20\r\n\r\n", "HTTP/2 200\r\n\r\n", "HTTP/1.1x 200\r\n\r\n", "HTTP/1.1\r\n\r\n"] {
            guard case .malformed = HTTPHead.parse(Array(bad.utf8)[...], expectRequest: false) else { Issue.record("accepted \(bad)"); continue }
        }
        for (text, reason) in [("HTTP/1.1 204\r\n\r\n", ""), ("HTTP/1.0 200 \r\n\n", ""), ("HTTP/1.1 404 Not  Found\n\n", "Not  Found")] {
            guard case .head(let head) = HTTPHead.parse(Array(text.utf8)[...], expectRequest: false), case .response(_, let got) = head.kind else {
                Issue.record("refused \(text.debugDescription)"); continue
            }
            #expect(got == reason && head.length == text.utf8.count)
        }
        let many = "GET / HTTP/1.1\r\n" + String(repeating: "A: b\r\n", count: 101) + "\r\n"
        guard case .malformed = HTTPHead.parse(Array(many.utf8)[...], expectRequest: true) else { Issue.record("101 fields accepted"); return }
        let huge = [UInt8](repeating: 0x41, count: HTTPHead.maximumLength + 1)
        guard case .malformed = HTTPHead.parse(huge[...], expectRequest: true) else { Issue.record("endless head accepted"); return }
        // A bare CR (a line end to some parsers) or a NUL inside a field.
        for bad in ["GET / HTTP/1.1\r\nX-A: 1\rTransfer-Encoding: chunked\r\n\r\n", "GET / HTTP/1.1\r\nX-A: 1\u{0}2\r\n\r\n"] {
            guard case .malformed = HTTPHead.parse(Array(bad.utf8)[...], expectRequest: true) else { Issue.record("accepted \(bad.debugDescription)"); continue }
        }
    }

    func framing(_ fields: String, version: String = "HTTP/1.1") throws(WireError) -> HTTPHead.BodyFraming {
        guard case .head(let head) = HTTPHead.parse(Array("POST / \(version)\r\nHost: h\r\n\(fields)\r\n".utf8)[...], expectRequest: true) else {
            throw .malformed("no head")
        }
        return try head.requestFraming()
    }

    /// Bodies framed exactly one way (RFC 9112 6): anything two parsers could frame two ways —
    /// the stuff of request smuggling — is refused.
    @Test func requestBodyFraming() throws {
        #expect(try framing("") == .none)
        #expect(try framing("Content-Length: 0\r\n") == .none)
        #expect(try framing("Content-Length: 12\r\n") == .length(12))
        #expect(try framing("Content-Length: 12\r\nContent-Length: 12\r\n") == .length(12), "repeated, equal")
        #expect(try framing("Content-Length: 12, 12\r\n") == .length(12))
        #expect(try framing("Transfer-Encoding: chunked\r\n") == .chunked)
        #expect(try framing("Transfer-Encoding: gzip, Chunked\r\n") == .chunked)
        #expect(try framing("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n") == .chunked)
        let smuggling = [
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",     // CL.TE
            "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",     // TE.CL
            "Transfer-Encoding: chunked, gzip\r\n",                      // chunked not last
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: identity\r\n",
            "Content-Length: 4\r\nContent-Length: 40\r\n",             // conflicting lengths
            "Content-Length: 4, 5\r\n",
            "Content-Length: +4\r\n", "Content-Length: -1\r\n", "Content-Length: 0x10\r\n", "Content-Length: 1e3\r\n",
            "Content-Length: 99999999999999999999999\r\n",
        ]
        for fields in smuggling {
            #expect(throws: WireError.self, "\(fields.debugDescription)") { try framing(fields) }
        }
        #expect(throws: WireError.self, "chunked in HTTP/1.0") { try framing("Transfer-Encoding: chunked\r\n", version: "HTTP/1.0") }
    }
}

@Suite struct CaptureTests {
    static func le32(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v >> 16 & 0xFF), UInt8(v >> 24 & 0xFF)] }
    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8 & 0xFF)] }

    /// A UDP datagram 10.0.0.1:5000 -> 10.0.0.2:443 in an IPv4 packet.
    var datagram: [UInt8] {
        let udp: [UInt8] = [0x13, 0x88, 0x01, 0xBB, 0, 12, 0, 0, 1, 2, 3, 4]
        return [0x45, 0, 0, UInt8(20 + udp.count), 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2] + udp
    }

    /// A pcap file of `frames`, each stamped 1,700,000,000.25.
    static func pcap(link: Int, frames: [[UInt8]]) -> [UInt8] {
        le32(0xA1B2C3D4) + le16(2) + le16(4) + le32(0) + le32(0) + le32(65535) + le32(link)
            + frames.flatMap { le32(1_700_000_000) + le32(250_000) + le32($0.count) + le32($0.count) + $0 }
    }

    @Test func pcapWithEthernetVLANAndRawIP() throws {
        let ethernet: [UInt8] = [UInt8](repeating: 0xAA, count: 12) + [0x81, 0x00, 0, 5, 0x08, 0x00] + datagram
        for file in [Self.pcap(link: 1, frames: [ethernet]), Self.pcap(link: 101, frames: [datagram])] {
            let packets = try CaptureFile.packets(file)
            #expect(packets.count == 1)
            #expect(abs(packets[0].timestamp - 1_700_000_000.25) < 1e-6)
            let ip = try IPPacket.parse(packets[0].ip)
            #expect(try UDPDatagram.parse(ip.payload).destinationPort == 443)
        }
        #expect(throws: WireError.self) { try CaptureFile.packets([1, 2, 3, 4, 5, 6, 7, 8]) }
        let cut = Self.pcap(link: 101, frames: [datagram]).dropLast(3)
        #expect(throws: WireError.self) { try CaptureFile.packets(Array(cut)) }
    }

    @Test func pcapngEnhancedPackets() throws {
        func block(_ type: Int, _ body: [UInt8]) -> [UInt8] {
            let padded = body + [UInt8](repeating: 0, count: (4 - body.count % 4) % 4)
            return Self.le32(type) + Self.le32(padded.count + 12) + padded + Self.le32(padded.count + 12)
        }
        let shb = block(0x0A0D0D0A, Self.le32(0x1A2B3C4D) + Self.le16(1) + Self.le16(0) + [UInt8](repeating: 0xFF, count: 8))
        let idb = block(1, Self.le16(101) + Self.le16(0) + Self.le32(65535) + Self.le16(9) + Self.le16(1) + [9, 0, 0, 0] + Self.le32(0))  // nanoseconds
        let ts = 1_700_000_000_123_456_789
        let epb = block(6, Self.le32(0) + Self.le32(ts >> 32) + Self.le32(ts & 0xFFFF_FFFF) + Self.le32(datagram.count) + Self.le32(datagram.count) + datagram)
        let packets = try CaptureFile.packets(shb + idb + epb)
        #expect(packets.count == 1)
        #expect(abs(packets[0].timestamp - 1_700_000_000.123_456_789) < 1e-5)
        #expect(Array(packets[0].ip) == datagram)
        #expect(throws: WireError.self) { try CaptureFile.packets(shb + epb) }  // a packet before any interface
    }
}

@Suite struct IPAddressFormatTests {
    @Test func addressesPrintAsInetNtopPrintsThem() {
        for v4: [UInt8] in [[0, 0, 0, 0], [255, 255, 255, 255], [10, 0, 9, 100], [192, 168, 1, 99], [1, 20, 100, 250]] {
            var buffer = [CChar](repeating: 0, count: 16)
            #expect(inet_ntop(AF_INET, v4, &buffer, 16) != nil)
            #expect(IPAddress.format(v4) == String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        #expect(IPAddress.format([0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [7]) == "2001:db8::7")
        #expect(IPAddress.format([UInt8](repeating: 0, count: 10) + [0xff, 0xff, 10, 0, 0, 1]) == "::ffff:10.0.0.1")
        #expect(IPAddress.format([1, 2, 3]) == "1:2:3", "not an address: its bytes in hex")
    }
}

@Suite struct JSONLineTests {
    @Test func timestampsAreUTCWithMillisecondsAndPaddedFields() {
        // 2026-03-04T05:06:07.089Z
        #expect(JSONLine.timestamp(Date(timeIntervalSince1970: 1_772_600_767.089_5)) == "2026-03-04T05:06:07.089Z")
        #expect(JSONLine.timestamp(Date(timeIntervalSince1970: 0)) == "1970-01-01T00:00:00.000Z")
        #expect(JSONLine.timestamp(Date(timeIntervalSince1970: 1_798_761_599.999_9)) == "2026-12-31T23:59:59.999Z")
    }

    @Test func fieldsRenderedOnceJoinOtherLinesInPlace() throws {
        var connection = JSONLine()
        connection.add("src", "10.0.0.2:40000")
        connection.add("uid", 1000)
        connection.add("exe", nil as String?)
        #expect(connection.fields == #""src":"10.0.0.2:40000","uid":1000"#)
        var line = JSONLine()
        line.add("event", "decision")
        line.add(fields: connection.fields)
        line.add(fields: "")
        line.add(sorted: ["verdict": "allow", "bytes": 5, "flags": ["a\"b"], "done": true])
        #expect(line.line == #"{"event":"decision","src":"10.0.0.2:40000","uid":1000,"bytes":5,"done":true,"flags":["a\"b"],"verdict":"allow"}"#)
        let parsed = try JSONSerialization.jsonObject(with: Data(line.line.utf8)) as? [String: Any]
        #expect(parsed?["uid"] as? Int == 1000 && parsed?["flags"] as? [String] == ["a\"b"])
        var first = JSONLine()
        first.add(fields: connection.fields)
        #expect(first.line == "{" + connection.fields + "}", "no comma before the first field")
    }

    @Test func controlCharactersAndQuotesAreEscaped() throws {
        var line = JSONLine()
        line.add("url", "https://a.test/\"x\"\\\n\t\u{1}\u{7F}é")
        #expect(line.line == #"{"url":"https://a.test/\"x\"\\\n\t\u0001\u007Fé"}"#)
        let parsed = try JSONSerialization.jsonObject(with: Data(line.line.utf8)) as? [String: String]
        #expect(parsed?["url"] == "https://a.test/\"x\"\\\n\t\u{1}\u{7F}é")
    }

    @Test func integersAreWrittenAsTheirDecimalDigits() throws {
        for value in [0, 7, 10, 99, 100, 1_000_000, -1, -305, Int.max, Int.min] {
            var line = JSONLine()
            line.add("n", value)
            #expect(line.line == "{\"n\":\(value)}")
        }
        var line = JSONLine()
        line.add("port", UInt16(443))
        line.add("uid", UInt32.max)
        line.add("none", nil as Int?)
        line.add("big", UInt64.max)  // past Int: written through String
        line.add("small", Int8.min)
        #expect(line.line == #"{"port":443,"uid":4294967295,"big":18446744073709551615,"small":-128}"#)
    }
}

