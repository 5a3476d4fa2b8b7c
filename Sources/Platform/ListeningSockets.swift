#if canImport(Glibc)
import Glibc
#endif

/// The host's listening TCP sockets, from the kernel's /proc/net/tcp and tcp6. The proxy's
/// listeners share their port (SO_REUSEPORT, one per event loop), and the kernel would let any
/// other socket of the same user join them just as silently — a second agent started by mistake
/// would take half the connections instead of failing. So the port is checked before binding.
public enum ListeningSockets {
    public struct Listener: Equatable, Sendable {
        /// 4 bytes (IPv4) or 16 (IPv6), in network order; all zero for a wildcard.
        public var address: [UInt8]
        public var port: Int
        /// The socket's inode (what fstat says of its descriptor).
        public var inode: UInt64
        var isWildcard: Bool { address.allSatisfy { $0 == 0 } }
    }

    /// Every listening TCP socket the kernel shows this process (its network namespace).
    public static func current() -> [Listener] {
        ["/proc/net/tcp", "/proc/net/tcp6"].flatMap { read($0).map(listeners(in:)) ?? [] }
    }

    /// Whether something already listens on `port` at `address` (4 or 16 bytes) — or on a
    /// wildcard, or `address` is one and anything listens on the port.
    public static func inUse(port: Int, address: [UInt8]) -> Bool {
        let wanted = Listener(address: address, port: port, inode: 0)
        return current().contains { $0.port == port && ($0.address == address || $0.isWildcard || wanted.isWildcard) }
    }

    /// The LISTEN rows (state 0A) of one table's text. Addresses are written as 32-bit words in
    /// the host's (little-endian) order: "0100007F:1F90" is 127.0.0.1:8080.
    static func listeners(in table: String) -> [Listener] {
        table.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9, fields[3] == "0A", let inode = UInt64(fields[9]) else { return nil }
            let local = fields[1].split(separator: ":")
            guard local.count == 2, let port = Int(local[1], radix: 16), local[0].count == 8 || local[0].count == 32 else { return nil }
            var address: [UInt8] = []
            var hex = local[0][...]
            while !hex.isEmpty {
                guard let word = UInt32(hex.prefix(8), radix: 16) else { return nil }
                address += [UInt8(word & 0xFF), UInt8(word >> 8 & 0xFF), UInt8(word >> 16 & 0xFF), UInt8(word >> 24)]
                hex = hex.dropFirst(8)
            }
            return Listener(address: address, port: port, inode: inode)
        }
    }

    private static func read(_ path: String) -> String? {
        #if canImport(Glibc)
        guard let file = fopen(path, "r") else { return nil }
        defer { fclose(file) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = fread(&chunk, 1, chunk.count, file)
            if n <= 0 { break }
            text += chunk[..<n]
        }
        return String(decoding: text, as: UTF8.self)
        #else
        return nil
        #endif
    }
}
