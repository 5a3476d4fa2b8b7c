/// The head of an HTTP/1.1 request or response (start line and header fields).
public struct HTTPHead: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case request(method: String, target: String)
        case response(status: Int, reason: String)
    }
    public var kind: Kind
    public var version: String
    /// The head as it came, and where each field's name and (trimmed) value lie in it: field
    /// strings are made only for the fields asked for (a browser's request carries 15–20, and
    /// every request and response on a bumped connection is parsed).
    public let bytes: [UInt8]
    private let fields: [Field]
    /// Bytes taken by the head, including the blank line.
    public var length: Int { bytes.count }

    /// Where one field's name and value lie in `bytes`.
    struct Field: Sendable, Equatable {
        var name: Range<Int>
        var value: Range<Int>
    }

    /// Every field, in order.
    public var headers: [(name: String, value: String)] {
        fields.map { (string(at: $0.name), string(at: $0.value)) }
    }

    public static func == (a: HTTPHead, b: HTTPHead) -> Bool {
        a.kind == b.kind && a.version == b.version && a.length == b.length && a.headers.elementsEqual(b.headers, by: ==)
    }

    private func string(at range: Range<Int>) -> String { String(decoding: bytes[range], as: UTF8.self) }

    /// The first field named `name` (ASCII case-insensitive; compared without allocating).
    public func header(_ name: String) -> String? {
        fields.first { Self.sameName(bytes[$0.name], name) }.map { string(at: $0.value) }
    }

    static func sameName(_ a: ArraySlice<UInt8>, _ b: String) -> Bool {
        guard a.count == b.utf8.count else { return false }
        var i = a.startIndex
        for y in b.utf8 {
            if !sameIgnoringCase(a[i], y) { return false }
            i += 1
        }
        return true
    }

    /// ASCII case-insensitive, and only letters fold ("^" is not "~", "\u{1A}" is not ":").
    private static func sameIgnoringCase(_ x: UInt8, _ y: UInt8) -> Bool { x == y || (x | 0x20 == y | 0x20 && isLetter(x)) }

    private static func isLetter(_ c: UInt8) -> Bool { (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) }

    /// Whether the body is sent with chunked transfer coding.
    public var isChunked: Bool { header("transfer-encoding")?.lowercased().contains("chunked") == true }

    /// The declared body length, when there is a valid one.
    public var contentLength: Int? { header("content-length").flatMap { Int($0) }.flatMap { $0 >= 0 ? $0 : nil } }

    /// How a request's body is delimited (RFC 9112 6.3).
    public enum BodyFraming: Sendable, Equatable {
        case none
        case length(Int)
        case chunked
    }

    /// The request's body framing, refusing every head that two HTTP parsers could frame two
    /// ways (RFC 9112 6.1–6.3): a proxy that frames a body differently from the origin lets a
    /// request hidden in it reach the origin without passing the request stage (smuggling).
    /// Transfer-Encoding must end in a single `chunked` and come without Content-Length and not
    /// in HTTP/1.0; every Content-Length value must be the same run of digits.
    public func requestFraming() throws(WireError) -> BodyFraming {
        let codings = fieldValues("transfer-encoding")
        let lengths = fieldValues("content-length")
        if !codings.isEmpty {
            guard lengths.isEmpty else { throw .malformed("both Transfer-Encoding and Content-Length") }
            guard version != "HTTP/1.0" else { throw .malformed("Transfer-Encoding in an HTTP/1.0 request") }
            let named = codings.map { $0.lowercased() }
            guard named.last == "chunked", named.filter({ $0 == "chunked" }).count == 1 else {
                throw .malformed("Transfer-Encoding '\(codings.joined(separator: ", ").prefix(60))' does not end in chunked")
            }
            return .chunked
        }
        guard let first = lengths.first else { return .none }
        guard lengths.allSatisfy({ $0 == first }) else { throw .malformed("conflicting Content-Length values") }
        guard first.utf8.count <= 18, first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let length = Int(first) else {
            throw .malformed("Content-Length '\(first.prefix(40))'")
        }
        return length == 0 ? .none : .length(length)
    }

    /// Every comma-separated element of every field named `name`, trimmed (RFC 9110 5.6.1;
    /// empty elements dropped), split over the bytes as servers split them: a request asks for four fields (framing,
    /// Host, Upgrade) and usually carries one of them, so nothing is built for the rest.
    public func fieldValues(_ name: String) -> [String] {
        var values: [String] = []
        for field in fields where Self.sameName(bytes[field.name], name) {
            var start = field.value.lowerBound
            while start <= field.value.upperBound {
                let end = bytes[start..<field.value.upperBound].firstIndex(of: 0x2C) ?? field.value.upperBound
                var element = start..<end
                while let f = element.first, bytes[f] == 0x20 || bytes[f] == 0x09 { element = (f + 1)..<element.upperBound }
                while let l = element.last, bytes[l] == 0x20 || bytes[l] == 0x09 { element = element.lowerBound..<l }
                if !element.isEmpty { values.append(string(at: element)) }
                start = end + 1
            }
        }
        return values
    }

    /// A chunked body's line without its line end and surrounding blanks ("" ends the trailers).
    public static func chunkLine(_ line: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var trimmed = line
        while let l = trimmed.last, l == 0x0A || l == 0x0D || l == 0x20 || l == 0x09 { trimmed = trimmed.dropLast() }
        while let f = trimmed.first, f == 0x20 || f == 0x09 { trimmed = trimmed.dropFirst() }
        return trimmed
    }

    /// The size a chunk-size line announces (extensions after ";" ignored); nil unless the line
    /// is hex digits (RFC 9112 7.1: no sign, prefix or leading space), then only whitespace
    /// before a ";", and its line end (CRLF or LF) — a size two parsers could read two ways
    /// ("+5", " 5", "5 x") would frame the body two ways.
    public static func chunkSize(_ line: ArraySlice<UInt8>) -> Int? {
        var rest = line
        if rest.last == 0x0A { rest = rest.dropLast() }
        if rest.last == 0x0D { rest = rest.dropLast() }
        func hex(_ byte: UInt8) -> Int? {
            switch byte {
            case 0x30...0x39: Int(byte - 0x30)
            case 0x41...0x46: Int(byte - 0x41 + 10)
            case 0x61...0x66: Int(byte - 0x61 + 10)
            default: nil
            }
        }
        let digits = rest.prefix { hex($0) != nil }
        let significant = digits.drop { $0 == 0x30 }
        guard !digits.isEmpty, significant.count <= 15 else { return nil }  // 15 hex digits stay below Int.max
        let after = rest.dropFirst(digits.count).drop { $0 == 0x20 || $0 == 0x09 }
        guard after.isEmpty || after.first == 0x3B else { return nil }
        return significant.reduce(0) { $0 << 4 | hex($1)! }
    }

    public static let maximumLength = 64 * 1024
    public static let maximumFields = 100

    public enum Result: Sendable, Equatable {
        case needMore
        case head(HTTPHead)
        case malformed(WireError)
    }

    /// Parses a head from the start of `bytes`; `.needMore` until the blank line arrives.
    /// One pass over the lines by index (every request and response on a bumped connection
    /// comes through here): Strings only for what the head keeps.
    public static func parse(_ bytes: ArraySlice<UInt8>, expectRequest: Bool) -> Result {
        guard let end = headEnd(bytes) else {
            return bytes.count > maximumLength ? .malformed(.malformed("head longer than \(maximumLength) bytes")) : .needMore
        }
        guard end - bytes.startIndex <= maximumLength else { return .malformed(.malformed("head longer than \(maximumLength) bytes")) }
        var cursor = bytes.startIndex
        /// The next line without its LF (and CR before it); nil at the blank line that ends the head.
        func nextLine() -> Range<Int>? {
            guard cursor < end else { return nil }
            var lineEnd = cursor
            while bytes[lineEnd] != 0x0A { lineEnd += 1 }  // headEnd saw the LF that ends every line
            let line = cursor..<(lineEnd > cursor && bytes[lineEnd - 1] == 0x0D ? lineEnd - 1 : lineEnd)
            cursor = lineEnd + 1
            return line.isEmpty ? nil : line
        }
        guard let start = nextLine() else { return .malformed(.malformed("empty head")) }
        let kind: Kind, version: String
        let firstSpace = bytes[start].firstIndex(of: 0x20)
        if expectRequest {
            // method SP target SP HTTP/1.x, nothing else (RFC 9112 3).
            guard let firstSpace, let secondSpace = bytes[(firstSpace + 1)..<start.upperBound].firstIndex(of: 0x20),
                  isToken(bytes[start.lowerBound..<firstSpace]), secondSpace > firstSpace + 1,
                  !bytes[(firstSpace + 1)..<secondSpace].contains(where: { $0 == 0x09 || $0 == 0x0B || $0 == 0x0C || $0 == 0x0D }),
                  isVersion(bytes[(secondSpace + 1)..<start.upperBound]) else { return .malformed(.malformed("request line")) }
            kind = .request(method: String(decoding: bytes[start.lowerBound..<firstSpace], as: UTF8.self),
                            target: String(decoding: bytes[(firstSpace + 1)..<secondSpace], as: UTF8.self))
            version = String(decoding: bytes[(secondSpace + 1)..<start.upperBound], as: UTF8.self)
        } else {
            // HTTP/1.x SP 3DIGIT [SP reason] (RFC 9112 4).
            guard let firstSpace, isVersion(bytes[start.lowerBound..<firstSpace]) else { return .malformed(.malformed("status line")) }
            let codeEnd = min(firstSpace + 4, start.upperBound)
            let code = bytes[(firstSpace + 1)..<codeEnd]
            guard code.count == 3, code.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), codeEnd == start.upperBound || bytes[codeEnd] == 0x20 else {
                return .malformed(.malformed("status line"))
            }
            let status = code.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            let reason = codeEnd < start.upperBound ? String(decoding: bytes[(codeEnd + 1)..<start.upperBound], as: UTF8.self) : ""
            kind = .response(status: status, reason: reason)
            version = String(decoding: bytes[start.lowerBound..<firstSpace], as: UTF8.self)
        }
        let base = bytes.startIndex
        var fields: [Field] = []
        fields.reserveCapacity(24)  // a browser's request carries 15–20 fields: one allocation
        while let line = nextLine() {
            guard fields.count < maximumFields else { return .malformed(.malformed("more than \(maximumFields) header fields")) }
            guard let colon = bytes[line].firstIndex(of: 0x3A) else { return .malformed(.malformed("header line without ':'")) }
            let name = bytes[line.lowerBound..<colon]
            // RFC 9112: no whitespace between the name and the colon; obsolete folding refused.
            guard isToken(name) else { return .malformed(.malformed("header name '\(String(decoding: name.prefix(40), as: UTF8.self))'")) }
            var value = (colon + 1)..<line.upperBound
            // A bare CR or a NUL is a line end to some parsers and not to others (RFC 9112 2.2).
            guard !bytes[value].contains(where: { $0 == 0x0D || $0 == 0x00 }) else {
                return .malformed(.malformed("CR or NUL inside header '\(String(decoding: name.prefix(40), as: UTF8.self))'"))
            }
            while !value.isEmpty, bytes[value.lowerBound] == 0x20 || bytes[value.lowerBound] == 0x09 { value = (value.lowerBound + 1)..<value.upperBound }
            while !value.isEmpty, bytes[value.upperBound - 1] == 0x20 || bytes[value.upperBound - 1] == 0x09 { value = value.lowerBound..<(value.upperBound - 1) }
            fields.append(Field(name: (name.startIndex - base)..<(name.endIndex - base), value: (value.lowerBound - base)..<(value.upperBound - base)))
        }
        return .head(HTTPHead(kind: kind, version: version, bytes: Array(bytes[base..<end]), fields: fields))
    }

    /// "HTTP/1." and one digit, nothing after it (HTTP/1.x heads only).
    static func isVersion(_ field: ArraySlice<UInt8>) -> Bool {
        field.count == 8 && field.starts(with: "HTTP/1.".utf8) && field.last.map { $0 >= 0x30 && $0 <= 0x39 } == true
    }

    /// Index just past the blank line that ends the head (CRLFCRLF, or bare LFLF).
    static func headEnd(_ bytes: ArraySlice<UInt8>) -> Int? {
        var i = bytes.startIndex
        while i < bytes.endIndex {
            if bytes[i] == 0x0A {
                if i + 1 < bytes.endIndex, bytes[i + 1] == 0x0A { return i + 2 }
                if i + 2 < bytes.endIndex, bytes[i + 1] == 0x0D, bytes[i + 2] == 0x0A { return i + 3 }
            }
            i += 1
        }
        return nil
    }

    /// The length of the "http://" or "https://" an absolute-form target starts with, in any
    /// case (servers take "HTTP://h/x" too); nil for other targets.
    // Concrete, not generic: the policy and the proxy ask for every request's URL, and an
    // unspecialised generic across modules looked its metadata up on each call (6% of the proxy).
    public static func absoluteFormScheme(_ target: String) -> Int? { absoluteFormScheme(target.utf8[...]) }
    public static func absoluteFormScheme(_ target: Substring) -> Int? { absoluteFormScheme(target.utf8[...]) }

    private static func absoluteFormScheme(_ target: Substring.UTF8View) -> Int? {
        func starts(_ scheme: String) -> Bool {
            var i = target.startIndex
            for y in scheme.utf8 {
                guard i < target.endIndex, sameIgnoringCase(target[i], y) else { return false }
                i = target.index(after: i)
            }
            return true
        }
        return starts("https://") ? 8 : starts("http://") ? 7 : nil
    }

    /// A token (RFC 9110 5.6.2): a method or a field name.
    public static func isToken(_ bytes: ArraySlice<UInt8>) -> Bool {
        !bytes.isEmpty && bytes.allSatisfy { c in
            switch c {
            case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
            case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"), UInt8(ascii: "'"),
                 UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "^"), UInt8(ascii: "_"),
                 UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"): true
            default: false
            }
        }
    }
}
