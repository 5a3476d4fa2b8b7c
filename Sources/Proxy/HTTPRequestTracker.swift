import Wire

/// Splits the client's plaintext on a bumped HTTP/1.1 flow into request heads and everything
/// else, so each request can be decided (stage "request") before a byte of it goes upstream.
/// Bodies are skipped by Content-Length or chunked framing; an upgrade (WebSocket) or anything
/// unparseable turns the rest of the stream into opaque bytes.
public struct HTTPRequestTracker: Sendable {
    public enum Piece: Equatable, Sendable {
        case head(HTTPHead, raw: [UInt8])
        /// Body bytes, or bytes after an upgrade: forwarded as they are.
        case bytes([UInt8])
        /// The stream is not HTTP/1.1 as expected; the reason, then opaque relaying.
        case gaveUp(String)
        /// A request head whose body framing is ambiguous (see `HTTPHead.requestFraming`): it
        /// must not be forwarded, and nothing after it can be framed; the tracker stops.
        case refused(String)
    }

    private enum State: Sendable {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case trailers
        case opaque
        case refused
    }

    private var state = State.head
    private var buffer: [UInt8] = []

    public init() {}

    public mutating func feed(_ bytes: [UInt8]) -> [Piece] {
        // Bodies and opaque streams with nothing buffered pass through as they came, uncopied.
        if buffer.isEmpty, !bytes.isEmpty {
            switch state {
            case .opaque: return [.bytes(bytes)]
            case .body(let remaining) where bytes.count <= remaining:
                state = remaining == bytes.count ? .head : .body(remaining: remaining - bytes.count)
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
            case .opaque:
                pieces.append(.bytes(buffer))
                buffer.removeAll()
            case .head:
                switch HTTPHead.parse(buffer[...], expectRequest: true) {
                case .needMore: return pieces
                case .malformed(let error):
                    state = .opaque
                    pieces.append(.gaveUp("\(error)"))
                case .head(let head):
                    let next: State
                    do {
                        next = try Self.bodyState(after: head)
                    } catch {
                        state = .refused
                        buffer.removeAll()
                        pieces.append(.refused("\(error)"))
                        return pieces
                    }
                    let raw = Array(buffer.prefix(head.length))
                    buffer.removeFirst(head.length)
                    pieces.append(.head(head, raw: raw))
                    state = next
                }
            case .body(let remaining):
                let n = min(remaining, buffer.count)
                pieces.append(.bytes(Array(buffer.prefix(n))))
                buffer.removeFirst(n)
                state = remaining - n == 0 ? .head : .body(remaining: remaining - n)
            case .chunkSize, .trailers:
                guard let lineEnd = buffer.firstIndex(of: 0x0A) else {
                    if buffer.count > 8192 { state = .opaque; pieces.append(.gaveUp("chunk line too long")) }
                    return pieces
                }
                let line = Array(buffer.prefix(lineEnd + 1))
                buffer.removeFirst(lineEnd + 1)
                pieces.append(.bytes(line))
                if case .trailers = state {
                    if HTTPHead.chunkLine(line[...]).isEmpty { state = .head }
                    continue
                }
                guard let size = HTTPHead.chunkSize(line[...]) else {
                    state = .opaque
                    pieces.append(.gaveUp("bad chunk size '\(String(decoding: HTTPHead.chunkLine(line[...]), as: UTF8.self))'"))
                    continue
                }
                state = size == 0 ? .trailers : .chunkData(remaining: size + 2)  // data + CRLF
            case .chunkData(let remaining):
                let n = min(remaining, buffer.count)
                pieces.append(.bytes(Array(buffer.prefix(n))))
                buffer.removeFirst(n)
                state = remaining - n == 0 ? .chunkSize : .chunkData(remaining: remaining - n)
            }
        }
        return pieces
    }

    private static func bodyState(after head: HTTPHead) throws(WireError) -> State {
        let framing = try head.requestFraming()
        if head.header("upgrade") != nil, head.header("connection")?.lowercased().contains("upgrade") == true { return .opaque }
        if case .request(let method, _) = head.kind, method == "CONNECT" { return .opaque }
        switch framing {
        case .chunked: return .chunkSize
        case .length(let length): return .body(remaining: length)
        case .none: return .head
        }
    }
}
