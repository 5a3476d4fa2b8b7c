@testable import Proxy
import Testing

/// Each request's response is matched to it in order, with its status and body size, whatever
/// the framing and however the bytes are cut.
@Suite struct HTTPResponseTrackerTests {
    typealias T = HTTPResponseTracker

    static let stream = Array((
        "HTTP/1.1 100 Continue\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
        + "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"          // a HEAD: no body follows
        + "HTTP/1.1 304 Not Modified\r\nETag: \"a\"\r\n\r\n"
        + "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    ).utf8)

    static func track(_ pieces: [[UInt8]]) -> [HTTPExchange] {
        var t = T()
        for (method, path) in [("POST", "/a"), ("GET", "/b"), ("HEAD", "/c"), ("GET", "/d"), ("GET", "/e")] {
            t.requestSent(method: method, url: "https://o.test" + path)
        }
        var out: [HTTPExchange] = []
        for piece in pieces { out += t.feed(piece) }
        return out + t.closed()
    }

    static let expected = [
        HTTPExchange(method: "POST", url: "https://o.test/a", status: 200, bytes: 5),
        HTTPExchange(method: "GET", url: "https://o.test/b", status: 404, bytes: 19),
        HTTPExchange(method: "HEAD", url: "https://o.test/c", status: 200, bytes: 0),
        HTTPExchange(method: "GET", url: "https://o.test/d", status: 304, bytes: 0),
        HTTPExchange(method: "GET", url: "https://o.test/e", status: 200, bytes: 13),
    ]

    @Test func framingsInOrder() {
        #expect(Self.track([Self.stream]) == Self.expected)
        #expect(Self.track(Self.stream.map { [$0] }) == Self.expected, "byte by byte")
        #expect(Self.track(stride(from: 0, to: Self.stream.count, by: 7).map { Array(Self.stream[$0..<min($0 + 7, Self.stream.count)]) }) == Self.expected)
    }

    /// A chunk's data must end in exactly CRLF: any other two bytes (or a bare LF) and the
    /// answers are lost — allAnswered nil, so no held 403 is placed by a guess.
    @Test func chunkDataNotEndedByCRLFLosesTheTracking() {
        for ending in ["XY", "\n0", "\r0", "\n\r"] {
            for split in [false, true] {
                var t = T()
                t.requestSent(method: "GET", url: "https://o.test/a")
                t.requestSent(method: "GET", url: "https://o.test/b")
                let bytes = Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\(ending)0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8)
                let done = split ? bytes.map { t.feed([$0]) }.joined().map { $0 } : t.feed(bytes)
                #expect(done.isEmpty && t.allAnswered == nil, "ending \(ending.debugDescription), split \(split): \(done)")
            }
        }
        var good = T()
        good.requestSent(method: "GET", url: "https://o.test/a")
        #expect(good.feed(Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".utf8))
                == [HTTPExchange(method: "GET", url: "https://o.test/a", status: 200, bytes: 3)] && good.allAnswered == true)
    }

    @Test func upgradesAndGarbageStopTheTracking() {
        var t = T()
        t.requestSent(method: "GET", url: "https://o.test/ws")
        let done = t.feed(Array("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\u{81}\u{05}HTTP/1.1 200".utf8))
        #expect(done == [HTTPExchange(method: "GET", url: "https://o.test/ws", status: 101, bytes: 0)])
        #expect(t.feed(Array("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".utf8)).isEmpty, "frames after an upgrade are not HTTP")
        var g = T()
        #expect(g.feed(Array("SSH-2.0-OpenSSH\r\n\r\n".utf8)).isEmpty && g.closed().isEmpty)
    }
}
