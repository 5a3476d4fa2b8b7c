import Foundation

/// Builds one flow-log JSON object by appending fields: the log's hot path (one line per flow
/// and per request) without JSONSerialization or date formatters, which cost hundreds of µs
/// per line on Linux. Fields keep the order they are added in; nil values are left out.
public struct JSONLine: Sendable {
    @usableFromInline var text: String

    public init() {
        text = "{"
        text.reserveCapacity(384)  // a request line, without regrowing
    }

    public init(time: Date) {
        self.init()
        add("time", Self.timestamp(time))
    }

    /// The fields added so far, without the braces: rendered once, added to many lines with
    /// `add(fields:)` (a connection's own fields, on each of its request lines).
    public var fields: String { String(text.dropFirst()) }

    /// Fields another line rendered (its `fields`).
    public mutating func add(fields: String) {
        guard !fields.isEmpty else { return }
        if text.utf8.count > 1 { text += "," }
        text += fields
    }

    /// `fields` in the order of their keys (a dictionary has none of its own).
    public mutating func add(sorted fields: [String: Any]) {
        for key in fields.keys.sorted() { add(key, any: fields[key]) }
    }

    public mutating func add(_ key: String, _ value: String?) {
        guard let value else { return }
        appendKey(key)
        Self.quote(value, into: &text)
    }

    // Inlinable: specialised where it is called (per flow and per request), not generic at run time.
    @inlinable public mutating func add<I: BinaryInteger>(_ key: String, _ value: I?) {
        guard let value else { return }
        appendKey(key)
        text += String(value)
    }

    public mutating func add(_ key: String, _ value: Bool?) {
        guard let value else { return }
        appendKey(key)
        text += value ? "true" : "false"
    }

    public mutating func add(_ key: String, _ values: [String]?) {
        guard let values else { return }
        appendKey(key)
        text += "["
        for (i, v) in values.enumerated() {
            if i > 0 { text += "," }
            Self.quote(v, into: &text)
        }
        text += "]"
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
        text += text.utf8.count > 1 ? ",\"" : "\""
        text += key
        text += "\":"
    }

    public var line: String { text + "}" }

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

    /// "2026-11-23T19:40:18.123Z" (UTC, milliseconds), written digit by digit into one
    /// allocation (every flow-log line carries one).
    public static func timestamp(_ date: Date) -> String {
        let interval = date.timeIntervalSince1970
        var seconds = time_t(interval.rounded(.down))
        let millis = min(999, max(0, Int((interval - Double(seconds)) * 1000)))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let year = Int(parts.tm_year) + 1900
        guard (0...9999).contains(year) else { return "\(year)-01-01T00:00:00.000Z" }
        return String(unsafeUninitializedCapacity: 24) { out in
            var i = 0
            func put(_ value: Int, digits: Int, then separator: UInt8?) {
                var v = value
                for k in stride(from: digits - 1, through: 0, by: -1) {
                    out[i + k] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
                i += digits
                if let separator { out[i] = separator; i += 1 }
            }
            put(year, digits: 4, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mon) + 1, digits: 2, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mday), digits: 2, then: UInt8(ascii: "T"))
            put(Int(parts.tm_hour), digits: 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_min), digits: 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_sec), digits: 2, then: UInt8(ascii: "."))
            put(millis, digits: 3, then: UInt8(ascii: "Z"))
            return i
        }
    }
}
