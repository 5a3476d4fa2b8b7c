import TestSupport
import Testing
@testable import Proxy
import Wire

@Suite struct HTTPRequestTrackerTests {
    func heads(_ pieces: [HTTPRequestTracker.Piece]) -> [String] {
        pieces.compactMap { if case .head(let h, _) = $0, case .request(let m, let t) = h.kind { "\(m) \(t)" } else { nil } }
    }

    func bytes(_ pieces: [HTTPRequestTracker.Piece]) -> [UInt8] {
        pieces.flatMap { piece -> [UInt8] in
            switch piece {
            case .head(_, let raw): raw
            case .bytes(let b): b
            case .gaveUp, .refused: []
            }
        }
    }

    static let stream = Array((
        "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nGET "
        + "PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
        + "GET /c HTTP/1.1\r\nHost: h\r\n\r\n").utf8)

    @Test func framesBodiesByLengthAndChunks() {
        var tracker = HTTPRequestTracker()
        let pieces = tracker.feed(Self.stream)
        #expect(heads(pieces) == ["POST /a", "PUT /b", "GET /c"])  // "GET " inside a body is not a request
        #expect(bytes(pieces) == Self.stream)
    }

    /// Whatever the segmentation, the same requests and the same bytes come out.
    @Test func everySplitGivesTheSameRequests() {
        for cut in 0...Self.stream.count {
            var tracker = HTTPRequestTracker()
            let pieces = tracker.feed(Array(Self.stream[..<cut])) + tracker.feed(Array(Self.stream[cut...]))
            #expect(heads(pieces) == ["POST /a", "PUT /b", "GET /c"], "cut \(cut)")
            #expect(bytes(pieces) == Self.stream, "cut \(cut)")
        }
    }

    /// CL.TE smuggling: framed by its chunks here, by its length at a lenient origin, the body
    /// would carry a second request past the request stage. The head is refused, not emitted,
    /// and nothing after it comes out.
    @Test func ambiguousFramingIsRefusedBeforeAnythingIsForwarded() {
        var tracker = HTTPRequestTracker()
        let attack = Array("GET /ok HTTP/1.1\r\nHost: h\r\n\r\nPOST / HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n".utf8)
        let pieces = tracker.feed(attack)
        #expect(heads(pieces) == ["GET /ok"])
        guard case .refused(let why)? = pieces.last else { Issue.record("\(pieces)"); return }
        #expect(why.contains("Transfer-Encoding and Content-Length"))
        #expect(bytes(pieces) == Array("GET /ok HTTP/1.1\r\nHost: h\r\n\r\n".utf8), "only the first request passes")
        #expect(tracker.feed(Array("GET /later HTTP/1.1\r\n\r\n".utf8)).isEmpty)
    }

    /// Servers ignore empty lines before a request line (RFC 9112 2.2): so does the framing, or
    /// "\r\nGET /admin" would pass as not HTTP and go unread.
    @Test func emptyLinesBeforeARequestAreSkipped() {
        var tracker = HTTPRequestTracker()
        let stream = Array("\r\n\nGET /admin HTTP/1.1\r\nHost: h\r\n\r\n".utf8)
        let pieces = tracker.feed(stream)
        #expect(heads(pieces) == ["GET /admin"] && bytes(pieces) == stream)
    }

    /// Once the stream is HTTP, what cannot be framed is refused, not relayed unread: a bad
    /// chunk size (its line not forwarded either), a malformed second request.
    @Test func malformedHTTPAfterHTTPIsRefused() {
        for bad in ["POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nGET /admin HTTP/1.1\r\n\r\n",
                    "GET /ok HTTP/1.1\r\n\r\nGET /x HTTP/1.1\r\nBad Header: 1\r\n\r\n",
                    "G(T /x HTTP/1.1\r\n\r\n"] {
            var tracker = HTTPRequestTracker()
            let pieces = tracker.feed(Array(bad.utf8))
            guard case .refused? = pieces.last else { Issue.record("\(bad.debugDescription): \(pieces)"); continue }
            #expect(!String(decoding: bytes(pieces), as: UTF8.self).contains("zz") && !heads(pieces).contains("GET /admin"))
        }
    }

    /// Chunk framing is read one way only: sizes of hex digits (no sign, "0x", leading space or
    /// trailing junk; at most 15 significant digits) and exactly CRLF after each chunk's data —
    /// an origin that ends the data at a bare LF, or reads "+5" as 0, would start its next line
    /// elsewhere and could find a request in what was framed here as body. Extensions, leading
    /// zeros, whitespace before ";" and bare-LF size lines are fine.
    @Test func chunkFramingIsStrict() {
        let head = "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        let next = "GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
        for bad in ["+5\r\nhello\r\n0\r\n\r\n", " 5\r\nhello\r\n0\r\n\r\n", "0x5\r\nhello\r\n0\r\n\r\n", "5 x\r\nhello\r\n0\r\n\r\n",
                    "-0\r\n\r\n", "1000000000000000\r\n", "5\r\nhello\n0\r\n\r\n", "5\r\nhelloXY0\r\n\r\n", "5\r\nhello\r0\r\n\r\n"] {
            var tracker = HTTPRequestTracker()
            let stream = Array((head + bad + next).utf8)
            let pieces = tracker.feed(stream)
            guard case .refused? = pieces.last else { Issue.record("\(bad.debugDescription): \(pieces)"); continue }
            #expect(heads(pieces) == ["POST /u"], "\(bad.debugDescription)")
            // Split anywhere, the same verdict.
            for cut in stride(from: head.utf8.count, to: stream.count, by: 1) {
                var split = HTTPRequestTracker()
                let parts = split.feed(Array(stream[..<cut])) + split.feed(Array(stream[cut...]))
                if case .refused? = parts.last {} else { Issue.record("\(bad.debugDescription), cut \(cut): \(parts)") }
            }
        }
        for good in ["0005;name=value\r\nhello\r\n0\r\n\r\n", "5 ;x\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n", "5\nhello\r\n0\n\n",
                     "00000000000000000005\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"] {
            var tracker = HTTPRequestTracker()
            let stream = Array((head + good + next).utf8)
            let pieces = tracker.feed(stream)
            #expect(heads(pieces) == ["POST /u", "GET /next"] && bytes(pieces) == stream, "\(good.debugDescription): \(pieces)")
        }
        #expect(HTTPHead.chunkSize(Array("7fffffffffffffff\r\n".utf8)[...]) == nil, "past 15 digits")
        #expect(HTTPHead.chunkSize(Array("fffffffffffffff".utf8)[...]) == 0xfffffffffffffff)
    }

    /// After an upgrade request nothing passes until the upstream answers: a 101 makes the rest
    /// opaque (WebSocket frames are never parsed as requests); a refusal keeps it HTTP, so a
    /// request sent behind an upgrade the server ignored is still decided.
    @Test func upgradesWaitForTheUpstreamsAnswer() {
        let upgrade = "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        let after = "\u{81}\u{05}GET / HTTP/1.1\r\n\r\n"
        var ws = HTTPRequestTracker()
        let first = ws.feed(Array((upgrade + after).utf8))
        #expect(heads(first) == ["GET /ws"] && bytes(first) == Array(upgrade.utf8), "the rest is held")
        #expect(ws.awaitingSwitch && ws.feed([7]).isEmpty)
        #expect(ws.upstreamAnswered(switched: true) == [.bytes(Array(after.utf8) + [7])])
        #expect(ws.feed([8]) == [.bytes([8])])

        var ignored = HTTPRequestTracker()
        _ = ignored.feed(Array((upgrade + "POST /admin HTTP/1.1\r\nHost: h\r\n\r\n").utf8))
        #expect(heads(ignored.upstreamAnswered(switched: false)) == ["POST /admin"])

        var connect = HTTPRequestTracker()
        _ = connect.feed(Array("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n".utf8))
        #expect(connect.awaitingSwitch)

        var h2c = HTTPRequestTracker()
        let smuggle = h2c.feed(Array("GET / HTTP/1.1\r\nHost: h\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n".utf8))
        guard case .refused(let why)? = smuggle.last else { Issue.record("h2c upgrade accepted: \(smuggle)"); return }
        #expect(why.contains("h2c") && heads(smuggle).isEmpty)
    }

    /// Mutations of a pipelined stream (lengths, chunks, an upgrade), fed whole or cut in two
    /// anywhere: no trap, the same requests and bytes, the same refusal, and never more out
    /// than came in.
    @Test func mutatedStreamsFrameTheSameHoweverSplit() {
        var (iterations, rng) = Mutation.campaign(iterations: 10_000, seed: 0x7EAC)
        let seed = Self.stream + Array("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{81}\u{01}x".utf8)
        /// What came out, with the bytes runs joined (a split may cut one run in two).
        func normalized(_ pieces: [HTTPRequestTracker.Piece]) -> [HTTPRequestTracker.Piece] {
            var out: [HTTPRequestTracker.Piece] = []
            for piece in pieces {
                if case .bytes(let more) = piece, case .bytes(let run)? = out.last {
                    out[out.count - 1] = .bytes(run + more)
                } else if case .bytes(let b) = piece, b.isEmpty {
                    continue
                } else {
                    out.append(piece)
                }
            }
            return out
        }
        for i in 0..<iterations {
            let input = Mutation.apply(to: seed, rounds: 6, rng: &rng)
            let switched = Bool.random(using: &rng)
            var whole = HTTPRequestTracker()
            let once = normalized(whole.feed(input) + whole.upstreamAnswered(switched: switched))
            let cut = Int.random(in: 0...input.count, using: &rng)
            var split = HTTPRequestTracker()
            let twice = normalized(split.feed(Array(input[..<cut])) + split.feed(Array(input[cut...])) + split.upstreamAnswered(switched: switched))
            #expect(once == twice, "iteration \(i): cut at \(cut) of \(input.debugDescription)")
            #expect(bytes(once).count <= input.count, "iteration \(i)")
        }
    }

    @Test func garbageBecomesOpaque() {
        var junk = HTTPRequestTracker()
        let pieces = junk.feed(Array("NOT HTTP AT ALL\r\n\r\n".utf8))
        guard case .gaveUp? = pieces.first else { Issue.record("\(pieces)"); return }
        #expect(junk.feed([1, 2, 3]) == [.bytes([1, 2, 3])])
    }

    /// Other protocols are told by their first line, never held for a blank line they will not
    /// send: a command line (IMAP, SMTP) once it ends, binary (MQTT, TLS in TLS) at its first
    /// control byte. A line that may still become a request line is held.
    @Test func otherProtocolsAreToldByTheirFirstLine() {
        let gaveUp = HTTPRequestTracker.Piece.gaveUp("the first line is not an HTTP/1 request line")
        for message in ["a1 LOGIN user pass\r\n", "EHLO client.test\r\n", "*1\r\n$4\r\nPING\r\n", "y\n", "\u{10}\u{10}\u{0}\u{4}MQTT", "\u{16}\u{3}\u{1}"] {
            var tracker = HTTPRequestTracker()
            let bytes = Array(message.utf8)
            #expect(tracker.feed(bytes) == [gaveUp, .bytes(bytes)], "\(message.debugDescription)")
        }
        var slow = HTTPRequestTracker()
        #expect(slow.feed(Array("a1 LOG".utf8)).isEmpty, "printable, no line end: could still be a request line")
        #expect(slow.feed(Array("IN user pass\r\n".utf8)) == [gaveUp, .bytes(Array("a1 LOGIN user pass\r\n".utf8))])
        // A control byte past the method is a malformed request line, not another protocol:
        // held for its head and decided (or refused), never relayed unread.
        var odd = HTTPRequestTracker()
        #expect(odd.feed(Array("GET /a\u{1}b HTTP/1.1\r\nHost: h\r\n".utf8)).isEmpty)
        #expect(heads(odd.feed(Array("\r\n".utf8))) == ["GET /a\u{1}b"])
        var request = HTTPRequestTracker()
        #expect(request.feed(Array("GET /index.html HTTP/1.1\r\nHost: h\r\n".utf8)).isEmpty, "a request line: the head is awaited")
        #expect(heads(request.feed(Array("\r\n".utf8))) == ["GET /index.html"])
        // Once the stream was HTTP, a line that is not a request line is refused at once.
        guard case .refused? = request.feed(Array("QUIT\r\n".utf8)).last else { Issue.record("not refused after HTTP"); return }
    }

    /// HTTP/2's prior-knowledge preface without ALPN h2, or an HTTP/0.9 simple request (which
    /// nginx answers), would carry requests past the request stage as opaque bytes: refused;
    /// so is a request naming two hosts, of which the request stage would judge only one.
    @Test func requestsOfOtherHTTPVersionsAreRefused() {
        // ...and so is a request line separated by tabs, which Python's http.server takes.
        for stream in ["PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "GET /admin\r\n", "GET https://origin.test/admin\n", "GET\t/admin\tHTTP/1.1\r\nHost: h\r\n\r\n", "GET\t/admin\r\n"] {
            var tracker = HTTPRequestTracker()
            let pieces = tracker.feed(Array(stream.utf8))
            guard case .refused? = pieces.last else { Issue.record("\(stream.debugDescription): \(pieces)"); continue }
            #expect(bytes(pieces).isEmpty)
        }
        for twoHosts in ["GET /a HTTP/1.1\r\nHost: allowed.test\r\nHost: blocked.test\r\n\r\n", "GET /a HTTP/1.1\r\nHost: allowed.test, blocked.test\r\n\r\n"] {
            var tracker = HTTPRequestTracker()
            #expect(tracker.feed(Array(twoHosts.utf8)) == [.refused("more than one Host")], "\(twoHosts.debugDescription)")
        }
        var ftp = HTTPRequestTracker()
        #expect(ftp.feed(Array("USER anonymous\r\n".utf8)).first == .gaveUp("the first line is not an HTTP/1 request line"), "a command with an argument is not a path")
    }
}
