import Foundation

/// Builds one flow-log JSON object by appending fields: the log's hot path (one line per flow
/// and per request) without JSONSerialization or date formatters, which cost hundreds of µs
/// per line on Linux. Fields keep the order they are added in; nil values are left out.
public struct JSONLine: Sendable {
    /// UTF-8, without the closing brace. Bytes, not a String: a String's append checks
    /// uniqueness, capacity and its ASCII flag each time, and a request line takes ~40 appends.
    @usableFromInline var bytes: [UInt8]

    public init() {
        bytes = [0x7B]  // "{"
        bytes.reserveCapacity(384)  // a request line, without regrowing
    }

    public init(time: Date) {
        self.init()
        appendKey("time")
        bytes.append(0x22)
        Self.writeTimestamp(time, into: &bytes)
        bytes.append(0x22)
    }

    /// The fields added so far, without the braces: rendered once, added to many lines with
    /// `add(fields:)` (a connection's own fields, on each of its request lines).
    public var fields: String { String(decoding: bytes.dropFirst(), as: UTF8.self) }

    /// Fields another line rendered (its `fields`).
    public mutating func add(fields: String) {
        guard !fields.isEmpty else { return }
        if bytes.count > 1 { bytes.append(0x2C) }
        bytes.append(contentsOf: fields.utf8)
    }

    /// `fields` in the order of their keys (a dictionary has none of its own).
    public mutating func add(sorted fields: [String: Any]) {
        for key in fields.keys.sorted() { add(key, any: fields[key]) }
    }

    public mutating func add(_ key: String, _ value: String?) {
        guard let value else { return }
        appendKey(key)
        Self.quote(value, into: &bytes)
    }

    // Inlinable: specialised where it is called (per flow and per request), not generic at run time.
    @inlinable public mutating func add<I: BinaryInteger>(_ key: String, _ value: I?) {
        guard let value else { return }
        appendKey(key)
        if let small = Int(exactly: value) { Self.writeDecimal(small, into: &bytes) } else { bytes.append(contentsOf: String(value).utf8) }
    }

    public mutating func add(_ key: String, _ value: Int?) {
        guard let value else { return }
        appendKey(key)
        Self.writeDecimal(value, into: &bytes)
    }

    public mutating func add(_ key: String, _ value: Bool?) {
        guard let value else { return }
        appendKey(key)
        bytes.append(contentsOf: (value ? "true" : "false").utf8)
    }

    public mutating func add(_ key: String, _ values: [String]?) {
        guard let values else { return }
        appendKey(key)
        bytes.append(0x5B)
        for (i, v) in values.enumerated() {
            if i > 0 { bytes.append(0x2C) }
            Self.quote(v, into: &bytes)
        }
        bytes.append(0x5D)
    }

    /// Strings, integers, booleans and string arrays; anything else as its description.
    public mutating func add(_ key: String, any value: Any?) {
        switch value {
        case nil: return
        case let v as String: add(key, v)
        case let v as Bool: add(key, v)
        case let v as Int: add(key, v)
        case let v as UInt32: add(key, v)
        case let v as Int32: add(key, v)
        case let v as UInt64: add(key, v)
        case let v as UInt16: add(key, v)
        case let v as [String]: add(key, v)
        case let v?: add(key, "\(v)")
        }
    }

    /// Keys are the code's own field names: nothing in them needs escaping.
    @usableFromInline mutating func appendKey(_ key: String) {
        if bytes.count > 1 { bytes.append(0x2C) }  // no array literals: each could be an allocation
        bytes.append(0x22)
        bytes.append(contentsOf: key.utf8)
        bytes.append(0x22)
        bytes.append(0x3A)
    }

    public var line: String {
        var whole = bytes
        whole.append(0x7D)
        return String(decoding: whole, as: UTF8.self)
    }

    /// `value` in decimal, digit by digit (no String made for it).
    @usableFromInline static func writeDecimal(_ value: Int, into out: inout [UInt8]) {
        if value < 0 { out.append(0x2D) }
        var rest = value.magnitude
        var divisor: UInt = 1
        while divisor <= rest / 10 { divisor *= 10 }
        while divisor > 0 {
            out.append(UInt8(ascii: "0") + UInt8(rest / divisor))
            rest %= divisor
            divisor /= 10
        }
    }

    /// The escaping of `quote(_:into:)` for a string, straight into bytes.
    static func quote(_ s: String, into out: inout [UInt8]) {
        out.append(0x22)
        var copy = s
        let plain = copy.withUTF8 { utf8 -> Bool in
            guard !utf8.contains(where: { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F }) else { return false }
            out.append(contentsOf: utf8)
            return true
        }
        if !plain {
            var escaped = ""
            quote(s, into: &escaped)
            out.append(contentsOf: escaped.utf8.dropFirst().dropLast())
        }
        out.append(0x22)
    }

    /// `s` as a quoted string literal, valid both in JSON and as a TOML basic string.
    public static func quoted(_ s: String) -> String {
        var out = ""
        quote(s, into: &out)
        return out
    }

    static func quote(_ s: String, into out: inout String) {
        out += "\""
        var bytes = s
        let plain = bytes.withUTF8 { !$0.contains { $0 < 0x20 || $0 == 0x22 || $0 == 0x5C || $0 == 0x7F } }
        if plain {
            out += s
        } else {
            for scalar in s.unicodeScalars {
                switch scalar {
                case "\"": out += "\\\""
                case "\\": out += "\\\\"
                case "\n": out += "\\n"
                case "\r": out += "\\r"
                case "\t": out += "\\t"
                default:
                    if scalar.value < 0x20 || scalar.value == 0x7F {   // TOML forbids a raw DEL
                        let hex = String(scalar.value, radix: 16, uppercase: true)
                        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                    } else {
                        out.unicodeScalars.append(scalar)
                    }
                }
            }
        }
        out += "\""
    }

    /// "2026-11-23T19:40:18.123Z" (UTC, milliseconds).
    public static func timestamp(_ date: Date) -> String {
        var out: [UInt8] = []
        writeTimestamp(date, into: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// The timestamp written digit by digit (every flow-log line carries one).
    static func writeTimestamp(_ date: Date, into out: inout [UInt8]) {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let millis = min(999, max(0, Int((interval - Double(seconds)) * 1000)))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else {
            out.append(contentsOf: "\(year)-01-01T00:00:00.000Z".utf8)
            return
        }
        func put(_ value: Int, digits: Int, then separator: UInt8) {
            var divisor = 1
            for _ in 1..<digits { divisor *= 10 }
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(value / divisor % 10))
                divisor /= 10
            }
            out.append(separator)
        }
        put(year, digits: 4, then: UInt8(ascii: "-"))
        put(Int(parts.tm_mon) + 1, digits: 2, then: UInt8(ascii: "-"))
        put(Int(parts.tm_mday), digits: 2, then: UInt8(ascii: "T"))
        put(Int(parts.tm_hour), digits: 2, then: UInt8(ascii: ":"))
        put(Int(parts.tm_min), digits: 2, then: UInt8(ascii: ":"))
        put(Int(parts.tm_sec), digits: 2, then: UInt8(ascii: "."))
        put(millis, digits: 3, then: UInt8(ascii: "Z"))
    }
}
