import Foundation
import Wire

/// What is known about a flow when a stage decides. Later stages know everything earlier
/// stages knew (DESIGN.md "Verdicts, in stages").
public struct FlowFacts: Sendable, Equatable {
    public enum Proto: String, Sendable, CaseIterable { case tcp, udp }
    public enum Family: String, Sendable, CaseIterable { case ipv4, ipv6 }

    public struct Endpoint: Sendable, Equatable, CustomStringConvertible {
        public var address: [UInt8]
        public var port: UInt16
        public init(address: [UInt8], port: UInt16) { self.address = address; self.port = port }

        /// "10.0.0.2:51514" or "[2001:db8::1]:443".
        public init?(_ text: String) {
            let host: Substring, port: Substring
            if text.hasPrefix("[") {
                guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
                host = text[text.index(after: text.startIndex)..<close]
                port = text[text.index(close, offsetBy: 2)...]
            } else {
                guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else { return nil }
                host = text[..<colon]
                port = text[text.index(after: colon)...]
            }
            guard let address = IPAddress.parse(String(host)), let p = UInt16(port) else { return nil }
            if text.hasPrefix("[") != (address.count == 16) { return nil }
            self.init(address: address, port: p)
        }

        public var description: String {
            var text = address.count == 16 ? "[" + IPAddress.format(address) + "]:" : IPAddress.format(address) + ":"
            text += String(port)
            return text
        }
    }

    public var proto: Proto = .tcp
    public var src: Endpoint?
    public var dst: Endpoint?
    public var uid: UInt32?
    public var user: String?
    public var gid: UInt32?
    public var group: String?
    public var exe: String?
    /// DNS-derived names of the destination (normalised on match).
    public var names: [String] = []
    // Stage hello:
    /// Whether the first bytes were a TLS ClientHello (false: something else, relayed opaquely
    /// unless a rule blocks it).
    public var tls: Bool?
    public var sni: String?
    public var alpn: [String] = []
    // Stage request:
    public var method: String?
    /// Absolute URL of the request, e.g. "https://host/path?q".
    public var url: String? {
        didSet {
            let canonical = url.map(URLPath.canonicalURLAndBounds)
            canonicalURL = canonical?.url
            canonicalURLIsASCII = canonical?.url.utf8.allSatisfy { $0 < 0x80 } ?? false
            guard let canonical, let bounds = canonical.bounds else { host = nil; port = nil; canonicalAuthorityEnd = nil; return }
            canonicalAuthorityEnd = bounds.end
            host = bounds.host(of: canonical.url)
            port = bounds.portNumber(of: canonical.url)
        }
    }
    /// `url` with its path as an origin resolves it (`URLPath`), made once when `url` is set:
    /// every path and url rule compares against it.
    public private(set) var canonicalURL: String?
    /// The request's host, from `url` in canonical form (lowercase, no userinfo or trailing dot;
    /// an IPv6 address without its brackets). Set with `url`, as the request stage reads it
    /// for every request.
    public private(set) var host: String?
    /// The port `url` names, from its canonical form: nil when it names none or the default
    /// (request URLs are https: 443).
    public private(set) var port: UInt16?
    /// Where the authority ends in `canonicalURL`, a UTF-8 offset (nil without a "://"), so
    /// path and url rules cut it there per request without scanning it again.
    private var canonicalAuthorityEnd: Int?
    /// Whether `canonicalURL` is all ASCII, as most are: path and url rules then compare bytes.
    private var canonicalURLIsASCII = false

    public init() {}

    public var family: Family? { dst.map { $0.address.count == 16 ? .ipv6 : .ipv4 } ?? src.map { $0.address.count == 16 ? .ipv6 : .ipv4 } }

    /// The request's path (with query), from `url`, as an origin resolves it (`URLPath.canonical`).
    public var path: String? {
        // From where the authority ends: a "/" inside a query is not where the path starts.
        guard let tail = pathParts else { return nil }
        return tail.slash ? "/" + tail.rest : String(tail.rest)
    }

    /// `canonicalURL` as "scheme://authority" and the rest, in place (`URLPath.split`'s parts).
    private var canonicalURLParts: (origin: Substring, rest: Substring)? {
        guard let url = canonicalURL, let end = canonicalAuthorityEnd else { return nil }
        let index = url.utf8.index(url.utf8.startIndex, offsetBy: end)
        return (url[..<index], url[index...])
    }

    /// `path` without building it: whether a "/" goes before `rest`.
    private var pathParts: (slash: Bool, rest: Substring)? {
        canonicalURLParts.map { (Self.pathAddsSlash(before: $0.rest.utf8), $0.rest) }
    }

    /// Whether `path` puts a "/" before what follows the authority (no path, or a query or
    /// fragment right after the host).
    private static func pathAddsSlash(before rest: some Collection<UInt8>) -> Bool { rest.first != 0x2F }

    /// Whether `path` starts with `prefix`, without building it (path rules ask per request).
    func pathHasPrefix(_ prefix: String) -> Bool? {
        guard let url = canonicalURL, let end = canonicalAuthorityEnd else { return nil }
        let slash = Self.pathAddsSlash(before: url.utf8.dropFirst(end))
        // After the "/" that `path` puts first, the rule's next bytes follow the authority.
        let skip = slash ? 1 : 0
        if slash && prefix.utf8.first != 0x2F { return prefix.isEmpty }
        if let byBytes = asciiBytes(from: end, startWith: prefix, skipping: skip) { return byBytes }
        let rest = url[url.utf8.index(url.utf8.startIndex, offsetBy: end)...]
        return rest.hasPrefix(prefix[prefix.utf8.index(prefix.startIndex, offsetBy: skip)...])
    }

    /// Whether `canonicalURL` is `prefix.origin` followed by text starting with `prefix.rest`.
    func canonicalURLHas(_ prefix: URLPrefix) -> Bool {
        guard let end = canonicalAuthorityEnd else { return false }
        if let byBytes = asciiBytes(from: 0, startWith: prefix.text, skipping: 0) { return byBytes && end == prefix.origin.utf8.count }
        let (origin, rest) = canonicalURLParts!
        return origin == prefix.origin && rest.hasPrefix(prefix.rest)
    }

    /// Whether `canonicalURL`'s bytes from `offset` start with `prefix`'s after its first
    /// `skip`, decided by bytes where all compared are ASCII: bytes and characters agree there
    /// (but for "\r\n", one character, which no request URL holds). nil leaves it to Swift's
    /// comparison by characters (a Substring's, Character by Character, had been most of a
    /// rule's cost), which knows a Kelvin sign is canonically "K".
    private func asciiBytes(from offset: Int, startWith prefix: String, skipping skip: Int) -> Bool? {
        guard canonicalURLIsASCII, let url = canonicalURL else { return nil }
        var prefix = prefix
        return url.utf8.withContiguousStorageIfAvailable { urlBytes -> Bool? in
            prefix.withUTF8 { prefixBytes -> Bool? in
                let wanted = prefixBytes.count - skip
                guard wanted <= urlBytes.count - offset else {
                    return prefixBytes.contains { $0 >= 0x80 } ? nil : false
                }
                for k in 0..<wanted {
                    let byte = prefixBytes[skip + k]
                    guard byte < 0x80 else { return nil }
                    guard urlBytes[offset + k] == byte else { return false }
                }
                return true
            }
        } ?? nil
    }
}

/// Request paths in the form servers resolve them to before routing: percent-escapes decoded
/// once, repeated slashes merged, dot segments removed (RFC 3986 5.2.4); the query is kept as
/// it came. Rules and requests are both compared in this form, so "/%61dmin", "//admin",
/// "/x/../admin", "/public/..%2fadmin", "/public\\..\\admin" (IIS) and — segment parameters
/// dropped, as Tomcat routes — "/public/..;/admin" and "/admin;jsessionid=1" all meet a rule on
/// "/admin", as the origin would serve them. Case is kept: paths are case-sensitive (RFC 3986 6.2.2.1).
public enum URLPath {
    /// `url` in canonical form: its origin as `canonicalOrigin` gives it, the rest as `canonical`.
    public static func canonicalURL(_ url: String) -> String { canonicalURLAndBounds(url).url }

    /// `canonicalURL` with the bounds of its result: those found in `url` when it was canonical
    /// already (the common case: scanned once), else those of the URL built.
    static func canonicalURLAndBounds(_ url: String) -> (url: String, bounds: Bounds?) {
        guard let bounds = Bounds(url) else { return (url, nil) }
        let start = bounds.index(bounds.start, in: url), end = bounds.index(bounds.end, in: url)
        let rest = url[end...]
        // Most URLs are canonical already ("https://host/app.js?v=2"): checked in place, nothing built.
        let origin = bounds.originIsCanonical ? nil : canonicalOrigin(scheme: url[..<start], authority: url[start..<end])
        let path = rest.isEmpty || isCanonical(rest) ? nil : resolved(rest)
        if origin == nil && path == nil { return (url, bounds) }
        let built = (origin ?? String(url[..<end])) + (path ?? String(rest))
        return (built, Bounds(built))
    }

    /// "scheme://host[:port]" as a server takes it: lowercase, without userinfo, the host's
    /// trailing dot, the port's leading zeros or the scheme's default port — so
    /// "https://WWW.Example.com.:0443" meets a rule on "https://www.example.com". nil when it is
    /// so already. `scheme` ends in "://".
    static func canonicalOrigin(scheme: Substring, authority: Substring) -> String? {
        func hasUppercase(_ s: Substring) -> Bool { s.utf8.contains { $0 >= 0x41 && $0 <= 0x5A } }
        var changed = hasUppercase(scheme) || hasUppercase(authority)
        var userless = authority
        if let at = userless.utf8.lastIndex(of: 0x40) { userless = userless[userless.index(after: at)...]; changed = true }
        var (host, port) = hostAndPort(userless)
        if host.utf8.count > 1, host.utf8.last == 0x2E { host = host.dropLast(); changed = true }
        let portText = port.flatMap { canonicalPort($0, default: HTTPHead.absoluteFormScheme(scheme).map { $0 == 8 ? 443 : 80 }) }
        // Every request's URL comes through here, nearly always canonical: nothing is built
        // unless something changes.
        guard changed || portText != nil else { return nil }
        return scheme.lowercased() + host.lowercased() + (portText ?? port.map { ":" + $0 } ?? "")
    }

    /// The port as a server writes it back, where that differs from `port` as written: "" for a
    /// bare colon or the scheme's default, else ":" and the number (":0443" is 443 to a server);
    /// nil when it is written so already, or is no number.
    private static func canonicalPort(_ port: Substring, default defaultPort: Int?) -> String? {
        if port.isEmpty { return "" }
        guard let number = Int(port) else { return nil }
        if number == defaultPort { return "" }
        // Written as the number would be ("+443", "0443" are not): compared by the first byte,
        // since every request URL naming a port comes here and `String(number)` would allocate.
        let first = port.utf8.first!
        let asWritten = (first >= 0x31 && first <= 0x39) || port == "0"
        return asWritten ? nil : ":\(number)"
    }

    /// The authority of `url` ("host[:port]", with any userinfo), nil without a "://".
    static func authority(_ url: String) -> Substring? {
        Bounds(url).map { url[$0.index($0.start, in: url)..<$0.index($0.end, in: url)] }
    }

    /// An authority without userinfo split at its port's colon: an IPv6 host keeps its
    /// brackets; the port is nil without a colon (and empty after a bare one).
    static func hostAndPort(_ authority: Substring) -> (host: Substring, port: Substring?) {
        var from = authority.startIndex
        if authority.utf8.first == 0x5B, let close = authority.utf8.firstIndex(of: 0x5D) { from = close }  // [IPv6]: its colons are not the port's
        guard let colon = authority[from...].utf8.firstIndex(of: 0x3A) else { return (authority, nil) }
        return (authority[..<colon], authority[authority.utf8.index(after: colon)...])
    }

    /// "scheme://authority" and the rest (path, query, fragment).
    public static func split(_ url: String) -> (authority: String, rest: String) {
        guard let bounds = Bounds(url) else { return (url, "") }
        let end = bounds.index(bounds.end, in: url)
        return (String(url[..<end]), String(url[end...]))
    }

    /// Where a URL's parts lie, as offsets into its UTF-8, found in one scan of its bytes: every
    /// request's URL passes through here, and walking a String's indices costs Unicode checks at
    /// every step (2.5–4.6% of the proxy's samples on serial keep-alive, in perf, before).
    struct Bounds {
        /// Just after the first "://".
        let start: Int
        /// After any userinfo (the last "@" in the authority).
        let hostStart: Int
        /// At the port's colon, or the authority's end. An IPv6 host keeps its brackets.
        let hostEnd: Int
        /// Where the authority ends: at the first "/", "?" or "#" after `start`, or the end.
        let end: Int
        /// Whether `canonicalOrigin` would leave the scheme and authority as they are, decided
        /// for the common shape only — lowercase, no userinfo or trailing dot, no port or a
        /// decimal one that is not the scheme's default. false sends the rest to the full check.
        let originIsCanonical: Bool
        /// The port's digits as a number, where they are plain decimal (≤ 5 digits, no leading 0).
        let decimalPort: Int?

        /// nil without a "://".
        init?(_ url: String) {
            // A native string's bytes are contiguous; any other is scanned as a copy.
            guard let bounds = url.utf8.withContiguousStorageIfAvailable({ Bounds(bytes: $0) })
                ?? Array(url.utf8).withUnsafeBufferPointer({ Bounds(bytes: $0) }) else { return nil }
            self = bounds
        }

        private init?(bytes: UnsafeBufferPointer<UInt8>) {
            let n = bytes.count
            var i = 0
            while i + 3 <= n, !(bytes[i] == 0x3A && bytes[i + 1] == 0x2F && bytes[i + 2] == 0x2F) { i += 1 }
            guard i + 3 <= n else { return nil }
            let scheme = i
            start = i + 3
            var end = start, at: Int?
            while end < n, bytes[end] != 0x2F, bytes[end] != 0x3F, bytes[end] != 0x23 {
                if bytes[end] == 0x40 { at = end }
                end += 1
            }
            self.end = end
            hostStart = at.map { $0 + 1 } ?? start
            var from = hostStart
            if from < end, bytes[from] == 0x5B, let close = (from..<end).first(where: { bytes[$0] == 0x5D }) { from = close }
            let colon = (from..<end).first { bytes[$0] == 0x3A }
            hostEnd = colon ?? end
            var port: Int?
            if let colon, colon + 1 < end, end - colon - 1 <= 5, bytes[colon + 1] != 0x30 {
                port = 0
                for k in colon + 1..<end {
                    guard bytes[k] >= 0x30 && bytes[k] <= 0x39 else { port = nil; break }
                    port = port! * 10 + Int(bytes[k] - 0x30)
                }
            }
            decimalPort = port
            let lowercase = !(0..<end).contains { bytes[$0] >= 0x41 && bytes[$0] <= 0x5A }
            let trailingDot = hostEnd - hostStart > 1 && bytes[hostEnd - 1] == 0x2E
            // Only read when the scheme is lowercase (else the full check runs anyway).
            func schemeIs(_ name: StaticString) -> Bool {
                scheme == name.utf8CodeUnitCount && (0..<scheme).allSatisfy { bytes[$0] == name.utf8Start[$0] }
            }
            let defaultPort = schemeIs("https") ? 443 : schemeIs("http") ? 80 : nil
            let portIsCanonical = colon == nil || (port != nil && port != defaultPort)
            originIsCanonical = lowercase && at == nil && !trailingDot && portIsCanonical
        }

        /// The String index of byte `offset` of `url` (the string these bounds were found in).
        func index(_ offset: Int, in url: String) -> String.Index {
            url.utf8.index(url.utf8.startIndex, offsetBy: offset)
        }

        /// The host, IPv6 brackets removed.
        func host(of url: String) -> String {
            let bytes = url.utf8
            var from = hostStart, to = hostEnd
            if from < to, bytes[index(from, in: url)] == 0x5B { from += 1; to = max(from, to - 1) }
            return String(url[index(from, in: url)..<index(to, in: url)])
        }

        /// The port as a number, nil when none is named or it is no port number.
        func portNumber(of url: String) -> UInt16? {
            guard hostEnd < end else { return nil }
            if let decimalPort { return UInt16(exactly: decimalPort) }
            return UInt16(url[index(hostEnd + 1, in: url)..<index(end, in: url)])
        }
    }

    public static func canonical(_ pathAndQuery: Substring) -> String {
        isCanonical(pathAndQuery) ? String(pathAndQuery) : resolved(pathAndQuery)
    }

    /// `canonical` for a path that is not canonical already.
    private static func resolved(_ pathAndQuery: Substring) -> String {
        let end = pathAndQuery.utf8.firstIndex { $0 == 0x3F || $0 == 0x23 } ?? pathAndQuery.endIndex
        let path = pathAndQuery[..<end]
        var segments: [Substring] = []
        let decoded = percentDecoded(path)
        // A backslash separates segments too, as IIS (and so ASP.NET) take it.
        let parts = decoded.split(omittingEmptySubsequences: true) { $0 == "/" || $0 == "\\" }
        for part in parts {
            // A segment's name ends at ";": Tomcat and Jetty route by the names alone, so
            // "/admin;jsessionid=1/" is /admin/ and "/public/..;/admin" is /admin to them.
            let name = part.prefix { $0 != ";" }
            switch name {
            case ".": continue
            case "..": if !segments.isEmpty { segments.removeLast() }
            case "": continue  // parameters only
            default: segments.append(name)
            }
        }
        var out = "/" + segments.joined(separator: "/")
        // A trailing slash (or a trailing dot segment, which names a directory) stays.
        let endsInSlash = decoded.hasSuffix("/") || decoded.hasSuffix("\\")
        let last = endsInSlash ? "" : (parts.last?.prefix { $0 != ";" } ?? "")
        if !segments.isEmpty, endsInSlash || last == "." || last == ".." { out += "/" }
        return out + pathAndQuery[end...]
    }

    /// Whether `canonical` would return the path as it is, by one scan of the path: no escape to
    /// decode, no empty segment to merge, no "." or ".." segment to resolve (a dot inside a
    /// segment, as in "app.js", is none) — for a path from its "/" (a relative one only
    /// without dots, as `canonical` gives it a leading "/" when it resolves anything).
    static func isCanonical(_ pathAndQuery: Substring) -> Bool {
        var length = 0, dots = 0, previous: UInt8 = 0, sawDot = false
        /// The segment that just ended was "." or "..".
        var dotSegment: Bool { length > 0 && length == dots && dots <= 2 }
        for c in pathAndQuery.utf8 {
            if c == 0x3F || c == 0x23 { break }  // the query and fragment are kept as they came
            switch c {
            case 0x25: return false
            case 0x2F:
                if previous == 0x2F || dotSegment { return false }
                length = 0
                dots = 0
            case 0x3B, 0x5C: return false  // segment parameters are dropped; "\\" is a "/"
            default:
                length += 1
                if c == 0x2E { dots += 1; sawDot = true }
            }
            previous = c
        }
        return !dotSegment && (!sawDot || pathAndQuery.utf8.first == 0x2F)
    }

    /// %XX escapes turned into their bytes (invalid UTF-8 becomes U+FFFD); a stray % stays.
    static func percentDecoded(_ s: Substring) -> String {
        guard s.utf8.contains(0x25) else { return String(s) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(s.utf8.count)
        var i = s.utf8.startIndex
        let utf8 = s.utf8
        while i < utf8.endIndex {
            let c = utf8[i]
            if c == 0x25, let h = utf8.index(i, offsetBy: 1, limitedBy: utf8.endIndex), h < utf8.endIndex,
               let l = utf8.index(h, offsetBy: 1, limitedBy: utf8.endIndex), l < utf8.endIndex,
               let hi = hex(utf8[h]), let lo = hex(utf8[l]) {
                bytes.append(hi << 4 | lo)
                i = utf8.index(after: l)
            } else {
                bytes.append(c)
                i = utf8.index(after: i)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    static func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x41...0x46: c - 0x41 + 10
        case 0x61...0x66: c - 0x61 + 10
        default: nil
        }
    }
}
