import NIOHPACK

/// What RFC 9113 (§8.1.1, §8.2, §8.3) calls a malformed HTTP/2 request, sans-IO. An origin that
/// hands HTTP/2 requests on as HTTP/1.1 (a CDN or load balancer in front of the server) may
/// read such a request differently from the request stage — a `transfer-encoding` or a
/// `content-length` that disagrees with the body lets a second request ride in the body, a CR
/// or LF in a value splits the head — so the request stage would judge one request while the
/// server behind answers another. Loupe refuses them, as conforming servers must.
enum HTTP2RequestValidation {
    /// A header block's verdict: why it is malformed, or the body length it declares.
    enum Verdict: Equatable {
        case malformed(String)
        case wellFormed(contentLength: Int?)
    }

    /// Fields that only mean something to one HTTP/1.1 connection (§8.2.2).
    static let connectionSpecific: Set<String> = ["connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade"]
    static let requestPseudoFields: Set<String> = [":method", ":scheme", ":authority", ":path", ":protocol"]

    /// A request's header block (`trailers`: a later block on an open stream). `endStream`: the
    /// block ends the stream, so no body follows.
    static func check(_ headers: HPACKHeaders, trailers: Bool, endStream: Bool) -> Verdict {
        var pseudo: [String: String] = [:]
        var regularSeen = false
        var contentLengths: Set<String> = []
        for (name, value, _) in headers {
            if let problem = fieldProblem(name: name, value: value) { return .malformed(problem) }
            if name.utf8.first == UInt8(ascii: ":") {
                if trailers { return .malformed("a pseudo-header (\(name)) in trailers") }
                if regularSeen { return .malformed("the pseudo-header \(name) after a regular field") }
                guard requestPseudoFields.contains(name) else { return .malformed("an unknown pseudo-header \(name.prefix(40))") }
                guard pseudo.updateValue(value, forKey: name) == nil else { return .malformed("the pseudo-header \(name) twice") }
                continue
            }
            regularSeen = true
            if connectionSpecific.contains(name) { return .malformed("a connection-specific field (\(name))") }
            if name == "te", value != "trailers" { return .malformed("te other than \"trailers\"") }
            if name == "content-length" { contentLengths.insert(value) }
        }
        if !trailers, let problem = pseudoProblem(pseudo) { return .malformed(problem) }
        guard let declared = contentLengths.first else { return .wellFormed(contentLength: nil) }
        guard contentLengths.count == 1, !declared.isEmpty, declared.utf8.count <= 18, declared.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let length = Int(declared) else {
            return .malformed("content-length \(contentLengths.count > 1 ? "given twice, differently" : "is not a number")")
        }
        if trailers { return .malformed("content-length in trailers") }
        if endStream, length > 0 { return .malformed("content-length \(length) on a request without a body") }
        return .wellFormed(contentLength: length)
    }

    /// §8.2.1: lowercase names of visible characters (no colon past a pseudo-header's first);
    /// values without NUL, CR or LF. Whitespace around a value, which §8.2.1 also forbids, is
    /// let through as nginx does: an HTTP/1.1 hop reads it as optional whitespace.
    static func fieldProblem(name: String, value: String) -> String? {
        let bytes = name.utf8
        guard !bytes.isEmpty else { return "an empty field name" }
        for (i, byte) in bytes.enumerated() {
            let visible = byte > 0x20 && byte < 0x7F
            let upper = byte >= 0x41 && byte <= 0x5A
            if !visible || upper || (byte == UInt8(ascii: ":") && i > 0) {
                return "the field name \"\(name.prefix(40))\" (\(upper ? "uppercase" : "a character names may not hold"))"
            }
        }
        let v = value.utf8
        if v.contains(where: { $0 == 0 || $0 == 0x0A || $0 == 0x0D }) { return "NUL, CR or LF in the value of \(name.prefix(40))" }
        return nil
    }

    /// §8.3.1, and RFC 8441's extended CONNECT (`:protocol`).
    static func pseudoProblem(_ pseudo: [String: String]) -> String? {
        guard let method = pseudo[":method"], !method.isEmpty else { return "no :method" }
        if method == "CONNECT", pseudo[":protocol"] == nil {
            if pseudo[":scheme"] != nil || pseudo[":path"] != nil { return "CONNECT with :scheme or :path" }
            let authority = pseudo[":authority"] ?? ""
            return authority.isEmpty ? "CONNECT without :authority" : nil
        }
        if pseudo[":protocol"] != nil, method != "CONNECT" { return ":protocol on a \(method.prefix(20)) request" }
        guard let scheme = pseudo[":scheme"], !scheme.isEmpty else { return "no :scheme" }
        guard let path = pseudo[":path"], !path.isEmpty else { return "no :path" }
        // An asterisk only for OPTIONS; otherwise the path and query of the target (origin form).
        guard path.utf8.first == UInt8(ascii: "/") || (path == "*" && method == "OPTIONS") else {
            return ":path \"\(path.prefix(40))\" is not a path"
        }
        return nil
    }
}
