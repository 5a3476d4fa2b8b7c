import Wire

/// One request and the response it got (HTTP/1.1 or HTTP/2), for its flow-log line.
public struct HTTPExchange: Equatable, Sendable {
    public var method: String
    public var url: String
    public var status: Int
    public var bytes: Int
}

/// Follows the upstream's HTTP/1.1 responses on a bumped flow so that each request's flow-log
/// line gets its status and body size. It only observes: the bytes are relayed as they are.
/// Heads and chunk-size lines are buffered (bounded); bodies are counted, never held.
struct HTTPResponseTracker {
    private enum State {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        /// The CRLF after a chunk's data: `seen` of its two bytes so far.
        case chunkEnd(seen: Int)
        case trailers
        case untilClose
        /// After an upgrade, or bytes that are not HTTP/1.1: nothing more to follow.
        case opaque
    }

    private var state = State.head
    private var pending: [UInt8] = []
    /// The upstream's bytes stopped parsing as HTTP/1.1: no more answers will be known.
    private var lost = false
    /// The last answer switched protocols (101, or 2xx to CONNECT).
    private var switched = false
    /// Requests sent upstream and not answered yet, oldest first.
    private var waiting: [(method: String, url: String)] = []
    private var current: HTTPExchange?

    mutating func requestSent(method: String, url: String) {
        waiting.append((method, url))
    }

    /// Requests sent and not yet answered. Bounded by the machine (`maximumUnanswered`): an
    /// upstream that reads requests and never answers must not grow this without end.
    var unanswered: Int { waiting.count }
    static let maximumUnanswered = 1000

    mutating func feed(_ bytes: [UInt8]) -> [HTTPExchange] {
        var done: [HTTPExchange] = []
        var input = pending.isEmpty ? bytes[...] : (pending + bytes)[...]
        pending = []
        while !input.isEmpty {
            switch state {
            case .opaque:
                return done
            case .untilClose:
                current?.bytes += input.count
                return done
            case .body(let remaining):
                let n = min(remaining, input.count)
                current?.bytes += n
                input = input.dropFirst(n)
                if n == remaining { finish(into: &done) } else { state = .body(remaining: remaining - n) }
            case .chunkData(let remaining):
                let n = min(remaining, input.count)
                current?.bytes += n
                input = input.dropFirst(n)
                state = n == remaining ? .chunkEnd(seen: 0) : .chunkData(remaining: remaining - n)
            case .chunkEnd(let seen):
                // Exactly CRLF, as the request side demands: a response framed any other way is
                // read one way here and perhaps another by the client, so its answers (and where
                // a held 403 may go) are no longer known.
                guard input.first == (seen == 0 ? 0x0D : 0x0A) else { lose(); return done }
                input = input.dropFirst()
                state = seen == 0 ? .chunkEnd(seen: 1) : .chunkSize
            case .chunkSize, .trailers:
                guard let end = input.firstIndex(of: 0x0A) else {
                    if input.count > 8192 { lose() } else { pending = Array(input) }
                    return done
                }
                let line = input[input.startIndex..<end]
                input = input[(end + 1)...]
                if case .trailers = state {
                    if HTTPHead.chunkLine(line).isEmpty { finish(into: &done) }
                    continue
                }
                guard let size = HTTPHead.chunkSize(line) else { lose(); return done }
                state = size == 0 ? .trailers : .chunkData(remaining: size)
            case .head:
                switch HTTPHead.parse(input, expectRequest: false) {
                case .needMore:
                    if input.count <= HTTPHead.maximumLength { pending = Array(input) } else { lose() }
                    return done
                case .malformed:
                    lose()
                    return done
                case .head(let head):
                    input = input.dropFirst(head.length)
                    startResponse(head, into: &done)
                }
            }
        }
        return done
    }

    /// Once every request sent has been answered: whether the last answer switched protocols —
    /// what an upgrade or CONNECT waits for. nil while an answer is outstanding; false when the
    /// answers can no longer be read (fail closed).
    var switchedProtocols: Bool? {
        if lost { return false }
        if switched { return true }
        return waiting.isEmpty && current == nil ? false : nil
    }

    /// Whether every request sent has had its whole answer; nil once the answers can no longer
    /// be read.
    var allAnswered: Bool? {
        if lost { return nil }
        return waiting.isEmpty && current == nil
    }

    private mutating func lose() {
        state = .opaque
        lost = true
    }

    /// The upstream closed: a body delimited by the close ends here.
    mutating func closed() -> [HTTPExchange] {
        var done: [HTTPExchange] = []
        if case .untilClose = state { finish(into: &done) }
        return done
    }

    private mutating func startResponse(_ head: HTTPHead, into done: inout [HTTPExchange]) {
        guard case .response(let status, _) = head.kind else { lose(); return }
        if status >= 100 && status < 200 && status != 101 { return }  // interim: the final one follows
        let request = waiting.isEmpty ? (method: "", url: "") : waiting.removeFirst()
        current = HTTPExchange(method: request.method, url: request.url, status: status, bytes: 0)
        if status == 101 || (request.method == "CONNECT" && status < 300) {
            finish(into: &done)
            state = .opaque
            switched = true
        } else if request.method == "HEAD" || status == 204 || status == 304 {
            finish(into: &done)
        } else if head.isChunked {
            state = .chunkSize
        } else if let length = head.contentLength {
            if length == 0 { finish(into: &done) } else { state = .body(remaining: length) }
        } else {
            state = .untilClose
        }
    }

    private mutating func finish(into done: inout [HTTPExchange]) {
        if let exchange = current { done.append(exchange) }
        current = nil
        if case .opaque = state { return }
        state = .head
    }
}
