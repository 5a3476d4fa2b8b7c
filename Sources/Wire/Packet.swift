/// An IPv4 or IPv6 packet, with IPv6 extension headers walked to the transport header.
public struct IPPacket: Sendable, Equatable {
    public var version: Int
    public var source: [UInt8]
    public var destination: [UInt8]
    /// The transport protocol (6 TCP, 17 UDP, 58 ICMPv6, ...).
    public var transport: UInt8
    /// A non-first fragment carries no transport header.
    public var isLaterFragment: Bool
    public var payload: ArraySlice<UInt8>

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(WireError) -> IPPacket {
        guard let first = bytes.first else { throw .truncated("IP header") }
        switch first >> 4 {
        case 4: return try parseV4(bytes)
        case 6: return try parseV6(bytes)
        default: throw .malformed("IP version \(first >> 4)")
        }
    }

    static func parseV4(_ bytes: ArraySlice<UInt8>) throws(WireError) -> IPPacket {
        var r = ByteReader(bytes)
        let headerLength = Int(try r.u8("IPv4 header") & 0x0F) * 4
        guard headerLength >= 20 else { throw .malformed("IPv4 header length \(headerLength)") }
        _ = try r.u8()
        let totalLength = Int(try r.u16("IPv4 total length"))
        guard totalLength >= headerLength else { throw .malformed("IPv4 total length \(totalLength) < header \(headerLength)") }
        _ = try r.u16()
        let fragment = try r.u16("IPv4 fragment")
        _ = try r.u8()
        let proto = try r.u8("IPv4 protocol")
        _ = try r.u16()
        let source = Array(try r.take(4, "IPv4 source"))
        let destination = Array(try r.take(4, "IPv4 destination"))
        try r.skip(headerLength - 20, "IPv4 options")
        // Captures may be cut short (snaplen) or padded (Ethernet minimum): trust the header.
        let end = min(bytes.endIndex, bytes.startIndex + totalLength)
        let payload = bytes[(bytes.startIndex + headerLength)..<max(end, bytes.startIndex + headerLength)]
        return IPPacket(version: 4, source: source, destination: destination, transport: proto,
                        isLaterFragment: fragment & 0x1FFF != 0, payload: payload)
    }

    static func parseV6(_ bytes: ArraySlice<UInt8>) throws(WireError) -> IPPacket {
        var r = ByteReader(bytes)
        try r.skip(4, "IPv6 header")
        let payloadLength = Int(try r.u16("IPv6 payload length"))
        var next = try r.u8("IPv6 next header")
        _ = try r.u8()
        let source = Array(try r.take(16, "IPv6 source"))
        let destination = Array(try r.take(16, "IPv6 destination"))
        var laterFragment = false
        // Extension headers: hop-by-hop, routing, fragment, destination options, AH.
        for _ in 0..<16 {
            switch next {
            case 0, 43, 60:
                next = try r.u8("IPv6 extension header")
                let length = (Int(try r.u8("IPv6 extension length")) + 1) * 8
                try r.skip(length - 2, "IPv6 extension header body")
            case 44:
                next = try r.u8("IPv6 fragment header")
                _ = try r.u8()
                laterFragment = try r.u16("IPv6 fragment offset") & 0xFFF8 != 0
                try r.skip(4, "IPv6 fragment identification")
            case 51:
                next = try r.u8("AH header")
                let length = (Int(try r.u8("AH length")) + 2) * 4
                try r.skip(length - 2, "AH body")
            default:
                let start = r.position
                let end = min(bytes.endIndex, bytes.startIndex + 40 + payloadLength)
                return IPPacket(version: 6, source: source, destination: destination, transport: next,
                                isLaterFragment: laterFragment, payload: bytes[start..<max(start, end)])
            }
        }
        throw .malformed("too many IPv6 extension headers")
    }
}

public struct TCPSegment: Sendable, Equatable {
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var sequence: UInt32
    public var flags: UInt8
    public var payload: ArraySlice<UInt8>

    public var isSYN: Bool { flags & 0x02 != 0 }
    public var isACK: Bool { flags & 0x10 != 0 }
    public var isFIN: Bool { flags & 0x01 != 0 }
    public var isRST: Bool { flags & 0x04 != 0 }
    /// Sent by a DNS server over TCP (answers to reassemble, see DNSStreams); a bare SYN from
    /// port 53 starts a flow instead.
    public var isFromDNSServer: Bool { sourcePort == 53 && !(isSYN && !isACK) }

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(WireError) -> TCPSegment {
        var r = ByteReader(bytes)
        let sp = try r.u16("TCP source port"), dp = try r.u16("TCP destination port")
        let seq = try r.u32("TCP sequence")
        _ = try r.u32("TCP acknowledgment")
        let offset = Int(try r.u8("TCP data offset") >> 4) * 4
        let flags = try r.u8("TCP flags")
        guard offset >= 20 else { throw .malformed("TCP data offset \(offset)") }
        try r.skip(offset - 14, "TCP header")
        return TCPSegment(sourcePort: sp, destinationPort: dp, sequence: seq, flags: flags, payload: r.rest())
    }
}

public struct UDPDatagram: Sendable, Equatable {
    public var sourcePort: UInt16
    public var destinationPort: UInt16
    public var payload: ArraySlice<UInt8>

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(WireError) -> UDPDatagram {
        var r = ByteReader(bytes)
        let sp = try r.u16("UDP source port"), dp = try r.u16("UDP destination port")
        let length = Int(try r.u16("UDP length"))
        _ = try r.u16("UDP checksum")
        guard length >= 8 else { throw .malformed("UDP length \(length)") }
        let body = r.rest()
        return UDPDatagram(sourcePort: sp, destinationPort: dp, payload: body.prefix(length - 8))
    }
}
