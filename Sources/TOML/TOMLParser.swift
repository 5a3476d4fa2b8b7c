/// A TOML 1.0 parser that keeps line numbers. Pure: a string in, a table or a `TOMLError` out.
///
/// The document is built as a tree of reference nodes (tables get extended by later headers,
/// arrays of tables grow), then frozen into `TOMLValue`s.
public struct TOMLError: Error, Sendable, Equatable, CustomStringConvertible {
    public var line: Int
    public var message: String
    public var description: String { "line \(line): \(message)" }
}

public enum TOML {
    public static func parse(_ text: String) throws(TOMLError) -> TOMLTable {
        var parser = Parser(bytes: Array(text.utf8))
        return try parser.document()
    }
}

private final class Node {
    enum Origin { case header, dotted, inline, implicit, arrayElement }
    var line: Int
    var origin: Origin
    var keys: [String] = []
    var children: [String: Entry] = [:]
    init(line: Int, origin: Origin) { self.line = line; self.origin = origin }

    enum Entry {
        case value(TOMLValue)
        case table(Node)
        case tableArray([Node], line: Int)
    }

    func set(_ key: String, _ entry: Entry) {
        if children[key] == nil { keys.append(key) }
        children[key] = entry
    }

    func freeze() -> TOMLTable {
        var table = TOMLTable(line: line)
        for key in keys {
            switch children[key]! {
            case .value(let v): table[key] = v
            case .table(let n): table[key] = TOMLValue(.table(n.freeze()), line: n.line)
            case .tableArray(let nodes, let line):
                table[key] = TOMLValue(.array(nodes.map { TOMLValue(.table($0.freeze()), line: $0.line) }), line: line)
            }
        }
        return table
    }
}

private struct Parser {
    let bytes: [UInt8]
    var pos = 0
    var line = 1

    init(bytes: [UInt8]) { self.bytes = bytes }

    func fail(_ message: String) -> TOMLError { TOMLError(line: line, message: message) }

    var peek: UInt8? { pos < bytes.count ? bytes[pos] : nil }
    func peek(at offset: Int) -> UInt8? { pos + offset < bytes.count ? bytes[pos + offset] : nil }

    mutating func advance() {
        if bytes[pos] == UInt8(ascii: "\n") { line += 1 }
        pos += 1
    }

    mutating func skipSpaces() {
        while let c = peek, c == 0x20 || c == 0x09 { pos += 1 }
    }

    mutating func skipComment() throws(TOMLError) {
        guard peek == UInt8(ascii: "#") else { return }
        while let c = peek, c != UInt8(ascii: "\n") {
            if c < 0x20 && c != 0x09 && !(c == 0x0D && peek(at: 1) == 0x0A) {
                throw fail("control character in a comment")
            }
            pos += 1
        }
    }

    /// Spaces, an optional comment, then a newline or the end.
    mutating func endOfLine() throws(TOMLError) {
        skipSpaces()
        try skipComment()
        if peek == 0x0D, peek(at: 1) == 0x0A { pos += 1 }
        guard let c = peek else { return }
        guard c == UInt8(ascii: "\n") else { throw fail("expected the end of the line, found '\(Character(UnicodeScalar(c)))'") }
        advance()
    }

    /// Blank lines, spaces, newlines and comments (inside arrays).
    mutating func skipWhitespaceAndComments() throws(TOMLError) {
        while true {
            skipSpaces()
            try skipComment()
            if peek == 0x0D, peek(at: 1) == 0x0A { pos += 1 }
            if peek == UInt8(ascii: "\n") { advance() } else { return }
        }
    }

    mutating func document() throws(TOMLError) -> TOMLTable {
        let root = Node(line: 1, origin: .header)
        var current = root
        while true {
            try skipWhitespaceAndComments()
            guard let c = peek else { break }
            if c == UInt8(ascii: "[") {
                current = try header(root: root)
            } else {
                try keyValue(into: current, origin: .dotted)
                try endOfLine()
            }
        }
        return root.freeze()
    }

    // MARK: tables

    mutating func header(root: Node) throws(TOMLError) -> Node {
        let headerLine = line
        pos += 1
        let isArray = peek == UInt8(ascii: "[")
        if isArray { pos += 1 }
        skipSpaces()
        let path = try key()
        skipSpaces()
        guard peek == UInt8(ascii: "]") else { throw fail("expected ']' to close the table header") }
        pos += 1
        if isArray {
            guard peek == UInt8(ascii: "]") else { throw fail("expected ']]' to close the array-of-tables header") }
            pos += 1
        }
        try endOfLine()

        var parent = root
        for part in path.dropLast() {
            parent = try descend(parent, part, line: headerLine)
        }
        let last = path.last!
        let dotted = path.joined(separator: ".")
        if isArray {
            let node = Node(line: headerLine, origin: .arrayElement)
            switch parent.children[last] {
            case nil: parent.set(last, .tableArray([node], line: headerLine))
            case .tableArray(let nodes, let line): parent.set(last, .tableArray(nodes + [node], line: line))
            default: throw TOMLError(line: headerLine, message: "'\(dotted)' is already defined and is not an array of tables")
            }
            return node
        }
        switch parent.children[last] {
        case nil:
            let node = Node(line: headerLine, origin: .header)
            parent.set(last, .table(node))
            return node
        case .table(let node) where node.origin == .implicit:
            node.origin = .header
            node.line = headerLine
            return node
        default:
            throw TOMLError(line: headerLine, message: "table '\(dotted)' is defined more than once")
        }
    }

    /// The table at `part` under `parent`, created implicitly when missing; the last element
    /// when it names an array of tables.
    func descend(_ parent: Node, _ part: String, line: Int) throws(TOMLError) -> Node {
        switch parent.children[part] {
        case nil:
            let node = Node(line: line, origin: .implicit)
            parent.set(part, .table(node))
            return node
        case .table(let node):
            if node.origin == .inline { throw TOMLError(line: line, message: "inline table '\(part)' cannot be extended") }
            return node
        case .tableArray(let nodes, _):
            return nodes.last!
        case .value:
            throw TOMLError(line: line, message: "'\(part)' is a value, not a table")
        }
    }

    // MARK: keys and values

    mutating func keyValue(into table: Node, origin: Node.Origin) throws(TOMLError) {
        let keyLine = line
        let path = try key()
        skipSpaces()
        guard peek == UInt8(ascii: "=") else { throw fail("expected '=' after the key '\(path.joined(separator: "."))'") }
        pos += 1
        skipSpaces()
        let v = try value()
        var target = table
        for part in path.dropLast() {
            switch target.children[part] {
            case nil:
                let node = Node(line: keyLine, origin: origin)
                target.set(part, .table(node))
                target = node
            case .table(let node) where node.origin == origin || (node.origin == .implicit && origin == .dotted):
                target = node
            default:
                throw TOMLError(line: keyLine, message: "key '\(part)' is already defined")
            }
        }
        let last = path.last!
        guard target.children[last] == nil else {
            throw TOMLError(line: keyLine, message: "key '\(path.joined(separator: "."))' is defined more than once")
        }
        if case .table(let t) = v.kind {
            // Inline tables are closed: later headers or dotted keys may not extend them.
            let node = Node(line: v.line, origin: .inline)
            node.keys = t.keys
            for k in t.keys { node.children[k] = .value(t[k]!) }
            target.set(last, .table(node))
        } else {
            target.set(last, .value(v))
        }
    }

    mutating func key() throws(TOMLError) -> [String] {
        var parts: [String] = []
        while true {
            skipSpaces()
            guard let c = peek else { throw fail("expected a key") }
            if c == UInt8(ascii: "\"") {
                parts.append(try basicString())
            } else if c == UInt8(ascii: "'") {
                parts.append(try literalString())
            } else {
                let start = pos
                while let c = peek, isBareKeyByte(c) { pos += 1 }
                guard pos > start else { throw fail("expected a key, found '\(Character(UnicodeScalar(c)))'") }
                parts.append(String(decoding: bytes[start..<pos], as: UTF8.self))
            }
            skipSpaces()
            guard peek == UInt8(ascii: ".") else { return parts }
            pos += 1
        }
    }

    func isBareKeyByte(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || c == 0x2D
    }

    mutating func value() throws(TOMLError) -> TOMLValue {
        let valueLine = line
        guard let c = peek else { throw fail("expected a value") }
        switch c {
        case UInt8(ascii: "\""):
            if peek(at: 1) == c, peek(at: 2) == c { return TOMLValue(.string(try multilineString(literal: false)), line: valueLine) }
            return TOMLValue(.string(try basicString()), line: valueLine)
        case UInt8(ascii: "'"):
            if peek(at: 1) == c, peek(at: 2) == c { return TOMLValue(.string(try multilineString(literal: true)), line: valueLine) }
            return TOMLValue(.string(try literalString()), line: valueLine)
        case UInt8(ascii: "["):
            return TOMLValue(.array(try array()), line: valueLine)
        case UInt8(ascii: "{"):
            return TOMLValue(.table(try inlineTable()), line: valueLine)
        default:
            return TOMLValue(try scalar(), line: valueLine)
        }
    }

    mutating func array() throws(TOMLError) -> [TOMLValue] {
        pos += 1
        var items: [TOMLValue] = []
        while true {
            try skipWhitespaceAndComments()
            guard let c = peek else { throw fail("unterminated array") }
            if c == UInt8(ascii: "]") { pos += 1; return items }
            items.append(try value())
            try skipWhitespaceAndComments()
            if peek == UInt8(ascii: ",") { pos += 1; continue }
            guard peek != nil else { throw fail("unterminated array") }
            guard peek == UInt8(ascii: "]") else { throw fail("expected ',' or ']' in an array") }
        }
    }

    mutating func inlineTable() throws(TOMLError) -> TOMLTable {
        let node = Node(line: line, origin: .inline)
        pos += 1
        skipSpaces()
        if peek == UInt8(ascii: "}") { pos += 1; return node.freeze() }
        while true {
            try keyValue(into: node, origin: .inline)
            skipSpaces()
            guard let c = peek else { throw fail("unterminated inline table") }
            if c == UInt8(ascii: "}") { pos += 1; return node.freeze() }
            guard c == UInt8(ascii: ",") else { throw fail("expected ',' or '}' in an inline table") }
            pos += 1
        }
    }

    // MARK: strings

    mutating func basicString() throws(TOMLError) -> String {
        pos += 1
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw fail("unterminated string") }
            if c == UInt8(ascii: "\"") { pos += 1; break }
            if c == UInt8(ascii: "\n") { throw fail("newline in a single-line string") }
            if c == UInt8(ascii: "\\") {
                try escape(into: &out)
            } else {
                guard c >= 0x20 || c == 0x09, c != 0x7F else { throw fail("control character in a string") }
                out.append(c)
                pos += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    mutating func literalString() throws(TOMLError) -> String {
        pos += 1
        let start = pos
        while true {
            guard let c = peek else { throw fail("unterminated string") }
            if c == UInt8(ascii: "'") { break }
            if c == UInt8(ascii: "\n") { throw fail("newline in a single-line string") }
            pos += 1
        }
        defer { pos += 1 }
        return String(decoding: bytes[start..<pos], as: UTF8.self)
    }

    mutating func multilineString(literal: Bool) throws(TOMLError) -> String {
        let quote = bytes[pos]
        pos += 3
        // A newline right after the opening delimiter is trimmed.
        if peek == 0x0D, peek(at: 1) == 0x0A { pos += 1 }
        if peek == UInt8(ascii: "\n") { advance() }
        var out: [UInt8] = []
        while true {
            guard let c = peek else { throw fail("unterminated multi-line string") }
            if c == quote, peek(at: 1) == quote, peek(at: 2) == quote {
                pos += 3
                // Up to two quotes may directly precede the closing delimiter.
                var extra = 0
                while peek == quote, extra < 2 { out.append(quote); pos += 1; extra += 1 }
                return String(decoding: out, as: UTF8.self)
            }
            if !literal && c == UInt8(ascii: "\\") {
                // A line-ending backslash trims the newline and the whitespace after it.
                var look = pos + 1
                while look < bytes.count, bytes[look] == 0x20 || bytes[look] == 0x09 { look += 1 }
                if look < bytes.count, bytes[look] == 0x0A || bytes[look] == 0x0D {
                    pos = look
                    while let w = peek, w == 0x20 || w == 0x09 || w == 0x0A || w == 0x0D { advance() }
                    continue
                }
                try escape(into: &out)
                continue
            }
            out.append(c)
            advance()
        }
    }

    mutating func escape(into out: inout [UInt8]) throws(TOMLError) {
        pos += 1
        guard let e = peek else { throw fail("unterminated escape") }
        pos += 1
        switch e {
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "t"): out.append(0x09)
        case UInt8(ascii: "n"): out.append(0x0A)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "r"): out.append(0x0D)
        case UInt8(ascii: "\""): out.append(0x22)
        case UInt8(ascii: "\\"): out.append(0x5C)
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let count = e == UInt8(ascii: "u") ? 4 : 8
            guard pos + count <= bytes.count,
                  let code = UInt32(String(decoding: bytes[pos..<pos + count], as: UTF8.self), radix: 16),
                  let scalar = Unicode.Scalar(code)
            else { throw fail("invalid unicode escape") }
            pos += count
            out.append(contentsOf: Array(String(Character(scalar)).utf8))
        default:
            throw fail("invalid escape '\\\(Character(UnicodeScalar(e)))'")
        }
    }

    // MARK: numbers, booleans, dates

    mutating func scalar() throws(TOMLError) -> TOMLValue.Kind {
        let start = pos
        while let c = peek, !(c == 0x2C || c == 0x5D || c == 0x7D || c == 0x23 || c == 0x0A || c == 0x0D) {
            // A space may separate a date from a time; otherwise it ends the token.
            if c == 0x20 || c == 0x09 {
                let token = bytes[start..<pos]
                if token.count == 10, token.dropFirst(4).first == UInt8(ascii: "-"), let n = peek(at: 1), n >= 0x30 && n <= 0x39 {
                    pos += 1
                    continue
                }
                break
            }
            pos += 1
        }
        let token = String(decoding: bytes[start..<pos], as: UTF8.self)
        guard !token.isEmpty else { throw fail("expected a value") }
        switch token {
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        if let i = Self.integer(token) { return .integer(i) }
        if let f = Self.float(token) { return .float(f) }
        if Self.looksLikeDateTime(token) { return .datetime(token) }
        throw TOMLError(line: line, message: "invalid value '\(token)' (strings need quotes)")
    }

    static func integer(_ token: String) -> Int64? {
        var t = Substring(token)
        var radix = 10
        if t.hasPrefix("0x") { radix = 16; t = t.dropFirst(2) } else if t.hasPrefix("0o") { radix = 8; t = t.dropFirst(2) } else if t.hasPrefix("0b") { radix = 2; t = t.dropFirst(2) }
        guard validUnderscores(t) else { return nil }
        let digits = t.filter { $0 != "_" }
        if radix == 10 {
            let unsigned = digits.hasPrefix("+") || digits.hasPrefix("-") ? digits.dropFirst() : Substring(digits)
            // Leading zeros are not allowed in decimal integers.
            if unsigned.count > 1 && unsigned.hasPrefix("0") { return nil }
            guard !unsigned.isEmpty, unsigned.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
        } else if digits.hasPrefix("+") || digits.hasPrefix("-") {
            return nil
        }
        return Int64(digits, radix: radix)
    }

    static func float(_ token: String) -> Double? {
        guard validUnderscores(Substring(token)) else { return nil }
        let t = token.filter { $0 != "_" }
        let body = t.hasPrefix("+") || t.hasPrefix("-") ? String(t.dropFirst()) : t
        guard body.contains(where: { $0 == "." || $0 == "e" || $0 == "E" }),
              body.first?.isNumber == true,
              !body.contains(".e"), !body.contains(".E"), !body.hasSuffix(".")
        else { return nil }
        let intPart = body.prefix { $0.isNumber }
        if intPart.count > 1 && intPart.hasPrefix("0") { return nil }
        return Double(t)
    }

    static func validUnderscores(_ t: Substring) -> Bool {
        guard t.contains("_") else { return true }
        let chars = Array(t)
        for (i, c) in chars.enumerated() where c == "_" {
            guard i > 0, i < chars.count - 1, chars[i - 1].isHexDigit, chars[i + 1].isHexDigit else { return false }
        }
        return true
    }

    static func looksLikeDateTime(_ token: String) -> Bool {
        let allowed = Set("0123456789-:TtZz.+ ")
        guard token.allSatisfy({ allowed.contains($0) }) else { return false }
        let b = Array(token.utf8)
        let isDate = b.count >= 10 && b[4] == UInt8(ascii: "-") && b[7] == UInt8(ascii: "-")
        let isTime = b.count >= 8 && b[2] == UInt8(ascii: ":") && b[5] == UInt8(ascii: ":")
        return isDate || isTime
    }
}

