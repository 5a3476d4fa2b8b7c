import NIOCore
import NIOHPACK
import Policy

/// HTTP/2 on a bumped flow, sans-IO: every request's header block (HPACK) is decoded and
/// decided at the request stage before it goes upstream, as HTTP/1.1 heads are.
///
/// The client's header blocks are re-encoded for the upstream with Loupe's own HPACK encoder,
/// so a refused request can be left out entirely without the two compression contexts drifting
/// apart; every other frame passes unchanged. A refused stream gets a 403 from Loupe (a 421
/// when misdirected, a 400 when malformed, `HTTP2RequestValidation`; encoded without touching the client's dynamic table),
/// its later frames are dropped and the connection window they used is given back; a request
/// found malformed once the upstream has it (a body longer or shorter than its content-length,
/// bad trailers) is reset both ways. The upstream's frames are relayed as they are;
/// its SETTINGS are read for the header table size both encoders must respect.
///
/// Server push is switched off toward the upstream (the client's SETTINGS go up with
/// SETTINGS_ENABLE_PUSH = 0): a pushed stream is a response to a request nobody sent, which the
/// request stage could not decide. Servers may always choose not to push, so clients see no
/// difference but the absence of pushes (which browsers have dropped anyway).
struct HTTP2RequestFilter {
    struct Output {
        var upstream: [UInt8] = []
        var client: [UInt8] = []
        var decisions: [(decision: Decision, method: String, url: String)] = []
        /// The client's stream is not valid HTTP/2: the connection must end.
        var failure: String?
    }

    /// A request as the policy sees it: method and absolute URL. The decider may complete the
    /// URL (the connection's port, where the request names none); what it leaves is logged.
    typealias Decide = (_ method: String, _ url: inout String) -> Decision

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set: re-encoded blocks never exceed it.
    static let maxFramePayload = 16_384
    /// Header frames are held whole until decoded; larger ones end the connection.
    static let maxHeaderBlock = 256 * 1024
    /// What a peer's SETTINGS may make an HPACK table Loupe keeps (real ones ask ≤ 64 KiB).
    static let maxTableSize = 1 << 20
    /// Each refused stream is remembered (its late frames are dropped): bounded per connection.
    static let maxRefusedStreams = 10_000

    enum FrameType: UInt8 {
        case data = 0, headers = 1, priority = 2, rstStream = 3, settings = 4, pushPromise = 5
        case ping = 6, goAway = 7, windowUpdate = 8, continuation = 9
    }

    enum Flag {
        static let endStream: UInt8 = 0x1, ack: UInt8 = 0x1, endHeaders: UInt8 = 0x4, padded: UInt8 = 0x8, priority: UInt8 = 0x20
    }

    enum Setting {
        static let headerTableSize: UInt16 = 0x1, enablePush: UInt16 = 0x2
    }

    /// A header block spread over HEADERS and CONTINUATION frames, not yet complete.
    private struct OpenBlock {
        var stream: UInt32
        var endStream: Bool
        var priority: [UInt8]?
        var fragment: [UInt8]
    }

    private var fromClientBuffer: [UInt8] = []
    private var prefaceSeen = false
    private var openBlock: OpenBlock?
    private var refused: Set<UInt32> = []
    /// Bytes of Loupe's own DATA (403 bodies) the client will hand back in connection-level
    /// WINDOW_UPDATEs meant for the upstream.
    private var windowOwed = 0
    /// Allowed requests whose client side is still open (a body or trailers may follow).
    private var openRequests: Set<UInt32> = []
    /// Open requests that declared a content-length: what it said, and how much DATA came.
    private var bodies: [UInt32: (declared: Int, received: Int)] = [:]
    /// Payload bytes of the current streamed frame still to come, and whether they are dropped.
    private var passing = 0
    private var dropping = false
    private var decoder: HPACKDecoder
    private var encoder: HPACKEncoder
    private var fromUpstreamBuffer: [UInt8] = []
    /// Bytes of an upstream frame payload still to pass without looking (not SETTINGS).
    private var upstreamSkip = 0
    private var upstreamSettingsSeen = false
    /// The upstream broke the protocol in a way that must not reach the client.
    private var upstreamFailure: String?
    private var upstreamFrameLength = 0
    /// The upstream's HPACK context, followed to read each response's status.
    private var upstreamDecoder: HPACKDecoder
    private var followingUpstream = true
    private var upstreamBlock: OpenBlock?
    /// Requests sent upstream, by stream, until their response ends.
    private var exchanges: [UInt32: HTTPExchange] = [:]
    /// Loupe's own frames for the client, waiting for their turn (see flushToClient).
    private var toClient: [UInt8] = []
    /// The host of a request that names none (no :authority or Host): the connection's SNI.
    var defaultAuthority = ""
    /// Entries kept for streams still open (tests: cancelled streams leave none behind).
    var openStreamEntries: Int { openRequests.count + bodies.count + exchanges.count }

    init() {
        let allocator = ByteBufferAllocator()
        // Real browsers send large cookie headers; the limit is for the decoder's protection only.
        decoder = HPACKDecoder(allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: 256 * 1024)
        encoder = HPACKEncoder(allocator: allocator)
        upstreamDecoder = HPACKDecoder(allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: 256 * 1024)
    }

    // MARK: client → upstream

    mutating func fromClient(_ bytes: [UInt8], decide: Decide) -> Output {
        var out = readClient(bytes, decide: decide)
        out.client = flushToClient()
        return out
    }

    /// Frames Loupe writes to the client wait for a frame boundary in the upstream's stream
    /// (never inside one of its frames) and for the upstream's SETTINGS, which must come first.
    private mutating func flushToClient() -> [UInt8] {
        guard upstreamSettingsSeen, upstreamSkip == 0, fromUpstreamBuffer.isEmpty, !toClient.isEmpty else { return [] }
        defer { toClient = [] }
        return toClient
    }

    private mutating func readClient(_ bytes: [UInt8], decide: Decide) -> Output {
        var out = Output()
        if fromClientBuffer.isEmpty { fromClientBuffer = bytes } else { fromClientBuffer += bytes }  // usually nothing is left over
        var offset = 0
        defer { fromClientBuffer.removeFirst(offset) }
        if !prefaceSeen {
            let have = min(fromClientBuffer.count, Self.preface.count)
            guard fromClientBuffer[0..<have].elementsEqual(Self.preface[0..<have]) else {
                out.failure = "HTTP/2: the client did not send the connection preface"
                return out
            }
            guard have == Self.preface.count else { return out }
            prefaceSeen = true
            offset = have
            out.upstream += Self.preface
        }
        while offset < fromClientBuffer.count {
            // The rest of a frame being streamed through (or dropped): no need to hold it.
            if passing > 0 {
                let n = min(passing, fromClientBuffer.count - offset)
                if !dropping { out.upstream += fromClientBuffer[offset..<(offset + n)] }
                passing -= n
                offset += n
                continue
            }
            guard let header = Self.frameHeader(in: fromClientBuffer, at: offset) else { break }
            let carriesHeaders = header.type == FrameType.headers.rawValue || header.type == FrameType.continuation.rawValue || openBlock != nil
            if openBlock == nil, header.type == FrameType.settings.rawValue, fromClientBuffer[offset + 4] & Flag.ack == 0 {
                // The client's SETTINGS bound the upstream's HPACK table, which Loupe follows.
                guard let frame = Self.frame(in: fromClientBuffer, at: offset) else { break }
                let payload = fromClientBuffer[frame.payload]
                guard frame.stream == 0, payload.count % 6 == 0 else {
                    out.failure = "HTTP/2: a SETTINGS frame of \(payload.count) bytes on stream \(frame.stream)"
                    return out
                }
                for (id, value) in Self.settings(payload) where id == Setting.headerTableSize {
                    upstreamDecoder.maxDynamicTableLength = min(max(value, HPACKDecoder.maxDynamicTableSize), Self.maxTableSize)
                }
                out.upstream += Self.withoutPush(payload)
                offset = frame.end
                continue
            }
            if openBlock == nil, header.type == FrameType.windowUpdate.rawValue, header.stream == 0, windowOwed > 0 {
                // The client counts Loupe's 403 bodies against the connection window and gives
                // that back to the upstream, which never sent them: keep those bytes back, or
                // the upstream would overrun the client's real window.
                guard let frame = Self.frame(in: fromClientBuffer, at: offset) else { break }
                offset = frame.end
                guard frame.payload.count == 4 else { out.upstream += fromClientBuffer[frame.start..<frame.end]; continue }
                var increment = 0
                for byte in fromClientBuffer[frame.payload] { increment = increment << 8 | Int(byte) }
                increment &= 0x7FFF_FFFF
                let kept = min(windowOwed, increment)
                windowOwed -= kept
                if increment > kept { out.upstream += Self.windowUpdate(stream: 0, increment: UInt32(increment - kept)) }
                continue
            }
            if !carriesHeaders {
                // A body that outgrows its content-length, or ends short of it, is cut before
                // the frame that shows it goes upstream (§8.1.1).
                if header.type == FrameType.data.rawValue, let body = bodies[header.stream] {
                    var data = header.length
                    if fromClientBuffer[offset + 4] & Flag.padded != 0 {
                        guard fromClientBuffer.count - offset > 9 else { break }  // the pad length first
                        data -= 1 + Int(fromClientBuffer[offset + 9])
                    }
                    let received = body.received + max(0, data)
                    let ends = fromClientBuffer[offset + 4] & Flag.endStream != 0
                    if received > body.declared || (ends && received != body.declared) {
                        reset(header.stream, Self.shortBody((body.declared, received)), into: &out)
                        if out.failure != nil { return out }
                    } else {
                        bodies[header.stream] = ends ? nil : (body.declared, received)
                    }
                }
                // Streamed as it arrives; a refused stream's frames are dropped, and the
                // connection window its DATA used is given back to the client.
                dropping = header.stream != 0 && refused.contains(header.stream)
                if header.type == FrameType.data.rawValue, fromClientBuffer[offset + 4] & Flag.endStream != 0 {
                    openRequests.remove(header.stream)  // its body is complete: no trailers follow
                } else if header.type == FrameType.rstStream.rawValue {
                    // The client cancelled it: nothing more is owed either way (and a client
                    // opening and cancelling streams must not grow these without bound).
                    openRequests.remove(header.stream)
                    bodies[header.stream] = nil
                    exchanges[header.stream] = nil
                }
                if dropping, header.type == FrameType.data.rawValue, header.length > 0 {
                    // Both windows: the upstream never saw the stream, so nobody else opens it.
                    toClient += Self.windowUpdate(stream: 0, increment: UInt32(header.length))
                        + Self.windowUpdate(stream: header.stream, increment: UInt32(header.length))
                }
                if !dropping { out.upstream += fromClientBuffer[offset..<(offset + 9)] }
                passing = header.length
                offset += 9
                continue
            }
            guard header.length <= Self.maxHeaderBlock else {
                out.failure = "HTTP/2: a header frame of \(header.length) bytes (more than \(Self.maxHeaderBlock))"
                return out
            }
            guard let frame = Self.frame(in: fromClientBuffer, at: offset) else { break }
            offset = frame.end
            handleClientFrame(frame, decide: decide, into: &out)
            if out.failure != nil { return out }
        }
        return out
    }

    /// Length, type and stream of the frame at `offset`, once its 9-byte header has arrived.
    static func frameHeader(in bytes: [UInt8], at offset: Int) -> (length: Int, type: UInt8, stream: UInt32)? {
        guard bytes.count - offset >= 9 else { return nil }
        let length = Int(bytes[offset]) << 16 | Int(bytes[offset + 1]) << 8 | Int(bytes[offset + 2])
        let stream = (UInt32(bytes[offset + 5]) << 24 | UInt32(bytes[offset + 6]) << 16 | UInt32(bytes[offset + 7]) << 8 | UInt32(bytes[offset + 8])) & 0x7FFF_FFFF
        return (length, bytes[offset + 3], stream)
    }

    struct Frame {
        var type: UInt8
        var flags: UInt8
        var stream: UInt32
        var start: Int      // of the 9-byte header
        var payload: Range<Int>
        var end: Int { payload.upperBound }
    }

    /// The complete frame at `offset`, if all of it has arrived.
    static func frame(in bytes: [UInt8], at offset: Int) -> Frame? {
        guard let header = frameHeader(in: bytes, at: offset), bytes.count - offset - 9 >= header.length else { return nil }
        return Frame(type: header.type, flags: bytes[offset + 4], stream: header.stream, start: offset, payload: (offset + 9)..<(offset + 9 + header.length))
    }

    private mutating func handleClientFrame(_ frame: Frame, decide: Decide, into out: inout Output) {
        let payload = fromClientBuffer[frame.payload]
        if var open = openBlock {
            // RFC 9113 §6.10: nothing may interleave with a header block.
            guard frame.type == FrameType.continuation.rawValue, frame.stream == open.stream else {
                out.failure = "HTTP/2: a header block was interrupted by another frame"
                return
            }
            open.fragment += payload
            guard open.fragment.count <= Self.maxHeaderBlock else {
                out.failure = "HTTP/2: a header block of more than \(Self.maxHeaderBlock) bytes"
                return
            }
            if frame.flags & Flag.endHeaders != 0 {
                openBlock = nil
                completeBlock(open, decide: decide, into: &out)
            } else {
                openBlock = open
            }
            return
        }
        switch FrameType(rawValue: frame.type) {
        case .headers:
            var body = payload
            if frame.flags & Flag.padded != 0 {
                guard let pad = body.first, Int(pad) < body.count else { out.failure = "HTTP/2: bad padding"; return }
                body = body.dropFirst().dropLast(Int(pad))
            }
            var priority: [UInt8]?
            if frame.flags & Flag.priority != 0 {
                guard body.count >= 5 else { out.failure = "HTTP/2: short HEADERS priority"; return }
                priority = Array(body.prefix(5))
                body = body.dropFirst(5)
            }
            let block = OpenBlock(stream: frame.stream, endStream: frame.flags & Flag.endStream != 0, priority: priority, fragment: Array(body))
            if frame.flags & Flag.endHeaders != 0 {
                completeBlock(block, decide: decide, into: &out)
            } else {
                openBlock = block
            }
        default:  // CONTINUATION (only header-carrying frames come here)
            out.failure = "HTTP/2: CONTINUATION without a header block"
        }
    }

    private mutating func completeBlock(_ block: OpenBlock, decide: Decide, into out: inout Output) {
        var buffer = ByteBuffer(bytes: block.fragment)
        let headers: HPACKHeaders
        do {
            headers = try decoder.decodeHeaders(from: &buffer)
        } catch {
            out.failure = "HTTP/2: the client's header block does not decode (HPACK): \(error)"
            return
        }
        // Decoded in any case (the HPACK context must stay in step); a refused stream's later
        // blocks (trailers) are dropped, an open request's are forwarded without a new decision.
        if refused.contains(block.stream) { return }
        let isTrailer = openRequests.contains(block.stream)
        let verdict = HTTP2RequestValidation.check(headers, trailers: isTrailer, endStream: block.endStream)
        if block.endStream { openRequests.remove(block.stream) }
        if isTrailer {
            // The upstream already has the request: a malformed ending resets it both ways.
            if case .malformed(let why) = verdict { return reset(block.stream, why, into: &out) }
            if block.endStream, let body = bodies.removeValue(forKey: block.stream), body.received != body.declared {
                return reset(block.stream, Self.shortBody(body), into: &out)
            }
            forward(headers, of: block, into: &out)
            return
        }
        let method = headers.first(name: ":method") ?? ""
        // The hosts it names, :authority first; an empty one names none.
        let hosts = (headers[":authority"] + headers["host"]).filter { !$0.isEmpty }
        let path = headers.first(name: ":path") ?? ""
        // https whatever :scheme says: the request came over TLS, and "http" must not slip
        // past a rule on "https://".
        var url = "https://\(hosts.first ?? defaultAuthority)\(path)"
        // Hosts that disagree (:authority and Host, or Host twice): the request stage would
        // judge one, an origin that takes another would serve it (RFC 9113 8.3.1).
        let distinct = hosts.count > 1 ? Set(hosts.map { $0.lowercased() }) : []
        let decision: Decision
        if case .malformed(let why) = verdict {
            decision = Decision(stage: .request, verdict: .block, rule: Decision.malformedRule, reason: "a malformed HTTP/2 request: \(why)")
        } else if distinct.count > 1 {
            decision = Decision(stage: .request, verdict: .block, rule: Decision.misdirectedRule, reason: "the request names more than one host (\(distinct.sorted().joined(separator: ", ").prefix(120)))")
        } else {
            decision = decide(method, &url)
        }
        out.decisions.append((decision, method, url))
        if decision.verdict == .block {
            guard refused.count < Self.maxRefusedStreams else {
                out.failure = "HTTP/2: more than \(Self.maxRefusedStreams) refused requests on one connection"
                return
            }
            refused.insert(block.stream)
            let body = ConnectionMachine.forbiddenBody(decision)
            toClient += Self.refusal(stream: block.stream, status: String(ConnectionMachine.refusalStatus(decision).code), body: body)
            windowOwed += body.count
            return
        }
        if case .wellFormed(let length?) = verdict, !block.endStream { bodies[block.stream] = (length, 0) }
        if !block.endStream { openRequests.insert(block.stream) }
        exchanges[block.stream] = HTTPExchange(method: method, url: url, status: 0, bytes: 0)
        forward(headers, of: block, into: &out)
    }

    /// Ends a request the upstream already has: RST_STREAM (PROTOCOL_ERROR) both ways, its
    /// later frames dropped, and a decision line saying why.
    private mutating func reset(_ stream: UInt32, _ why: String, into out: inout Output) {
        guard refused.count < Self.maxRefusedStreams else {
            out.failure = "HTTP/2: more than \(Self.maxRefusedStreams) refused requests on one connection"
            return
        }
        refused.insert(stream)
        openRequests.remove(stream)
        bodies[stream] = nil
        let exchange = exchanges.removeValue(forKey: stream)
        out.decisions.append((Decision(stage: .request, verdict: .block, rule: Decision.malformedRule, reason: "a malformed HTTP/2 request: \(why)"),
                              exchange?.method ?? "", exchange?.url ?? ""))
        out.upstream += Self.rstStream(stream, code: Self.protocolError)
        toClient += Self.rstStream(stream, code: Self.protocolError)
    }

    static func shortBody(_ body: (declared: Int, received: Int)) -> String {
        "content-length \(body.declared), but \(body.received) bytes of body"
    }

    /// Re-encodes a header block with Loupe's encoder (the upstream's decoder follows it).
    private mutating func forward(_ headers: HPACKHeaders, of block: OpenBlock, into out: inout Output) {
        do {
            try encoder.beginEncoding(allocator: ByteBufferAllocator())
            try encoder.append(headers: headers)
            var encoded = try encoder.endEncoding()
            let bytes = encoded.readBytes(length: encoded.readableBytes) ?? []
            out.upstream += Self.headerFrames(stream: block.stream, block: bytes, endStream: block.endStream, priority: block.priority)
        } catch {
            out.failure = "HTTP/2: re-encoding a header block failed: \(error)"
        }
    }

    // MARK: upstream → client (observed, passed unchanged)

    /// Reads the upstream's frames — SETTINGS for its header table size, response header blocks
    /// and DATA for each request's status and size; the caller relays `bytes` as they are, then
    /// `client`: frames of Loupe's own (403s, window updates) that were waiting for a boundary.
    /// With `failure`, nothing of `bytes` may reach the client: the connection ends.
    mutating func fromUpstream(_ bytes: [UInt8]) -> (client: [UInt8], answered: [HTTPExchange], failure: String?) {
        let answered = readUpstream(bytes)
        if let upstreamFailure { return ([], answered, upstreamFailure) }
        return (flushToClient(), answered, nil)
    }

    private mutating func readUpstream(_ bytes: [UInt8]) -> [HTTPExchange] {
        var answered: [HTTPExchange] = []
        var index = 0
        while index < bytes.count, upstreamFailure == nil {
            if upstreamSkip > 0 {
                let n = min(upstreamSkip, bytes.count - index)
                upstreamSkip -= n
                index += n
                continue
            }
            // The 9-byte header first, then — for the frames read whole — the payload.
            let wanted = fromUpstreamBuffer.count < 9 ? 9 : 9 + upstreamFrameLength
            let n = min(wanted - fromUpstreamBuffer.count, bytes.count - index)
            fromUpstreamBuffer += bytes[index..<(index + n)]
            index += n
            guard fromUpstreamBuffer.count == wanted else { continue }
            if wanted == 9, let header = Self.frameHeader(in: fromUpstreamBuffer, at: 0) {
                guard header.type != FrameType.pushPromise.rawValue else {
                    // RFC 9113 §8.4: a connection error once push is disabled; never relayed.
                    upstreamFailure = "HTTP/2: the upstream pushed a stream although push was disabled (PUSH_PROMISE on stream \(header.stream))"
                    break
                }
                upstreamFrameLength = header.length
                let flags = fromUpstreamBuffer[4]
                let readWhole = readsWhole(type: header.type, flags: flags, length: header.length)
                if header.type == FrameType.data.rawValue, var exchange = exchanges[header.stream] {
                    exchange.bytes += header.length
                    exchanges[header.stream] = exchange
                    if flags & Flag.endStream != 0 { answered += ended(header.stream) }
                } else if header.type == FrameType.rstStream.rawValue {
                    exchanges[header.stream] = nil
                    openRequests.remove(header.stream)
                    bodies[header.stream] = nil
                }
                if !readWhole {
                    fromUpstreamBuffer.removeAll()
                    upstreamSkip = header.length
                    continue
                }
                if header.length > 0 { continue }  // now the payload
            }
            answered += upstreamFrame()
            fromUpstreamBuffer.removeAll()
        }
        return answered
    }

    /// SETTINGS, and (while the upstream's HPACK context is followed) header-carrying frames.
    private mutating func readsWhole(type: UInt8, flags: UInt8, length: Int) -> Bool {
        if type == FrameType.settings.rawValue { return flags & Flag.ack == 0 }
        let carriesHeaders = type == FrameType.headers.rawValue || type == FrameType.continuation.rawValue
        guard carriesHeaders, followingUpstream else { return false }
        if length > Self.maxHeaderBlock { followingUpstream = false }  // relayed, no longer decoded
        return followingUpstream
    }

    /// A whole upstream frame in `fromUpstreamBuffer`.
    private mutating func upstreamFrame() -> [HTTPExchange] {
        guard let frame = Self.frame(in: fromUpstreamBuffer, at: 0) else { return [] }
        var payload = fromUpstreamBuffer[frame.payload]
        switch FrameType(rawValue: frame.type) {
        case .settings:
            applySettings(payload)
            upstreamSettingsSeen = true
            return []
        case .continuation:
            guard var block = upstreamBlock, block.stream == frame.stream else { followingUpstream = false; return [] }
            block.fragment += payload
            upstreamBlock = block
        default:  // HEADERS: padding, then perhaps priority
            if frame.flags & Flag.padded != 0 {
                guard let pad = payload.first, Int(pad) < payload.count else { followingUpstream = false; return [] }
                payload = payload.dropFirst().dropLast(Int(pad))
            }
            let skip = frame.flags & Flag.priority != 0 ? 5 : 0
            guard payload.count >= skip else { followingUpstream = false; return [] }
            upstreamBlock = OpenBlock(stream: frame.stream, endStream: frame.flags & Flag.endStream != 0, priority: nil,
                                      fragment: Array(payload.dropFirst(skip)))
        }
        guard frame.flags & Flag.endHeaders != 0, let block = upstreamBlock else { return [] }
        upstreamBlock = nil
        var buffer = ByteBuffer(bytes: block.fragment)
        guard let headers = try? upstreamDecoder.decodeHeaders(from: &buffer) else {
            followingUpstream = false  // the context is lost; the relay does not depend on it
            return []
        }
        if var exchange = exchanges[block.stream], exchange.status == 0 || exchange.status < 200,
           let status = headers.first(name: ":status").flatMap({ Int($0) }) {
            exchange.status = status
            exchanges[block.stream] = exchange
        }
        return block.endStream ? ended(block.stream) : []
    }

    private mutating func ended(_ stream: UInt32) -> [HTTPExchange] {
        guard let exchange = exchanges.removeValue(forKey: stream) else { return [] }
        return [exchange]
    }

    /// The upstream's SETTINGS_HEADER_TABLE_SIZE: the client's encoder may use this much, and
    /// Loupe's encoder toward the upstream stays within it.
    private mutating func applySettings(_ payload: ArraySlice<UInt8>) {
        for (id, value) in Self.settings(payload) where id == Setting.headerTableSize {
            decoder.maxDynamicTableLength = min(max(value, HPACKDecoder.maxDynamicTableSize), Self.maxTableSize)
            try? encoder.setDynamicTableSize(min(value, HPACKEncoder.defaultDynamicTableSize))
        }
    }

    /// The (identifier, value) pairs of a SETTINGS payload.
    static func settings(_ payload: ArraySlice<UInt8>) -> [(UInt16, Int)] {
        var out: [(UInt16, Int)] = []
        var i = payload.startIndex
        while i + 6 <= payload.endIndex {
            let id = UInt16(payload[i]) << 8 | UInt16(payload[i + 1])
            var value = 0
            for byte in payload[(i + 2)..<(i + 6)] { value = value << 8 | Int(byte) }
            out.append((id, value))
            i += 6
        }
        return out
    }

    // MARK: frames Loupe writes

    /// The client's SETTINGS as they go upstream: the same, with SETTINGS_ENABLE_PUSH = 0.
    static func withoutPush(_ payload: ArraySlice<UInt8>) -> [UInt8] {
        var kept: [UInt8] = []
        var i = payload.startIndex
        while i + 6 <= payload.endIndex {
            if UInt16(payload[i]) << 8 | UInt16(payload[i + 1]) != Setting.enablePush { kept += payload[i..<(i + 6)] }
            i += 6
        }
        kept += [0, UInt8(Setting.enablePush), 0, 0, 0, 0]
        return frameHeader(length: kept.count, type: .settings, flags: 0, stream: 0) + kept
    }

    static func frameHeader(length: Int, type: FrameType, flags: UInt8, stream: UInt32) -> [UInt8] {
        [UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type.rawValue, flags,
         UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)]
    }

    /// HEADERS (with the priority fields, if the client sent them) and CONTINUATIONs.
    static func headerFrames(stream: UInt32, block: [UInt8], endStream: Bool, priority: [UInt8]?) -> [UInt8] {
        var out: [UInt8] = []
        var rest = block[...]
        let firstRoom = maxFramePayload - (priority?.count ?? 0)
        let first = rest.prefix(firstRoom)
        rest = rest.dropFirst(first.count)
        var flags: UInt8 = (endStream ? Flag.endStream : 0) | (rest.isEmpty ? Flag.endHeaders : 0) | (priority != nil ? Flag.priority : 0)
        out += frameHeader(length: first.count + (priority?.count ?? 0), type: .headers, flags: flags, stream: stream)
        out += (priority ?? []) + first
        while !rest.isEmpty {
            let chunk = rest.prefix(maxFramePayload)
            rest = rest.dropFirst(chunk.count)
            flags = rest.isEmpty ? Flag.endHeaders : 0
            out += frameHeader(length: chunk.count, type: .continuation, flags: flags, stream: stream) + chunk
        }
        return out
    }

    static let protocolError: UInt32 = 0x1

    static func rstStream(_ stream: UInt32, code: UInt32) -> [UInt8] {
        frameHeader(length: 4, type: .rstStream, flags: 0, stream: stream)
            + [UInt8(code >> 24 & 0xFF), UInt8(code >> 16 & 0xFF), UInt8(code >> 8 & 0xFF), UInt8(code & 0xFF)]
    }

    static func windowUpdate(stream: UInt32, increment: UInt32) -> [UInt8] {
        frameHeader(length: 4, type: .windowUpdate, flags: 0, stream: stream)
            + [UInt8(increment >> 24 & 0x7F), UInt8(increment >> 16 & 0xFF), UInt8(increment >> 8 & 0xFF), UInt8(increment & 0xFF)]
    }

    /// A refusal (403 blocked, 421 misdirected, 400 malformed) on `stream`: its header block uses only literals never indexed (static names), so
    /// the client's decoder — whose table the upstream's encoder drives — is left as it was.
    /// A request still sending its body is not reset: RFC 9113 §8.1 allows RST_STREAM NO_ERROR,
    /// but Debian 12's curl then reports a framing error instead of the 403. Its body is drained
    /// (dropped, its window given back) until it ends.
    static func refusal(stream: UInt32, status: String, body: [UInt8]) -> [UInt8] {
        func literal(nameIndex: UInt8, _ value: String) -> [UInt8] {
            // 0001xxxx: never indexed, name from the static table (4-bit prefix integer).
            let name: [UInt8] = nameIndex < 15 ? [0x10 | nameIndex] : [0x1F, nameIndex - 15]
            let bytes = Array(value.utf8)
            return name + [UInt8(bytes.count)] + bytes  // no Huffman; values are short
        }
        let block = literal(nameIndex: 8, status) + literal(nameIndex: 31, "text/plain; charset=utf-8") + literal(nameIndex: 28, "\(body.count)")
        return frameHeader(length: block.count, type: .headers, flags: Flag.endHeaders, stream: stream) + block
            + frameHeader(length: body.count, type: .data, flags: Flag.endStream, stream: stream) + body
    }
}
