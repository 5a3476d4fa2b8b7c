import Wire

/// Hand-built packets for parser and flow-handler tests.
public enum TestPackets {
    static func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }

    /// An IPv4 or IPv6 packet (by the addresses' form) carrying a TCP SYN.
    public static func tcpSYN(from src: String, _ sport: Int, to dst: String, _ dport: Int) -> [UInt8] {
        let tcp: [UInt8] = u16(sport) + u16(dport) + [0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02] + u16(64240) + [0, 0, 0, 0]
        return ip(src, dst, transport: 6, tcp)
    }

    /// A TCP segment with `flags` (0x02 SYN, 0x10 ACK, 0x12 SYN-ACK, 0x18 PSH-ACK, 0x11 FIN-ACK).
    public static func tcp(from src: String, _ sport: Int, to dst: String, _ dport: Int, seq: UInt32, flags: UInt8, payload: [UInt8] = []) -> [UInt8] {
        let tcp: [UInt8] = u16(sport) + u16(dport) + withUnsafeBytes(of: seq.bigEndian) { Array($0) } + [0, 0, 0, 0, 0x50, flags] + u16(64240) + [0, 0, 0, 0]
        return ip(src, dst, transport: 6, tcp + payload)
    }

    public static func udp(from src: String, _ sport: Int, to dst: String, _ dport: Int, payload: [UInt8] = [1, 2, 3]) -> [UInt8] {
        ip(src, dst, transport: 17, u16(sport) + u16(dport) + u16(8 + payload.count) + [0, 0] + payload)
    }

    public static func ip(_ src: String, _ dst: String, transport: UInt8, _ payload: [UInt8]) -> [UInt8] {
        let s = IPAddress.parse(src)!, d = IPAddress.parse(dst)!
        if s.count == 4 {
            return [0x45, 0] + u16(20 + payload.count) + [0, 0, 0x40, 0, 64, transport, 0, 0] + s + d + payload
        }
        return [0x60, 0, 0, 0] + u16(payload.count) + [transport, 64] + s + d + payload
    }

    /// A DNS response: `name` A/AAAA `address` with `ttl`.
    public static func dnsAnswer(_ name: String, _ address: String, ttl: UInt32 = 300) -> [UInt8] {
        let a = IPAddress.parse(address)!
        var m: [UInt8] = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]
        for label in name.split(separator: ".") { m += [UInt8(label.utf8.count)] + Array(label.utf8) }
        let type: [UInt8] = a.count == 4 ? [0, 1] : [0, 28]
        m += [0] + type + [0, 1]
        m += [0xC0, 12] + type + [0, 1] + withUnsafeBytes(of: ttl.bigEndian) { Array($0) } + u16(a.count) + a
        return m
    }
}
