import Foundation
import NIOCore
import NIOHPACK
import Policy
@testable import Proxy
import TestSupport
import Testing

/// HTTP/2 requests decided one by one: what goes upstream is a valid HTTP/2 stream without the
/// refused requests, and what the client gets back keeps its HPACK context intact.
@Suite struct HTTP2RequestFilterTests {
    typealias F = HTTP2RequestFilter

    /// A filter that has seen the upstream's SETTINGS (its connection preface), as on a real
    /// connection before Loupe may write frames of its own to the client.
    static func filter() -> F {
        var f = F()
        let own = f.fromUpstream(F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0))
        #expect(own.client.isEmpty && own.answered.isEmpty)
        return f
    }

    static let policy = try! Policy.parse(TestPolicies.noAdminPost, file: "p.toml")

    static func decide(_ method: String, _ url: inout String) -> Decision {
        var facts = FlowFacts()
        facts.method = method
        facts.url = url
        return policy.decide(.request, facts)
    }

    /// A client's side: its own HPACK encoder, so later blocks refer to earlier ones.
    struct Client {
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        mutating func block(_ headers: [(String, String)]) throws -> [UInt8] {
            try encoder.beginEncoding(allocator: ByteBufferAllocator())
            try encoder.append(headers: headers.map { (name: $0.0, value: $0.1) })
            var b = try encoder.endEncoding()
            return b.readBytes(length: b.readableBytes)!
        }
    }

    static func request(_ method: String, _ path: String) -> [(String, String)] {
        [(":method", method), (":scheme", "https"), (":authority", "www.origin.test"), (":path", path), ("user-agent", "test/1"), ("cookie", "a=b")]
    }

    /// Every frame in `bytes` (after an optional preface), as (type, flags, stream, payload).
    static func frames(_ bytes: [UInt8]) -> [(UInt8, UInt8, UInt32, [UInt8])] {
        var offset = bytes.starts(with: F.preface) ? F.preface.count : 0
        var out: [(UInt8, UInt8, UInt32, [UInt8])] = []
        while let f = F.frame(in: bytes, at: offset) {
            out.append((f.type, f.flags, f.stream, Array(bytes[f.payload])))
            offset = f.end
        }
        #expect(offset == bytes.count, "no partial frame left over")
        return out
    }

    func conversation() throws -> [UInt8] {
        var client = Client()
        var wire = F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        let first = try client.block(Self.request("GET", "/ok"))
        wire += F.frameHeader(length: first.count, type: .headers, flags: 0x5, stream: 1) + first
        // The refused POST: its block split over HEADERS + CONTINUATION, with padding, then a body.
        let post = try client.block(Self.request("POST", "/admin"))
        let padded: [UInt8] = [3] + post.prefix(4) + [0, 0, 0]
        wire += F.frameHeader(length: padded.count, type: .headers, flags: 0x8, stream: 3) + padded
        wire += F.frameHeader(length: post.count - 4, type: .continuation, flags: 0x4, stream: 3) + post.dropFirst(4)
        let body = Array("secret upload".utf8)
        wire += F.frameHeader(length: body.count, type: .data, flags: 0x1, stream: 3) + body
        // Refers to the dynamic table entries the refused block added: Loupe must have kept up.
        let second = try client.block(Self.request("GET", "/ok2"))
        wire += F.frameHeader(length: second.count, type: .headers, flags: 0x5, stream: 5) + second
        return wire
    }

    @Test func refusedRequestsNeverReachTheUpstream() throws {
        let wire = try conversation()
        // Whole, then byte by byte: the same result.
        for pieces in [[wire], wire.map { [$0] }] {
            var filter = Self.filter()
            var out = F.Output()
            for piece in pieces {
                let o = filter.fromClient(piece, decide: Self.decide)
                out.upstream += o.upstream
                out.client += o.client
                out.decisions += o.decisions
                #expect(o.failure == nil)
            }
            #expect(out.decisions.map(\.decision.verdict) == [.allow, .block, .allow])
            #expect(out.decisions.map(\.url) == ["https://www.origin.test/ok", "https://www.origin.test/admin", "https://www.origin.test/ok2"])
            #expect(out.upstream.starts(with: F.preface))
            // Upstream: SETTINGS, then the two allowed requests, decodable in order.
            var upstreamDecoder = HPACKDecoder(allocator: ByteBufferAllocator())
            let sent = Self.frames(out.upstream)
            #expect(sent.map(\.0) == [4, 1, 1] && sent.map(\.2) == [0, 1, 5])
            var paths: [String] = []
            for (_, flags, _, payload) in sent.dropFirst() {
                #expect(flags & 0x5 == 0x5, "END_STREAM and END_HEADERS kept")
                var b = ByteBuffer(bytes: payload)
                let h = try upstreamDecoder.decodeHeaders(from: &b)
                paths.append(h.first(name: ":path") ?? "")
                #expect(h.first(name: "cookie") == "a=b")
            }
            #expect(paths == ["/ok", "/ok2"])
            // Client: a 403 on stream 3 and its body, then — no reset: the request was still open
            // and its body is drained — both windows back for the body it sent.
            let back = Self.frames(out.client)
            #expect(back.map(\.0) == [1, 0, 8, 8] && back.map(\.2) == [3, 3, 0, 3])
            // The client's decoder follows the upstream's encoder; the 403 in between must not
            // disturb it: an entry indexed before is still found by its index after.
            var upstreamEncoder = Client()
            var clientDecoder = HPACKDecoder(allocator: ByteBufferAllocator())
            var before = ByteBuffer(bytes: try upstreamEncoder.block([(":status", "200"), ("x-served-by", "origin-7")]))
            _ = try clientDecoder.decodeHeaders(from: &before)
            var b = ByteBuffer(bytes: back[0].3)
            let response = try clientDecoder.decodeHeaders(from: &b)
            #expect(response.first(name: ":status") == "403" && response.first(name: "content-type")?.hasPrefix("text/plain") == true)
            var after = ByteBuffer(bytes: try upstreamEncoder.block([(":status", "200"), ("x-served-by", "origin-7")]))
            #expect(after.readableBytes <= 3, "the second block is made of table references")
            #expect(try clientDecoder.decodeHeaders(from: &after).first(name: "x-served-by") == "origin-7", "the 403 left the client's HPACK table as it was")
            #expect(String(decoding: back[1].3, as: UTF8.self).contains("no-admin-post"))
            #expect(back[2].3 == [0, 0, 0, 13] && back[3].3 == [0, 0, 0, 13], "the 13 dropped body bytes are given back on both windows")
        }
    }

    /// A request whose hosts disagree (:authority and Host, or either twice) is refused as
    /// misdirected: the request stage would judge one, an origin taking another would serve it.
    @Test func aRequestNamingTwoHostsIsRefused() throws {
        var client = Client()
        var wire = F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        let cases: [[(String, String)]] = [
            Self.request("GET", "/a") + [("host", "blocked.test")],
            [(":method", "GET"), (":scheme", "https"), (":authority", "www.origin.test"), (":authority", "blocked.test"), (":path", "/a")],
            Self.request("GET", "/b") + [("host", "WWW.origin.test")],  // the same host, other case
        ]
        for (i, headers) in cases.enumerated() {
            let block = try client.block(headers)
            wire += F.frameHeader(length: block.count, type: .headers, flags: 0x5, stream: UInt32(2 * i + 1)) + block
        }
        var filter = Self.filter()
        let out = filter.fromClient(wire, decide: Self.decide)
        #expect(out.failure == nil)
        // :authority twice is also a malformed request (a pseudo-header twice): refused, 400.
        #expect(out.decisions.map(\.decision.rule) == ["misdirected", "malformed", "default"])
        #expect(Self.frames(out.upstream).map(\.2) == [0, 5], "only the request whose hosts agree goes upstream")
        #expect(Self.frames(out.client).filter { $0.0 == 1 }.map(\.2) == [1, 3], "the others get their refusal")
        // :status as a never-indexed literal: 421 for the misdirected one, 400 for the malformed.
        #expect(Self.frames(out.client).filter { $0.0 == 1 }.map { Array($0.3.prefix(5)) } == [[0x18, 3] + Array("421".utf8), [0x18, 3] + Array("400".utf8)])
    }

    /// An empty :authority names no host: Host does (and without either, the machine takes the
    /// SNI — ConnectionMachineTests).
    @Test func anEmptyAuthorityIsNoHost() throws {
        var client = Client()
        let block = try client.block([(":method", "GET"), (":scheme", "https"), (":authority", ""), (":path", "/c"), ("host", "www.origin.test")])
        // ...and its URL is https whatever :scheme says (the request came over TLS).
        let http = try client.block([(":method", "GET"), (":scheme", "http"), (":authority", "www.origin.test"), (":path", "/d")])
        var filter = Self.filter()
        let out = filter.fromClient(F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
                                    + F.frameHeader(length: block.count, type: .headers, flags: 0x5, stream: 1) + block
                                    + F.frameHeader(length: http.count, type: .headers, flags: 0x5, stream: 3) + http, decide: Self.decide)
        #expect(out.decisions.map(\.url) == ["https://www.origin.test/c", "https://www.origin.test/d"] && out.decisions.map(\.decision.rule) == ["default", "default"])
    }

    /// An upload refused at its headers is answered, not reset (curl 7.88 reports a reset as a
    /// framing error instead of the 403), and drained: its DATA is dropped and both windows are
    /// given back, or a large upload would stall on the stream window the upstream never opens.
    @Test func anUnfinishedRefusedRequestIsDrained() throws {
        var client = Client()
        let post = try client.block(Self.request("POST", "/admin"))
        var filter = Self.filter()
        let o = filter.fromClient(F.preface + F.frameHeader(length: post.count, type: .headers, flags: 0x4, stream: 1) + post, decide: Self.decide)
        #expect(Self.frames(o.client).map(\.0) == [1, 0], "403 and its body, no RST_STREAM")
        let chunk = F.frameHeader(length: 16_000, type: .data, flags: 0, stream: 1) + [UInt8](repeating: 1, count: 16_000)
        let d = filter.fromClient(chunk + chunk, decide: Self.decide)
        #expect(d.upstream.isEmpty && d.failure == nil)
        let back = Self.frames(d.client)
        #expect(back.map(\.0) == [8, 8, 8, 8] && back.map(\.2) == [0, 1, 0, 1] && back.allSatisfy { $0.3 == [0, 0, 0x3E, 0x80] })
    }

    /// Loupe's 403 never lands inside a frame of the upstream's, nor before its SETTINGS.
    @Test func ownFramesWaitForABoundary() throws {
        var client = Client()
        let post = try client.block(Self.request("POST", "/admin"))
        let request = F.preface + F.frameHeader(length: post.count, type: .headers, flags: 0x5, stream: 1) + post
        var filter = F()
        #expect(filter.fromClient(request, decide: Self.decide).client.isEmpty, "the upstream has not spoken yet")
        let settings = F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        let data = F.frameHeader(length: 10, type: .data, flags: 0, stream: 3) + [UInt8](repeating: 1, count: 10)
        #expect(filter.fromUpstream(settings + data.prefix(12)).client.isEmpty, "mid-frame: wait")
        let own = filter.fromUpstream(Array(data.dropFirst(12))).client
        #expect(Self.frames(own).map(\.0) == [1, 0], "after the frame: the 403 and its body")
    }

    /// Each response's status (after interim ones) and DATA size come back with its request, also
    /// across CONTINUATION, a PUSH_PROMISE in between and any cut of the bytes.
    @Test func responsesAreMatchedToTheirRequests() throws {
        var client = Client()
        let a = try client.block(Self.request("GET", "/a")), b = try client.block(Self.request("GET", "/b"))
        let requests = F.preface + F.frameHeader(length: a.count, type: .headers, flags: 0x5, stream: 1) + a
            + F.frameHeader(length: b.count, type: .headers, flags: 0x5, stream: 3) + b
        var origin = Client()  // the upstream's encoder
        let early = try origin.block([(":status", "103"), ("link", "</s.css>")])
        let ok = try origin.block([(":status", "200"), ("content-type", "text/html"), ("x-long", String(repeating: "v", count: 300))])
        let missing = try origin.block([(":status", "404"), ("content-type", "text/html")])
        var upstream = F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        upstream += F.frameHeader(length: early.count, type: .headers, flags: 0x4, stream: 1) + early
        upstream += F.frameHeader(length: 100, type: .headers, flags: 0, stream: 1) + ok.prefix(100)
        upstream += F.frameHeader(length: ok.count - 100, type: .continuation, flags: 0x4, stream: 1) + ok.dropFirst(100)
        upstream += F.frameHeader(length: 10, type: .data, flags: 0, stream: 1) + [UInt8](repeating: 1, count: 10)
        upstream += F.frameHeader(length: missing.count, type: .headers, flags: 0x5, stream: 3) + missing
        upstream += F.frameHeader(length: 5, type: .data, flags: 0x1, stream: 1) + [UInt8](repeating: 2, count: 5)
        for pieces in [[upstream], upstream.map { [$0] }] {
            var filter = F()
            _ = filter.fromClient(requests, decide: Self.decide)
            var answered: [HTTPExchange] = []
            for piece in pieces { answered += filter.fromUpstream(piece).answered }
            #expect(answered == [HTTPExchange(method: "GET", url: "https://www.origin.test/b", status: 404, bytes: 0),
                                 HTTPExchange(method: "GET", url: "https://www.origin.test/a", status: 200, bytes: 15)])
        }
    }

    /// Pushed streams answer requests nobody made, so the request stage never saw them: the
    /// client's SETTINGS go upstream with push switched off, and a push anyway ends the connection.
    @Test func serverPushIsSwitchedOff() throws {
        func setting(_ id: UInt16, _ value: UInt32) -> [UInt8] {
            [UInt8(id >> 8), UInt8(id & 0xFF), UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF)]
        }
        func settingsFrame(_ payload: [UInt8]) -> [UInt8] { F.frameHeader(length: payload.count, type: .settings, flags: 0, stream: 0) + payload }
        let cases: [(sent: [UInt8], expected: [UInt8])] = [
            (setting(1, 4096) + setting(2, 1) + setting(3, 100), setting(1, 4096) + setting(3, 100) + setting(2, 0)),
            ([], setting(2, 0)),
            (setting(2, 0) + setting(4, 1 << 20), setting(4, 1 << 20) + setting(2, 0)),
        ]
        for (sent, expected) in cases {
            var filter = Self.filter()
            let out = filter.fromClient(F.preface + settingsFrame(sent), decide: Self.decide)
            #expect(out.failure == nil && out.upstream == F.preface + settingsFrame(expected))
        }
        // The client's acknowledgement of the upstream's SETTINGS passes as it is.
        var acking = Self.filter()
        let ack = F.frameHeader(length: 0, type: .settings, flags: 0x1, stream: 0)
        #expect(acking.fromClient(F.preface + ack, decide: Self.decide).upstream == F.preface + ack)
        // A SETTINGS payload that is not whole entries is the client's protocol error.
        var broken = Self.filter()
        #expect(broken.fromClient(F.preface + settingsFrame([0, 1, 0, 0, 16]), decide: Self.decide).failure?.contains("SETTINGS") == true)
        // A push regardless: nothing of it reaches the client, the connection ends.
        var client = Client()
        let get = try client.block(Self.request("GET", "/a"))
        var pushed = Self.filter()
        _ = pushed.fromClient(F.preface + settingsFrame([]) + F.frameHeader(length: get.count, type: .headers, flags: 0x5, stream: 1) + get, decide: Self.decide)
        var origin = Client()
        let promise = try origin.block(Self.request("GET", "/pushed"))
        let frame = F.frameHeader(length: 4 + promise.count, type: .pushPromise, flags: 0x4, stream: 1) + [0, 0, 0, 2] + promise
        let seen = pushed.fromUpstream(frame)
        #expect(seen.failure?.contains("PUSH_PROMISE") == true && seen.client.isEmpty)
    }

    /// Trailers close a request, they are not one: forwarded without a decision on an allowed
    /// stream, dropped on a refused one — and the HPACK context stays in step either way.
    @Test func trailersAreNotRequests() throws {
        var client = Client()
        var wire = F.preface
        for (stream, path) in [(UInt32(1), "/upload"), (UInt32(3), "/admin")] {
            let head = try client.block(Self.request("POST", path))
            let trailer = try client.block([("x-checksum", "abc")])
            wire += F.frameHeader(length: head.count, type: .headers, flags: 0x4, stream: stream) + head
            wire += F.frameHeader(length: 4, type: .data, flags: 0, stream: stream) + Array("body".utf8)
            wire += F.frameHeader(length: trailer.count, type: .headers, flags: 0x5, stream: stream) + trailer
        }
        let last = try client.block(Self.request("GET", "/next"))
        wire += F.frameHeader(length: last.count, type: .headers, flags: 0x5, stream: 5) + last
        var filter = Self.filter()
        let out = filter.fromClient(wire, decide: Self.decide)
        #expect(out.failure == nil)
        #expect(out.decisions.map(\.url) == ["https://www.origin.test/upload", "https://www.origin.test/admin", "https://www.origin.test/next"])
        let sent = Self.frames(out.upstream)
        #expect(sent.map(\.0) == [1, 0, 1, 1] && sent.map(\.2) == [1, 1, 1, 5], "request, body, trailers of stream 1; then stream 5")
        var upstreamDecoder = HPACKDecoder(allocator: ByteBufferAllocator())
        var decoded: [HPACKHeaders] = []
        for frame in sent where frame.0 == 1 {
            var b = ByteBuffer(bytes: frame.3)
            decoded.append(try upstreamDecoder.decodeHeaders(from: &b))
        }
        #expect(decoded[1].first(name: "x-checksum") == "abc" && decoded[2].first(name: ":path") == "/next")
    }

    /// The client gives back the window Loupe's 403 body used; the upstream never sent those
    /// bytes, so that much of the client's WINDOW_UPDATE is kept back.
    @Test func windowUsedByLoupeIsNotGivenToTheUpstream() throws {
        var client = Client()
        let post = try client.block(Self.request("POST", "/admin"))
        var filter = Self.filter()
        let refused = filter.fromClient(F.preface + F.frameHeader(length: post.count, type: .headers, flags: 0x5, stream: 1) + post, decide: Self.decide)
        let body = Self.frames(refused.client).first { $0.0 == 0 }?.3.count ?? 0
        #expect(body > 0)
        func update(_ n: UInt32) -> [UInt8] { F.windowUpdate(stream: 0, increment: n) }
        let small = filter.fromClient(update(UInt32(body - 10)), decide: Self.decide)
        #expect(small.upstream.isEmpty, "all of it was Loupe's")
        let rest = filter.fromClient(update(1000), decide: Self.decide)
        #expect(Self.frames(rest.upstream).map(\.3) == [[0, 0, 0x03, 0xDE]], "1000 - the 10 still owed = 990")
        let later = filter.fromClient(update(500), decide: Self.decide)
        #expect(later.upstream == update(500), "nothing owed: passed as it is")
    }

    /// Bodies are streamed as they arrive, not held until their frame is complete.
    @Test func dataFramesStreamThrough() throws {
        var filter = F()
        _ = filter.fromClient(F.preface, decide: Self.decide)
        let frame = F.frameHeader(length: 100_000, type: .data, flags: 0, stream: 1) + [UInt8](repeating: 7, count: 100_000)
        var forwarded: [UInt8] = []
        for start in stride(from: 0, to: frame.count, by: 4096) {
            let piece = Array(frame[start..<min(frame.count, start + 4096)])
            let o = filter.fromClient(piece, decide: Self.decide)
            #expect(o.upstream.count == piece.count || start == 0, "passed on at once")
            forwarded += o.upstream
        }
        #expect(forwarded == frame)
    }

    /// A client cannot grow Loupe's memory without bound by having requests refused.
    @Test func refusalsAreBounded() throws {
        var client = Client()
        var filter = Self.filter()
        _ = filter.fromClient(F.preface, decide: Self.decide)
        var failure: String?
        var stream: UInt32 = 1
        while failure == nil, stream < 2 * UInt32(F.maxRefusedStreams) + 10 {
            let post = try client.block(Self.request("POST", "/admin"))
            failure = filter.fromClient(F.frameHeader(length: post.count, type: .headers, flags: 0x5, stream: stream) + post, decide: Self.decide).failure
            stream += 2
        }
        #expect(failure?.contains("refused requests") == true && (stream - 1) / 2 == UInt32(F.maxRefusedStreams) + 1)
    }

    /// Streams the client cancels (RST_STREAM) or the upstream resets leave nothing behind: a
    /// client opening and cancelling requests cannot grow the filter's state.
    @Test func cancelledStreamsAreForgotten() throws {
        var client = Client()
        var filter = Self.filter()
        _ = filter.fromClient(F.preface, decide: Self.decide)
        for i in 0..<500 {
            let stream = UInt32(2 * i + 1)
            let post = try client.block(Self.request("POST", "/upload") + [("content-length", "100")])
            let rst = F.frameHeader(length: 4, type: .rstStream, flags: 0, stream: stream) + [0, 0, 0, 8]
            let out = filter.fromClient(F.frameHeader(length: post.count, type: .headers, flags: 0x4, stream: stream) + post, decide: Self.decide)
            #expect(out.failure == nil)
            if i % 2 == 0 {
                _ = filter.fromClient(rst, decide: Self.decide)
            } else {
                _ = filter.fromUpstream(rst)
            }
        }
        #expect(filter.openStreamEntries == 0)
    }

    @Test func invalidStreamsFail() throws {
        var a = F()
        #expect(a.fromClient(Array("GET / HTTP/1.1\r\n".utf8), decide: Self.decide).failure != nil)
        var b = F()
        let garbage: [UInt8] = [0xFF, 0xFF, 0xFF, 0xFF]
        #expect(b.fromClient(F.preface + F.frameHeader(length: 4, type: .headers, flags: 0x5, stream: 1) + garbage, decide: Self.decide).failure?.contains("HPACK") == true)
        var c = F()
        var client = Client()
        let block = try client.block(Self.request("GET", "/"))
        let interrupted = F.preface + F.frameHeader(length: block.count, type: .headers, flags: 0, stream: 1) + block
            + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        #expect(c.fromClient(interrupted, decide: Self.decide).failure?.contains("interrupted") == true)
    }

    /// The upstream's SETTINGS_HEADER_TABLE_SIZE bounds Loupe's encoder: a 0-byte table means
    /// no dynamic references in what goes upstream.
    @Test func upstreamTableSizeIsRespected() throws {
        var filter = F()
        let settings = F.frameHeader(length: 6, type: .settings, flags: 0, stream: 0) + [0, 1, 0, 0, 0, 0]
        for byte in settings { _ = filter.fromUpstream([byte]) }
        var client = Client()
        let block = try client.block(Self.request("GET", "/x"))
        let o = filter.fromClient(F.preface + F.frameHeader(length: block.count, type: .headers, flags: 0x5, stream: 1) + block, decide: Self.decide)
        let again = try client.block(Self.request("GET", "/x"))
        let o2 = filter.fromClient(F.frameHeader(length: again.count, type: .headers, flags: 0x5, stream: 3) + again, decide: Self.decide)
        // An upstream that allows no table fails on any dynamic reference: both decode.
        var upstreamDecoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: 0)
        for frame in Self.frames(o.upstream + o2.upstream) {
            var b = ByteBuffer(bytes: frame.3)
            #expect(try upstreamDecoder.decodeHeaders(from: &b).first(name: ":path") == "/x")
        }
    }

    /// RFC 9113 §8.2–8.3: header blocks an HTTP/1.1 hop behind the origin could read as
    /// something else are malformed; ordinary ones (CONNECT, extended CONNECT, OPTIONS *,
    /// te: trailers) are not.
    @Test func malformedRequestHeadersAreRecognised() {
        typealias V = HTTP2RequestValidation
        func check(_ fields: [(String, String)], trailers: Bool = false, endStream: Bool = false) -> V.Verdict {
            V.check(HPACKHeaders(fields), trailers: trailers, endStream: endStream)
        }
        let get = Self.request("GET", "/a")
        let malformed: [(String, [(String, String)])] = [
            ("transfer-encoding", get + [("transfer-encoding", "chunked")]),
            ("connection", get + [("connection", "keep-alive")]),
            ("keep-alive", get + [("keep-alive", "timeout=5")]),
            ("upgrade", get + [("upgrade", "h2c")]),
            ("proxy-connection", get + [("proxy-connection", "close")]),
            ("te gzip", get + [("te", "gzip")]),
            ("uppercase name", get + [("X-Admin", "1")]),
            ("space in a name", get + [("x admin", "1")]),
            ("colon in a name", get + [("x:admin", "1")]),
            ("LF in a value", get + [("x-a", "1\r\nGET /admin HTTP/1.1")]),
            ("NUL in a value", get + [("x-a", "1\u{0}")]),
            ("CR in :path", [(":method", "GET"), (":scheme", "https"), (":authority", "o.test"), (":path", "/a\rb")]),
            ("pseudo after regular", [(":method", "GET"), ("x-a", "1"), (":scheme", "https"), (":path", "/")]),
            ("unknown pseudo", get + [(":admin", "1")]),
            ("duplicate :path", get + [(":path", "/admin")]),
            ("no :method", [(":scheme", "https"), (":path", "/")]),
            ("no :path", [(":method", "GET"), (":scheme", "https"), (":authority", "o.test")]),
            ("empty :path", [(":method", "GET"), (":scheme", "https"), (":path", "")]),
            ("absolute :path", [(":method", "GET"), (":scheme", "https"), (":authority", "o.test"), (":path", "https://other.test/admin")]),
            ("* not OPTIONS", [(":method", "GET"), (":scheme", "https"), (":authority", "o.test"), (":path", "*")]),
            ("CONNECT with :path", [(":method", "CONNECT"), (":authority", "o.test:443"), (":path", "/")]),
            (":protocol on GET", get + [(":protocol", "websocket")]),
            ("two content-lengths", get + [("content-length", "5"), ("content-length", "6")]),
            ("content-length not a number", get + [("content-length", "5, 5")]),
            ("content-length signed", get + [("content-length", "+5")]),
        ]
        for (label, fields) in malformed {
            guard case .malformed = check(fields) else { Issue.record("\(label): taken as well-formed"); continue }
        }
        if case .malformed = check(get + [("content-length", "5")], endStream: true) {} else { Issue.record("a length on a bodiless request") }
        if case .malformed = check([(":path", "/")], trailers: true) {} else { Issue.record("a pseudo-header in trailers") }
        #expect(check(get) == .wellFormed(contentLength: nil))
        #expect(check(get + [("te", "trailers"), ("content-length", "12")]) == .wellFormed(contentLength: 12))
        #expect(check(get + [("content-length", "0"), ("content-length", "0")], endStream: true) == .wellFormed(contentLength: 0))
        #expect(check([(":method", "CONNECT"), (":authority", "o.test:443")]) == .wellFormed(contentLength: nil))
        #expect(check([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"), (":authority", "o.test"), (":path", "/chat")]) == .wellFormed(contentLength: nil))
        #expect(check([(":method", "OPTIONS"), (":scheme", "https"), (":authority", "o.test"), (":path", "*")]) == .wellFormed(contentLength: nil))
        #expect(check([("grpc-status", "0")], trailers: true) == .wellFormed(contentLength: nil))
    }

    /// A malformed request gets a 400 on its stream and never goes upstream; the connection
    /// and the requests beside it carry on.
    @Test func aMalformedRequestIsAnswered400AndNotForwarded() throws {
        var client = Client()
        let smuggling = try client.block(Self.request("POST", "/public") + [("transfer-encoding", "chunked")])
        let fine = try client.block(Self.request("GET", "/b"))
        let wire = F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
            + F.frameHeader(length: smuggling.count, type: .headers, flags: 0x4, stream: 1) + smuggling
            + F.frameHeader(length: 5, type: .data, flags: 0x1, stream: 1) + Array("0\r\n\r\n".utf8)
            + F.frameHeader(length: fine.count, type: .headers, flags: 0x5, stream: 3) + fine
        var filter = Self.filter()
        let out = filter.fromClient(wire, decide: Self.decide)
        #expect(out.failure == nil)
        #expect(out.decisions.map(\.decision.rule) == ["malformed", "default"])
        #expect(out.decisions.first?.decision.reason.contains("transfer-encoding") == true)
        #expect(Self.frames(out.upstream).map(\.2) == [0, 3], "nothing of stream 1 goes upstream")
        let back = Self.frames(out.client)
        guard let headers = back.first(where: { $0.0 == 1 }) else { Issue.record("no answer"); return }
        var b = ByteBuffer(bytes: headers.3)
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
        #expect(try decoder.decodeHeaders(from: &b).first(name: ":status") == "400")
    }

    /// A body longer than its content-length (a second request riding in it, for an HTTP/1.1
    /// hop) or shorter is cut: RST_STREAM both ways, and the DATA that shows it never goes
    /// upstream. Padding does not count; an exact body passes untouched.
    @Test func aBodyThatDisagreesWithItsContentLengthIsReset() throws {
        let smuggled: [UInt8] = Array("helloGET /admin HTTP/1.1\r\nHost: o.test\r\n\r\n".utf8)
        let cases: [(String, [UInt8], Bool, Bool)] = [("longer", smuggled, false, true), ("shorter", Array("hel".utf8), false, true),
                                                      ("exact", Array("hello".utf8), false, false), ("exact, padded", Array("hello".utf8), true, false)]
        for (label, body, padded, expectReset) in cases {
            var client = Client()
            let head = try client.block(Self.request("POST", "/upload") + [("content-length", "5")])
            // The body in two DATA frames: three bytes, then the rest (with END_STREAM).
            let first = Array(body.prefix(3)), rest = Array(body.dropFirst(3))
            let pad: [UInt8] = padded ? [4] : [], padding = [UInt8](repeating: 0, count: padded ? 4 : 0)
            var wire = F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
            wire += F.frameHeader(length: head.count, type: .headers, flags: 0x4, stream: 1) + head
            let firstFrame: [UInt8] = pad + first + padding
            wire += F.frameHeader(length: firstFrame.count, type: .data, flags: padded ? 0x8 : 0, stream: 1) + firstFrame
            wire += F.frameHeader(length: rest.count, type: .data, flags: 0x1, stream: 1) + rest
            var filter = Self.filter()
            let out = filter.fromClient(wire, decide: Self.decide)
            #expect(out.failure == nil, "\(label)")
            let up = Self.frames(out.upstream)
            var sentBody: [UInt8] = []
            for frame in up where frame.0 == 0 {
                sentBody += frame.1 & 0x8 != 0 ? Array(frame.3.dropFirst().dropLast(Int(frame.3[0]))) : frame.3
            }
            if expectReset {
                #expect(up.last.map { $0.0 == 3 && $0.3 == [0, 0, 0, 1] } == true, "\(label): the upstream's stream is reset (PROTOCOL_ERROR)")
                #expect(sentBody == first, "\(label): only the DATA before the mismatch went up: \(sentBody.count) bytes")
                #expect(Self.frames(out.client).contains { $0.0 == 3 && $0.2 == 1 }, "\(label): the client's stream is reset")
                #expect(out.decisions.last?.decision.rule == "malformed" && out.decisions.last?.url == "https://www.origin.test/upload", "\(label)")
            } else {
                #expect(!up.contains { $0.0 == 3 }, "\(label): no reset")
                #expect(sentBody == body, "\(label): the body passes whole")
                #expect(out.decisions.map { $0.decision.rule } == ["default"], "\(label)")
            }
        }
    }
}

/// Hostile bytes in both directions — mutations of a real conversation and of responses, cut
/// anywhere — never trap, and what goes upstream stays in proportion to what came in.
@Suite struct HTTP2FuzzTests {
    @Test func mutatedConversationsNeverTrap() throws {
        var (iterations, rng) = Mutation.campaign(iterations: 1500, seed: 0x2_0B0E)
        let conversation = try HTTP2RequestFilterTests().conversation()
        var origin = HTTP2RequestFilterTests.Client()
        let ok = try origin.block([(":status", "200"), ("content-length", "3")])
        let response = HTTP2RequestFilter.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
            + HTTP2RequestFilter.frameHeader(length: ok.count, type: .headers, flags: 0x4, stream: 1) + ok
            + HTTP2RequestFilter.frameHeader(length: 3, type: .data, flags: 0x1, stream: 1) + Array("abc".utf8)
        let http1 = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".utf8)
        func mutate(_ bytes: [UInt8]) -> [UInt8] { Mutation.apply(to: bytes, rounds: 6, rng: &rng) }
        func pieces(_ bytes: [UInt8]) -> [[UInt8]] {
            var out: [[UInt8]] = []
            var i = 0
            while i < bytes.count {
                let n = Int.random(in: 1...64, using: &rng)
                out.append(Array(bytes[i..<min(bytes.count, i + n)]))
                i += n
            }
            return out
        }
        for _ in 0..<iterations {
            var filter = HTTP2RequestFilter()
            let input = mutate(conversation)
            var sent = 0
            for piece in pieces(input) {
                let o = filter.fromClient(piece, decide: HTTP2RequestFilterTests.decide)
                sent += o.upstream.count
                if o.failure != nil { break }
            }
            #expect(sent <= 2 * input.count + 1024)
            for piece in pieces(mutate(response)) { _ = filter.fromUpstream(piece) }
            var tracker = HTTPResponseTracker()
            tracker.requestSent(method: "GET", url: "https://o.test/")
            for piece in pieces(mutate(http1)) { _ = tracker.feed(piece) }
            _ = tracker.closed()
        }
    }
}
