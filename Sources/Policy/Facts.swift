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
            address.count == 16 ? "[\(IPAddress.format(address))]:\(port)" : "\(IPAddress.format(address)):\(port)"
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
    public var url: String?

    public init() {}

    public var family: Family? { dst.map { $0.address.count == 16 ? .ipv6 : .ipv4 } ?? src.map { $0.address.count == 16 ? .ipv6 : .ipv4 } }

    /// The request's path (with query), from `url`.
    public var path: String? {
        guard let url, let scheme = url.range(of: "://") else { return nil }
        let rest = url[scheme.upperBound...]
        guard let slash = rest.firstIndex(of: "/") else { return "/" }
        return String(rest[slash...])
    }

    /// The request's host, from `url`.
    public var host: String? {
        guard let url, let scheme = url.range(of: "://") else { return nil }
        var authority = url[scheme.upperBound...].prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if let at = authority.lastIndex(of: "@") { authority = authority[authority.index(after: at)...] }
        if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") { return String(authority[authority.index(after: authority.startIndex)..<close]) }
        return String(authority.split(separator: ":").first ?? "")
    }
}
