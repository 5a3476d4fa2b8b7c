/// DNS answers carried over TCP (RFC 7766: each message behind a two-byte length), put back
/// together from the segments the DNS queue sees, so names learnt over TCP (truncated answers
/// retried, `dig +tcp`, resolvers that prefer TCP) decide flows as UDP answers do. Sans-IO: feed
/// segments, get whole messages. A stream is followed only from its SYN-ACK (only then is its
/// first byte known to start a message); a gap — a segment missed or reordered — ends the
/// snooping of that stream. The connection itself is never touched: every segment is accepted.
/// The same for the live queue (Divert) and for captures replayed (Policy), so both learn the
/// same names. `Key` names a stream's direction, server to client.
public struct DNSStreams<Key: Hashable>: Sendable where Key: Sendable {
    private struct Stream: Sendable {
        /// Sequence number of the next byte expected.
        var next: UInt32
        /// At most one unfinished message and its length prefix (< 2 + 65,535 bytes): whatever
        /// completes a message is taken out at once.
        var buffer: [UInt8] = []
    }

    private var streams: [Key: Stream] = [:]
    public let capacity: Int

    public init(capacity: Int = 1024) { self.capacity = max(1, capacity) }

    public var count: Int { streams.count }

    /// The whole DNS messages `segment` completes on the stream `key` (server to client).
    public mutating func feed(_ segment: TCPSegment, key: Key) -> [[UInt8]] {
        if segment.isSYN {
            guard segment.isACK else { return [] }
            // Connections to port 53 are opened by this host's own processes; when too many are
            // open at once, one being followed is given up for the new one.
            if streams[key] == nil, streams.count >= capacity { streams.remove(at: streams.startIndex) }
            streams[key] = Stream(next: segment.sequence &+ 1)
            return []
        }
        guard var stream = streams[key] else { return [] }
        var payload = segment.payload
        let offset = Int32(bitPattern: segment.sequence &- stream.next)
        if offset > 0 {
            streams[key] = nil  // a gap: what follows cannot be framed
            return []
        }
        payload = payload.dropFirst(Int(-offset))  // a retransmission: only what is new counts
        stream.buffer += payload
        stream.next = stream.next &+ UInt32(payload.count)
        var messages: [[UInt8]] = []
        var start = 0
        while stream.buffer.count - start >= 2 {
            let length = Int(stream.buffer[start]) << 8 | Int(stream.buffer[start + 1])
            guard stream.buffer.count - start - 2 >= length else { break }
            if length > 0 { messages.append(Array(stream.buffer[(start + 2)..<(start + 2 + length)])) }
            start += 2 + length
        }
        if start > 0 { stream.buffer.removeFirst(start) }
        if segment.isFIN || segment.isRST {
            streams[key] = nil
        } else {
            streams[key] = stream
        }
        return messages
    }
}
