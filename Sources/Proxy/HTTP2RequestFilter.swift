import NIOCore
import NIOHPACK
import Policy

/// HTTP/2 on a bumped flow, sans-IO: every request's header block (HPACK) is decoded and
/// decided at the request stage before it goes upstream, as HTTP/1.1 heads are.
///
/// The client's header blocks are re-encoded for the upstream with Loupe's own HPACK encoder,
/// so a refused request can be left out entirely without the two compression contexts drifting
/// apart; every other frame passes unchanged. A refused stream gets a 403 from Loupe (encoded
/// without touching the client's dynamic table), its later frames are dropped and the
/// connection window they used is given back. The upstream's frames are relayed as they are;
/// its SETTINGS are read for the header table size both encoders must respect.
struct HTTP2RequestFilter {
    struct Output {
        var upstream: [UInt8] = []
        var client: [UInt8] = []
        var decisions: [(decision: Decision, method: String, url: String)] = []
        /// The client's stream is not valid HTTP/2: the connection must end.
        var failure: String?
    }

    /// A request as the policy sees it: method and absolute URL.
    typealias Decide = (_ method: String, _ url: String) -> Decision

    static let preface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
    /// The smallest SETTINGS_MAX_FRAME_SIZE a peer may set: re-encoded blocks never exceed it.
    static let maxFramePayload = 16_384
    /// Header frames are held whole until decoded; larger ones end the connection.
    static let maxHeaderBlock = 256 * 1024

    enum FrameType: UInt8 {
        case data = 0, headers = 1, priority = 2, rstStream = 3, settings = 4, pushPromise = 5
        case ping = 6, goAway = 7, windowUpdate = 8, continuation = 9
    }

    enum Flag {
        static let endStream: UInt8 = 0x1, ack: UInt8 = 0x1, endHeaders: UInt8 = 0x4, padded: UInt8 = 0x8, priority: UInt8 = 0x20
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
    /// Payload bytes of the current streamed frame still to come, and whether they are dropped.
    private var passing = 0
    private var dropping = false
    private var decoder: HPACKDecoder
    private var encoder: HPACKEncoder
    private var fromUpstreamBuffer: [UInt8] = []
    /// Bytes of an upstream frame payload still to pass without looking (not SETTINGS).
    private var upstreamSkip = 0
    private var upstreamSettingsSeen = false
    /// Loupe's own frames for the client, waiting for their turn (see flushToClient).
    private var toClient: [UInt8] = []

    init() {
        let allocator = ByteBufferAllocator()
        // Real browsers send large cookie headers; the limit is for the decoder's protection only.
        decoder = HPACKDecoder(allocator: allocator, maxDynamicTableSize: HPACKDecoder.maxDynamicTableSize, maxHeaderListSize: 256 * 1024)
        encoder = HPACKEncoder(allocator: allocator)
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
        fromClientBuffer += bytes
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
            if !carriesHeaders {
                // Streamed as it arrives; a refused stream's frames are dropped, and the
                // connection window its DATA used is given back to the client.
                dropping = header.stream != 0 && refused.contains(header.stream)
                if dropping, header.type == FrameType.data.rawValue, header.length > 0 {
                    toClient += Self.windowUpdate(stream: 0, increment: UInt32(header.length))
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
        let method = headers.first(name: ":method") ?? ""
        let authority = headers.first(name: ":authority") ?? headers.first(name: "host") ?? ""
        let scheme = headers.first(name: ":scheme") ?? "https"
        let path = headers.first(name: ":path") ?? ""
        let url = "\(scheme)://\(authority)\(path)"
        let decision = decide(method, url)
        out.decisions.append((decision, method, url))
        if decision.verdict == .block {
            refused.insert(block.stream)
            toClient += Self.forbidden(stream: block.stream, body: ConnectionMachine.forbiddenBody(decision), requestEnded: block.endStream)
            return
        }
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

    /// Reads the upstream's SETTINGS for its header table size; the caller relays `bytes` as
    /// they are, then the returned frames of Loupe's own (403s, window updates) that were waiting
    /// for a frame boundary.
    mutating func fromUpstream(_ bytes: [UInt8]) -> [UInt8] {
        readUpstream(bytes)
        return flushToClient()
    }

    private mutating func readUpstream(_ bytes: [UInt8]) {
        var index = 0
        while index < bytes.count {
            if upstreamSkip > 0 {
                let n = min(upstreamSkip, bytes.count - index)
                upstreamSkip -= n
                index += n
                continue
            }
            fromUpstreamBuffer.append(bytes[index])
            index += 1
            guard fromUpstreamBuffer.count >= 9 else { continue }
            let length = Int(fromUpstreamBuffer[0]) << 16 | Int(fromUpstreamBuffer[1]) << 8 | Int(fromUpstreamBuffer[2])
            let isSettings = fromUpstreamBuffer[3] == FrameType.settings.rawValue && fromUpstreamBuffer[4] & Flag.ack == 0
            if !isSettings {
                fromUpstreamBuffer.removeAll()
                upstreamSkip = length
                continue
            }
            guard fromUpstreamBuffer.count == 9 + length else { continue }
            applySettings(fromUpstreamBuffer[9...])
            upstreamSettingsSeen = true
            fromUpstreamBuffer.removeAll()
        }
    }

    private mutating func applySettings(_ payload: ArraySlice<UInt8>) {
        var i = payload.startIndex
        while i + 6 <= payload.endIndex {
            let id = UInt16(payload[i]) << 8 | UInt16(payload[i + 1])
            let value = Int(UInt32(payload[i + 2]) << 24 | UInt32(payload[i + 3]) << 16 | UInt32(payload[i + 4]) << 8 | UInt32(payload[i + 5]))
            if id == 0x1 {  // SETTINGS_HEADER_TABLE_SIZE: the client's encoder may use this much;
                // Loupe's encoder toward the upstream stays within it.
                decoder.maxDynamicTableLength = max(value, HPACKDecoder.maxDynamicTableSize)
                try? encoder.setDynamicTableSize(min(value, HPACKEncoder.defaultDynamicTableSize))
            }
            i += 6
        }
    }

    // MARK: frames Loupe writes

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

    static func windowUpdate(stream: UInt32, increment: UInt32) -> [UInt8] {
        frameHeader(length: 4, type: .windowUpdate, flags: 0, stream: stream)
            + [UInt8(increment >> 24 & 0x7F), UInt8(increment >> 16 & 0xFF), UInt8(increment >> 8 & 0xFF), UInt8(increment & 0xFF)]
    }

    /// A 403 on `stream`: its header block uses only literals never indexed (static names), so
    /// the client's decoder — whose table the upstream's encoder drives — is left as it was.
    /// A request still sending its body is then told to stop (RST_STREAM NO_ERROR, RFC 9113 §8.1).
    static func forbidden(stream: UInt32, body: [UInt8], requestEnded: Bool) -> [UInt8] {
        func literal(nameIndex: UInt8, _ value: String) -> [UInt8] {
            // 0001xxxx: never indexed, name from the static table (4-bit prefix integer).
            let name: [UInt8] = nameIndex < 15 ? [0x10 | nameIndex] : [0x1F, nameIndex - 15]
            let bytes = Array(value.utf8)
            return name + [UInt8(bytes.count)] + bytes  // no Huffman; values are short
        }
        let block = literal(nameIndex: 8, "403") + literal(nameIndex: 31, "text/plain; charset=utf-8") + literal(nameIndex: 28, "\(body.count)")
        var out = frameHeader(length: block.count, type: .headers, flags: Flag.endHeaders, stream: stream) + block
        out += frameHeader(length: body.count, type: .data, flags: Flag.endStream, stream: stream) + body
        if !requestEnded { out += frameHeader(length: 4, type: .rstStream, flags: 0, stream: stream) + [0, 0, 0, 0] }
        return out
    }
}
