/// The kernel's socket tables in /proc/net ({tcp,tcp6,udp,udp6}): what the flow attribution
/// fallback and the proxy's port check both read.
public enum ProcNet {
    /// One table's text, read to the end (Foundation's String(contentsOfFile:) stops after the
    /// first page of a procfs file, ~26 sockets); nil if it cannot be read.
    public static func table(_ name: String, procRoot: String = "/proc") -> String? {
        (try? PrivateFiles.read("\(procRoot)/net/\(name)")).map { String(decoding: $0, as: UTF8.self) }
    }

    /// "0100007F:0277" → ([127,0,0,1], 631). Addresses are 32-bit words in host (little-endian) order.
    public static func endpoint(_ field: Substring) -> (address: [UInt8], port: UInt16)? {
        let parts = field.split(separator: ":")
        guard parts.count == 2, let port = UInt16(parts[1], radix: 16), parts[0].count == 8 || parts[0].count == 32 else { return nil }
        var bytes: [UInt8] = []
        var index = parts[0].startIndex
        while index < parts[0].endIndex {
            let next = parts[0].index(index, offsetBy: 8)
            guard let word = UInt32(parts[0][index..<next], radix: 16) else { return nil }
            withUnsafeBytes(of: word.littleEndian) { bytes.append(contentsOf: $0) }
            index = next
        }
        return (bytes, port)
    }
}
