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
        ["tcp", "tcp6"].flatMap { ProcNet.table($0).map(listeners(in:)) ?? [] }
    }

    /// Whether something already listens on `port` at `address` (4 or 16 bytes) — or on a
    /// wildcard, or `address` is one and anything listens on the port.
    public static func inUse(port: Int, address: [UInt8]) -> Bool {
        let wildcard = address.allSatisfy { $0 == 0 }
        return current().contains { $0.port == port && ($0.address == address || $0.isWildcard || wildcard) }
    }

    /// The LISTEN rows (state 0A) of one table's text.
    static func listeners(in table: String) -> [Listener] {
        table.split(separator: "\n").dropFirst().compactMap { line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9, fields[3] == "0A", let inode = UInt64(fields[9]), let (address, port) = ProcNet.endpoint(fields[1]) else { return nil }
            return Listener(address: address, port: Int(port), inode: inode)
        }
    }
}
