import Wire

/// Splits the client's plaintext on a bumped HTTP/1.1 flow into request heads and everything
/// else, so each request can be decided (stage "request") before a byte of it goes upstream.
/// Bodies are skipped by Content-Length or chunked framing; an upgrade (WebSocket) or CONNECT
/// that the upstream accepts (`upstreamAnswered`) turns the rest of the stream into opaque
/// bytes — until the answer, what follows is held, as a server refusing the upgrade goes on
/// reading HTTP — and so does a stream that never looked like HTTP. Once it
/// did, whatever cannot be framed is refused: relayed unread, the requests after it would reach
/// the origin without a decision.
public struct HTTPRequestTracker: Sendable {
    public enum Piece: Equatable, Sendable {
        case head(HTTPHead, raw: [UInt8])
        /// Body bytes, or bytes after an upgrade: forwarded as they are.
        case bytes([UInt8])
        /// The stream never looked like HTTP/1.1; the reason, then opaque relaying.
        case gaveUp(String)
        /// HTTP that cannot be framed exactly — a malformed head or chunk line after HTTP was
        /// seen, a body framing two parsers could read two ways (`HTTPHead.requestFraming`): it
        /// must not be forwarded, and nothing after it can be framed; the tracker stops.
        case refused(String)
    }

    private enum State: Sendable {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF that must follow a chunk's data.
        case chunkEnd
        case trailers
        /// An upgrade or CONNECT went upstream: the rest is held until the upstream answers.
        case awaitingSwitch
        case opaque
        case refused
    }

    private var state = State.head
    private var buffer: [UInt8] = []
    /// A request head was parsed: from here on, what is not HTTP is refused.
    private var sawHTTP = false
    /// Where the stream goes when the current request's body ends: `.awaitingSwitch` after an
    /// upgrade or CONNECT, else the next head.
    private var afterBody = State.head
    /// What may be held while an upgrade waits for its answer (a client waits for the 101).
    static let maximumHeld = 64 * 1024

    /// Whether client bytes are held until the upstream answers an upgrade or CONNECT.
    public var awaitingSwitch: Bool { if case .awaitingSwitch = state { true } else { false } }

    /// The upstream answered the upgrade or CONNECT: switched (101, or 2xx to CONNECT), the rest
    /// of the stream is opaque; refused, it is HTTP again. Returns what was held, framed so.
    public mutating func upstreamAnswered(switched: Bool) -> [Piece] {
        guard awaitingSwitch else { return [] }
        state = switched ? .opaque : .head
        return feed([])
    }

    public init() {}

    public mutating func feed(_ bytes: [UInt8]) -> [Piece] {
        // Bodies and opaque streams with nothing buffered pass through as they came, uncopied.
        if buffer.isEmpty, !bytes.isEmpty {
            switch state {
            case .opaque: return [.bytes(bytes)]
            case .body(let remaining) where bytes.count <= remaining:
                state = remaining == bytes.count ? afterBody : .body(remaining: remaining - bytes.count)
                return [.bytes(bytes)]
            default: break
            }
        }
        if case .refused = state { return [] }
        buffer += bytes
        var pieces: [Piece] = []
        while !buffer.isEmpty {
            switch state {
            case .refused:
                buffer.removeAll()
            case .awaitingSwitch:
                return buffer.count > Self.maximumHeld ? pieces + refuse("more than \(Self.maximumHeld) bytes sent before the upgrade was answered") : pieces
            case .opaque:
                pieces.append(.bytes(buffer))
                buffer.removeAll()
            case .head:
                // RFC 9112 2.2: a server ignores empty lines before a request line. Framed here
                // the same way, or "\r\nGET /admin" would pass as not HTTP at all.
                let blank = buffer.prefix { $0 == 0x0D || $0 == 0x0A }.count
                if blank > 0 {
                    pieces.append(.bytes(Array(buffer.prefix(blank))))
                    buffer.removeFirst(blank)
                    continue
                }
                let parsed = HTTPHead.parse(buffer[...], expectRequest: true)
                // Short of a whole head, judged by its first line: a client of another protocol
                // (IMAP's "a1 LOGIN…", MQTT's binary CONNECT) sends no blank line and would wait
                // for its answer forever. (A head that parses has a request line's shape.)
                if case .head = parsed {} else if Self.firstLine(buffer) == .notARequestLine {
                    if sawHTTP { return pieces + refuse("malformed request: the line is not an HTTP/1 request line") }
                    state = .opaque
                    pieces.append(.gaveUp("the first line is not an HTTP/1 request line"))
                    continue
                }
                switch parsed {
                case .needMore:
                    // A request line that is already malformed (no version: an HTTP/0.9 simple
                    // request) is refused now; the head it would begin never comes.
                    if let end = buffer.firstIndex(of: 0x0A),
                       case .malformed(let error) = HTTPHead.parse(buffer[...end] + [0x0D, 0x0A], expectRequest: true) {
                        return pieces + refuse("malformed request: \(error)")
                    }
                    return pieces
                case .malformed(let error):
                    // The first line has a request line's shape: HTTP to an origin, however
                    // malformed the rest.
                    return pieces + refuse("malformed request: \(error)")
                case .head(let head):
                    let next: State
                    do {
                        next = try Self.bodyState(after: head)
                    } catch {
                        return pieces + refuse("\(error)")
                    }
                    // Two hosts (RFC 9112 3.2: a 400): the request stage would judge one and an
                    // origin that takes the other would serve it.
                    if head.fieldValues("host").count > 1 { return pieces + refuse("more than one Host") }
                    // h2c over TLS (deprecated by RFC 9113): once switched, its HTTP/2 requests
                    // would pass as opaque bytes — the known h2c smuggling route.
                    if head.fieldValues("upgrade").contains(where: { $0.lowercased() == "h2c" }) {
                        return pieces + refuse("an upgrade to h2c: its requests could not be decided")
                    }
                    buffer.removeFirst(head.length)
                    pieces.append(.head(head, raw: head.bytes))  // the head's own copy, shared
                    sawHTTP = true
                    afterBody = Self.asksToSwitch(head) ? .awaitingSwitch : .head
                    if case .head = next { state = afterBody } else { state = next }
                }
            case .body(let remaining):
                let n = min(remaining, buffer.count)
                pieces.append(.bytes(Array(buffer.prefix(n))))
                buffer.removeFirst(n)
                state = remaining - n == 0 ? afterBody : .body(remaining: remaining - n)
            case .chunkSize, .trailers:
                guard let lineEnd = buffer.firstIndex(of: 0x0A) else {
                    return buffer.count > 8192 ? pieces + refuse("chunk line too long") : pieces
                }
                let line = Array(buffer.prefix(lineEnd + 1))
                if case .trailers = state {
                    if HTTPHead.chunkLine(line[...]).isEmpty { state = afterBody }
                } else {
                    guard let size = HTTPHead.chunkSize(line[...]) else {
                        return pieces + refuse("bad chunk size '\(String(decoding: HTTPHead.chunkLine(line[...]), as: UTF8.self).prefix(40))'")
                    }
                    state = size == 0 ? .trailers : .chunkData(remaining: size)
                }
                buffer.removeFirst(lineEnd + 1)
                pieces.append(.bytes(line))
            case .chunkData(let remaining):
                let n = min(remaining, buffer.count)
                pieces.append(.bytes(Array(buffer.prefix(n))))
                buffer.removeFirst(n)
                state = remaining - n == 0 ? .chunkEnd : .chunkData(remaining: remaining - n)
            case .chunkEnd:
                // Exactly CRLF: a parser that also ends the data at a bare LF (or skips any two
                // bytes) would start the next chunk line a byte away from the origin's.
                guard buffer[0] == 0x0D, buffer.count < 2 || buffer[1] == 0x0A else { return pieces + refuse("chunk data not followed by CRLF") }
                guard buffer.count >= 2 else { return pieces }
                pieces.append(.bytes([0x0D, 0x0A]))
                buffer.removeFirst(2)
                state = .chunkSize
            }
        }
        return pieces
    }

    /// Stops the tracker: what is buffered and all that follows is dropped.
    private mutating func refuse(_ why: String) -> [Piece] {
        state = .refused
        buffer.removeAll()
        return [.refused(why)]
    }

    enum FirstLine: Equatable { case requestLine, notARequestLine, undecided }

    /// Whether the first line is shaped like a request line: it names an HTTP/1 version — or
    /// HTTP/2, whose prior-knowledge preface ("PRI * HTTP/2.0") is refused rather than let
    /// through unread — or is an HTTP/0.9 simple request ("GET /admin", which nginx still
    /// answers), and its method holds no control byte (CR aside). A stream starting so is HTTP
    /// to an origin, however malformed the rest. Decided once the line ends (or its first 8 KiB
    /// are in), or at a control byte before the first space, which no method holds: binary
    /// protocols are told at their first bytes. What a cut of the stream decides, a longer cut
    /// decides too.
    static func firstLine(_ bytes: [UInt8]) -> FirstLine {
        let line = bytes.prefix(8192).prefix { $0 != 0x0A }
        let method = line.prefix { $0 != 0x20 && $0 != 0x09 }
        if method.contains(where: { $0 < 0x20 && $0 != 0x0D || $0 == 0x7F }) { return .notARequestLine }
        guard line.count < bytes.count || line.count == 8192 else { return .undecided }
        let namesHTTP = versionMarks.contains { line.firstRange(of: $0) != nil }
        return namesHTTP || isSimpleRequest(line) ? .requestLine : .notARequestLine
    }

    /// A version after a space or a tab: Python's http.server splits the request line on both.
    private static let versionMarks = [" HTTP/1.", "\tHTTP/1.", " HTTP/2", "\tHTTP/2"].map { Array($0.utf8) }

    /// "METHOD /path" or "METHOD http://…" and nothing more: a request without a version.
    static func isSimpleRequest(_ line: ArraySlice<UInt8>) -> Bool {
        let words = line.split(omittingEmptySubsequences: true) { $0 == 0x20 || $0 == 0x09 }.map { $0.filter { $0 != 0x0D } }
        guard words.count == 2, HTTPHead.isToken(words[0][...]), let first = words[1].first else { return false }
        return first == UInt8(ascii: "/") || HTTPHead.absoluteFormScheme(String(decoding: words[1], as: UTF8.self)) != nil
    }

    /// An upgrade (WebSocket) or a CONNECT: the stream may become something else.
    static func asksToSwitch(_ head: HTTPHead) -> Bool {
        if head.header("upgrade") != nil, head.header("connection")?.lowercased().contains("upgrade") == true { return true }
        if case .request(let method, _) = head.kind, method == "CONNECT" { return true }
        return false
    }

    private static func bodyState(after head: HTTPHead) throws(WireError) -> State {
        let framing = try head.requestFraming()
        switch framing {
        case .chunked: return .chunkSize
        case .length(let length): return .body(remaining: length)
        case .none: return .head
        }
    }
}
