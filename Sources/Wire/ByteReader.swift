/// Why bytes could not be parsed. Parsers never trap on hostile input: every read is checked.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// More bytes are needed (or the input ended early).
    case truncated(String)
    case malformed(String)
    case unsupported(String)

    public var description: String {
        switch self {
        case .truncated(let w): "truncated: \(w)"
        case .malformed(let w): "malformed: \(w)"
        case .unsupported(let w): "unsupported: \(w)"
        }
    }
}

/// A bounds-checked cursor over bytes.
public struct ByteReader {
    public let bytes: ArraySlice<UInt8>
    public private(set) var position: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) { self.init(bytes[...]) }

    public var remaining: Int { bytes.endIndex - position }
    public var isAtEnd: Bool { position >= bytes.endIndex }

    public mutating func u8(_ what: @autoclosure () -> String = "byte") throws(WireError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated(what()) }
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func u16(_ what: @autoclosure () -> String = "u16") throws(WireError) -> UInt16 {
        guard remaining >= 2 else { throw .truncated(what()) }
        defer { position += 2 }
        return UInt16(bytes[position]) << 8 | UInt16(bytes[position + 1])
    }

    public mutating func u24(_ what: @autoclosure () -> String = "u24") throws(WireError) -> Int {
        guard remaining >= 3 else { throw .truncated(what()) }
        defer { position += 3 }
        return Int(bytes[position]) << 16 | Int(bytes[position + 1]) << 8 | Int(bytes[position + 2])
    }

    public mutating func u32(_ what: @autoclosure () -> String = "u32") throws(WireError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated(what()) }
        defer { position += 4 }
        return UInt32(bytes[position]) << 24 | UInt32(bytes[position + 1]) << 16 | UInt32(bytes[position + 2]) << 8 | UInt32(bytes[position + 3])
    }

    public mutating func take(_ count: Int, _ what: @autoclosure () -> String = "bytes") throws(WireError) -> ArraySlice<UInt8> {
        guard count >= 0, remaining >= count else { throw .truncated(what()) }
        defer { position += count }
        return bytes[position..<(position + count)]
    }

    public mutating func skip(_ count: Int, _ what: @autoclosure () -> String = "bytes") throws(WireError) {
        _ = try take(count, what())
    }

    /// A sub-reader over the next `count` bytes (a length-prefixed structure).
    public mutating func sub(_ count: Int, _ what: @autoclosure () -> String) throws(WireError) -> ByteReader {
        ByteReader(try take(count, what()))
    }

    public mutating func rest() -> ArraySlice<UInt8> {
        defer { position = bytes.endIndex }
        return bytes[position...]
    }
}
