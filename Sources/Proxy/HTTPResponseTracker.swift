import Wire

/// Follows the upstream's HTTP/1.1 responses on a bumped flow so that each request's flow-log
/// line gets its status and body size. It only observes: the bytes are relayed as they are.
/// Heads and chunk-size lines are buffered (bounded); bodies are counted, never held.
struct HTTPResponseTracker {
    /// One request and the response it got.
    struct Exchange: Equatable {
        var method: String
        var url: String
        var status: Int
        var bytes: Int
    }

    private enum State {
        case head
        case body(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)  // data + CRLF
        case trailers
        case untilClose
        /// After an upgrade, or bytes that are not HTTP/1.1: nothing more to follow.
        case opaque
    }

    private var state = State.head
    private var pending: [UInt8] = []
    /// Requests sent upstream and not answered yet, oldest first.
    private var waiting: [(method: String, url: String)] = []
    private var current: Exchange?

    mutating func requestSent(method: String, url: String) {
        waiting.append((method, url))
    }

    mutating func feed(_ bytes: [UInt8]) -> [Exchange] {
        var done: [Exchange] = []
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
                current?.bytes += max(0, min(n, remaining - 2))  // the trailing CRLF is framing
                input = input.dropFirst(n)
                state = n == remaining ? .chunkSize : .chunkData(remaining: remaining - n)
            case .chunkSize, .trailers:
                guard let end = input.firstIndex(of: 0x0A) else {
                    if input.count > 8192 { state = .opaque } else { pending = Array(input) }
                    return done
                }
                let line = input[input.startIndex..<end].filter { $0 != 0x0D && $0 != 0x20 && $0 != 0x09 }
                input = input[(end + 1)...]
                if case .trailers = state {
                    if line.isEmpty { finish(into: &done) }
                    continue
                }
                let digits = line.prefix { $0 != 0x3B }  // ";" starts chunk extensions
                guard let size = Int(String(decoding: digits, as: UTF8.self), radix: 16), size >= 0 else { state = .opaque; return done }
                state = size == 0 ? .trailers : .chunkData(remaining: size + 2)
            case .head:
                switch HTTPHead.parse(input, expectRequest: false) {
                case .needMore:
                    if input.count <= HTTPHead.maximumLength { pending = Array(input) } else { state = .opaque }
                    return done
                case .malformed:
                    state = .opaque
                    return done
                case .head(let head):
                    input = input.dropFirst(head.length)
                    startResponse(head, into: &done)
                }
            }
        }
        return done
    }

    /// The upstream closed: a body delimited by the close ends here.
    mutating func closed() -> [Exchange] {
        var done: [Exchange] = []
        if case .untilClose = state { finish(into: &done) }
        return done
    }

    private mutating func startResponse(_ head: HTTPHead, into done: inout [Exchange]) {
        guard case .response(let status, _) = head.kind else { state = .opaque; return }
        if status >= 100 && status < 200 && status != 101 { return }  // interim: the final one follows
        let request = waiting.isEmpty ? (method: "", url: "") : waiting.removeFirst()
        current = Exchange(method: request.method, url: request.url, status: status, bytes: 0)
        if status == 101 || (request.method == "CONNECT" && status < 300) {
            finish(into: &done)
            state = .opaque
        } else if request.method == "HEAD" || status == 204 || status == 304 {
            finish(into: &done)
        } else if head.header("transfer-encoding")?.lowercased().contains("chunked") == true {
            state = .chunkSize
        } else if let length = head.header("content-length").flatMap({ Int($0) }), length >= 0 {
            if length == 0 { finish(into: &done) } else { state = .body(remaining: length) }
        } else {
            state = .untilClose
        }
    }

    private mutating func finish(into done: inout [Exchange]) {
        if let exchange = current { done.append(exchange) }
        current = nil
        if case .opaque = state { return }
        state = .head
    }
}
