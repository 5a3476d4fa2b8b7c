/// The head of an HTTP/1.1 request or response (start line and header fields).
public struct HTTPHead: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case request(method: String, target: String)
        case response(status: Int, reason: String)
    }
    public var kind: Kind
    public var version: String
    public var headers: [(name: String, value: String)]
    /// Bytes taken by the head, including the blank line.
    public var length: Int

    public static func == (a: HTTPHead, b: HTTPHead) -> Bool {
        a.kind == b.kind && a.version == b.version && a.length == b.length
            && a.headers.map(\.name) == b.headers.map(\.name) && a.headers.map(\.value) == b.headers.map(\.value)
    }

    /// The first field named `name` (ASCII case-insensitive; compared without allocating).
    public func header(_ name: String) -> String? {
        headers.first { Self.sameName($0.name, name) }?.value
    }

    static func sameName(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && zip(a.utf8, b.utf8).allSatisfy { x, y in x | 0x20 == y | 0x20 && (x == y || Self.isLetter(x)) }
    }

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
    /// empty elements dropped).
    public func fieldValues(_ name: String) -> [String] {
        headers.filter { Self.sameName($0.name, name) }.flatMap { field in
            field.value.split(separator: ",").map { $0.trimmingSpaces }.filter { !$0.isEmpty }
        }
    }

    /// A chunked body's line without its line end and surrounding blanks ("" ends the trailers).
    public static func chunkLine(_ line: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var trimmed = line
        while let l = trimmed.last, l == 0x0A || l == 0x0D || l == 0x20 || l == 0x09 { trimmed = trimmed.dropLast() }
        while let f = trimmed.first, f == 0x20 || f == 0x09 { trimmed = trimmed.dropFirst() }
        return trimmed
    }

    /// The size a chunk-size line announces (extensions after ";" ignored); nil if it is no
    /// hexadecimal size.
    public static func chunkSize(_ line: ArraySlice<UInt8>) -> Int? {
        let digits = chunkLine(line).prefix { $0 != 0x3B }
        guard let size = Int(String(decoding: digits, as: UTF8.self), radix: 16), size >= 0 else { return nil }
        return size
    }

    public static let maximumLength = 64 * 1024
    public static let maximumFields = 100

    public enum Result: Sendable, Equatable {
        case needMore
        case head(HTTPHead)
        case malformed(WireError)
    }

    /// Parses a head from the start of `bytes`; `.needMore` until the blank line arrives.
    public static func parse(_ bytes: ArraySlice<UInt8>, expectRequest: Bool) -> Result {
        guard let end = headEnd(bytes) else {
            return bytes.count > maximumLength ? .malformed(.malformed("head longer than \(maximumLength) bytes")) : .needMore
        }
        guard end - bytes.startIndex <= maximumLength else { return .malformed(.malformed("head longer than \(maximumLength) bytes")) }
        var lines = bytes[bytes.startIndex..<end].split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            line.last == 0x0D ? line.dropLast() : line
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        guard let start = lines.first else { return .malformed(.malformed("empty head")) }
        let fields = start.split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
        let parts = fields.map { String(decoding: $0, as: UTF8.self) }
        let kind: Kind, version: String
        if expectRequest {
            guard parts.count == 3, isToken(parts[0]), !fields[1].isEmpty, !fields[1].contains(where: { $0 == 0x09 || $0 == 0x0B || $0 == 0x0C || $0 == 0x0D }),
                  parts[2].hasPrefix("HTTP/1.") else { return .malformed(.malformed("request line")) }
            kind = .request(method: parts[0], target: parts[1])
            version = parts[2]
        } else {
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), parts[1].count == 3, let status = Int(parts[1]) else {
                return .malformed(.malformed("status line"))
            }
            kind = .response(status: status, reason: parts.count == 3 ? parts[2] : "")
            version = parts[0]
        }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard headers.count < maximumFields else { return .malformed(.malformed("more than \(maximumFields) header fields")) }
            guard let colon = line.firstIndex(of: 0x3A) else { return .malformed(.malformed("header line without ':'")) }
            let name = String(decoding: line[line.startIndex..<colon], as: UTF8.self)
            // RFC 9112: no whitespace between the name and the colon; obsolete folding refused.
            guard isToken(name) else { return .malformed(.malformed("header name '\(name.prefix(40))'")) }
            var value = line[(colon + 1)...]
            // A bare CR or a NUL is a line end to some parsers and not to others (RFC 9112 2.2).
            guard !value.contains(where: { $0 == 0x0D || $0 == 0x00 }) else { return .malformed(.malformed("CR or NUL inside header '\(name.prefix(40))'")) }
            while let f = value.first, f == 0x20 || f == 0x09 { value = value.dropFirst() }
            while let l = value.last, l == 0x20 || l == 0x09 { value = value.dropLast() }
            headers.append((name, String(decoding: value, as: UTF8.self)))
        }
        return .head(HTTPHead(kind: kind, version: version, headers: headers, length: end - bytes.startIndex))
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

    static func isToken(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || "!#$%&'*+-.^_`|~".utf8.contains(c)
        }
    }
}

extension Substring {
    /// Without leading and trailing spaces and tabs (optional whitespace, RFC 9110 5.6.3).
    var trimmingSpaces: String {
        var slice = self[...]
        while let f = slice.first, f == " " || f == "\t" { slice = slice.dropFirst() }
        while let l = slice.last, l == " " || l == "\t" { slice = slice.dropLast() }
        return String(slice)
    }
}
