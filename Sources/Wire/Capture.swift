/// Packets from a pcap or pcapng capture file, reduced to their IP datagrams.
public struct CapturedPacket: Sendable {
    /// Seconds since the epoch.
    public var timestamp: Double
    /// The IPv4 or IPv6 datagram.
    public var ip: ArraySlice<UInt8>

    public init(timestamp: Double, ip: ArraySlice<UInt8>) { self.timestamp = timestamp; self.ip = ip }
}

public enum CaptureFile {
    /// Every IP packet in `bytes` (pcap or pcapng). Non-IP frames are skipped.
    public static func packets(_ bytes: [UInt8]) throws(WireError) -> [CapturedPacket] {
        guard bytes.count >= 4 else { throw .truncated("capture header") }
        let magic = Array(bytes[0..<4])
        if magic == [0x0A, 0x0D, 0x0D, 0x0A] { return try pcapng(bytes) }
        return try pcap(bytes)
    }

    struct Endian {
        let little: Bool
        func u16(_ b: [UInt8], _ i: Int) throws(WireError) -> UInt16 {
            guard i >= 0, i + 2 <= b.count else { throw .truncated("capture field") }
            return little ? UInt16(b[i]) | UInt16(b[i + 1]) << 8 : UInt16(b[i]) << 8 | UInt16(b[i + 1])
        }
        func u32(_ b: [UInt8], _ i: Int) throws(WireError) -> UInt32 {
            guard i >= 0, i + 4 <= b.count else { throw .truncated("capture field") }
            let v = (UInt32(b[i]), UInt32(b[i + 1]), UInt32(b[i + 2]), UInt32(b[i + 3]))
            return little ? v.0 | v.1 << 8 | v.2 << 16 | v.3 << 24 : v.0 << 24 | v.1 << 16 | v.2 << 8 | v.3
        }
    }

    static func pcap(_ b: [UInt8]) throws(WireError) -> [CapturedPacket] {
        guard b.count >= 24 else { throw .truncated("pcap header") }
        let le = Endian(little: true)
        let raw = try le.u32(b, 0)
        let endian: Endian, nanos: Bool
        switch raw {
        case 0xA1B2C3D4: (endian, nanos) = (le, false)
        case 0xA1B23C4D: (endian, nanos) = (le, true)
        case 0xD4C3B2A1: (endian, nanos) = (Endian(little: false), false)
        case 0x4D3CB2A1: (endian, nanos) = (Endian(little: false), true)
        default: throw .unsupported("not a pcap or pcapng file")
        }
        let link = try endian.u32(b, 20) & 0xFFFF
        var packets: [CapturedPacket] = []
        var i = 24
        while i + 16 <= b.count {
            let seconds = Double(try endian.u32(b, i)), fraction = Double(try endian.u32(b, i + 4))
            let length = Int(try endian.u32(b, i + 8))
            guard length <= 262_144, i + 16 + length <= b.count else { throw .truncated("pcap record at offset \(i)") }
            if let ip = try? network(b[(i + 16)..<(i + 16 + length)], link: Int(link)) {
                packets.append(CapturedPacket(timestamp: seconds + fraction / (nanos ? 1e9 : 1e6), ip: ip))
            }
            i += 16 + length
        }
        return packets
    }

    static func pcapng(_ b: [UInt8]) throws(WireError) -> [CapturedPacket] {
        var endian = Endian(little: true)
        var links: [Int] = []
        var resolutions: [Double] = []
        var packets: [CapturedPacket] = []
        var i = 0
        while i + 12 <= b.count {
            if Array(b[i..<(i + 4)]) == [0x0A, 0x0D, 0x0D, 0x0A] {
                endian = Endian(little: b[i + 8] == 0x4D)  // byte-order magic 0x1A2B3C4D
                links = []
                resolutions = []
            }
            let type = try endian.u32(b, i), length = Int(try endian.u32(b, i + 4))
            guard length >= 12, length % 4 == 0, i + length <= b.count else { throw .malformed("pcapng block at offset \(i)") }
            let body = i + 8
            switch type {
            case 1:  // interface description
                links.append(Int(try endian.u16(b, body)))
                resolutions.append(try interfaceResolution(b, from: body + 8, to: i + length - 4, endian: endian))
            case 6:  // enhanced packet
                let interface = Int(try endian.u32(b, body))
                guard interface < links.count else { throw .malformed("packet for unknown interface \(interface)") }
                let ts = Double(UInt64(try endian.u32(b, body + 4)) << 32 | UInt64(try endian.u32(b, body + 8)))
                let captured = Int(try endian.u32(b, body + 12))
                guard body + 20 + captured <= i + length else { throw .malformed("pcapng packet overruns its block") }
                if let ip = try? network(b[(body + 20)..<(body + 20 + captured)], link: links[interface]) {
                    packets.append(CapturedPacket(timestamp: ts * resolutions[interface], ip: ip))
                }
            case 3:  // simple packet
                guard let link = links.first else { throw .malformed("simple packet before any interface") }
                let captured = min(Int(try endian.u32(b, body)), length - 16)
                if let ip = try? network(b[(body + 4)..<(body + 4 + captured)], link: link) {
                    packets.append(CapturedPacket(timestamp: 0, ip: ip))
                }
            default:
                break
            }
            i += length
        }
        return packets
    }

    /// if_tsresol: seconds per timestamp unit (default microseconds).
    static func interfaceResolution(_ b: [UInt8], from start: Int, to end: Int, endian: Endian) throws(WireError) -> Double {
        var i = start
        while i + 4 <= end {
            let code = try endian.u16(b, i), length = Int(try endian.u16(b, i + 2))
            if code == 0 { break }
            if code == 9, length >= 1, i + 4 < b.count {
                let v = b[i + 4]
                return v & 0x80 == 0 ? pow10(-Int(v)) : pow2(-Int(v & 0x7F))
            }
            i += 4 + (length + 3) / 4 * 4
        }
        return 1e-6
    }

    static func pow10(_ e: Int) -> Double { var r = 1.0; for _ in 0..<(-e) { r /= 10 }; return r }
    static func pow2(_ e: Int) -> Double { var r = 1.0; for _ in 0..<(-e) { r /= 2 }; return r }

    /// The IP datagram inside a link-layer frame.
    static func network(_ frame: ArraySlice<UInt8>, link: Int) throws(WireError) -> ArraySlice<UInt8> {
        var r = ByteReader(frame)
        switch link {
        case 1:  // Ethernet, with 802.1Q / 802.1ad tags
            try r.skip(12, "Ethernet addresses")
            var type = try r.u16("EtherType")
            while type == 0x8100 || type == 0x88A8 {
                try r.skip(2, "VLAN tag")
                type = try r.u16("EtherType")
            }
            guard type == 0x0800 || type == 0x86DD else { throw .unsupported("EtherType \(type)") }
        case 101, 12, 14, 228, 229:  // raw IP
            break
        case 113:  // Linux cooked
            try r.skip(14, "SLL header")
            let type = try r.u16("SLL protocol")
            guard type == 0x0800 || type == 0x86DD else { throw .unsupported("SLL protocol \(type)") }
        case 276:  // Linux cooked v2
            let type = try r.u16("SLL2 protocol")
            try r.skip(18, "SLL2 header")
            guard type == 0x0800 || type == 0x86DD else { throw .unsupported("SLL2 protocol \(type)") }
        case 0:  // BSD loopback: 4-byte family in host order
            try r.skip(4, "loopback header")
        default:
            throw .unsupported("link type \(link)")
        }
        return r.rest()
    }
}
