#if canImport(Glibc)
import Glibc
#endif

/// IPv4 and IPv6 addresses as raw bytes (4 or 16), parsed and printed in their standard forms.
public enum IPAddress {
    public static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    /// An IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack socket reports IPv4 peers)
    /// as the IPv4 address it stands for; any other address unchanged.
    public static func unmapped(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count == 16, bytes[10] == 0xFF, bytes[11] == 0xFF, bytes[0..<10].allSatisfy({ $0 == 0 }) else { return bytes }
        return Array(bytes[12...])
    }

    public static func format(_ bytes: [UInt8]) -> String {
        // IPv4 digit by digit into one allocation: every flow-log line names two addresses.
        if bytes.count == 4 {
            return String(unsafeUninitializedCapacity: 15) { out in
                var i = 0
                for (n, byte) in bytes.enumerated() {
                    if n > 0 { out[i] = UInt8(ascii: "."); i += 1 }
                    if byte >= 100 { out[i] = UInt8(ascii: "0") + byte / 100; i += 1 }
                    if byte >= 10 { out[i] = UInt8(ascii: "0") + byte / 10 % 10; i += 1 }
                    out[i] = UInt8(ascii: "0") + byte % 10
                    i += 1
                }
                return i
            }
        }
        let text = withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { buffer -> String? in
            guard bytes.count == 16, inet_ntop(AF_INET6, bytes, buffer.baseAddress, socklen_t(buffer.count)) != nil else { return nil }
            return String(cString: buffer.baseAddress!)
        }
        return text ?? bytes.map { String($0, radix: 16) }.joined(separator: ":")
    }
}

/// An address range, e.g. 10.0.0.0/8 or fd00::/8. A bare address is a /32 or /128.
public struct CIDR: Hashable, Sendable, CustomStringConvertible {
    public var address: [UInt8]
    public var prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPAddress.parse(String(parts[0])) else { return nil }
        let prefix: Int
        if parts.count == 2 {
            guard let p = Int(parts[1]), p >= 0, p <= address.count * 8, parts[1].allSatisfy(\.isNumber) else { return nil }
            prefix = p
        } else {
            prefix = address.count * 8
        }
        self.address = address
        self.prefix = prefix
    }

    public var mask: [UInt8] {
        (0..<address.count).map { i in
            let bits = max(0, min(8, prefix - i * 8))
            return bits == 0 ? 0 : UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    public func contains(_ bytes: [UInt8]) -> Bool {
        guard bytes.count == address.count else { return false }
        var i = 0
        var remaining = prefix
        while remaining > 0 {
            let bits = min(8, remaining)
            let m = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if bytes[i] & m != address[i] & m { return false }
            remaining -= bits
            i += 1
        }
        return true
    }

    public var description: String { "\(IPAddress.format(address))/\(prefix)" }

    /// OpenSSL's nameConstraints form: address/netmask.
    public var addressSlashMask: String { "\(IPAddress.format(zip(address, mask).map { $0 & $1 }))/\(IPAddress.format(mask))" }
}
