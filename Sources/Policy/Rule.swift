import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Wire

/// One `[[rule]]`: conditions (all must hold; values inside one are alternatives) and an action.
public struct Rule: Sendable {
    public var name: String
    public var stage: Stage
    public var action: Verdict
    public var blockMode: BlockMode?
    public var reason: String?
    /// Hello-stage bump rules: the client identity (store label) to present to an upstream that
    /// asks for a certificate.
    public var identity: String?
    /// Where the rule starts in its file, for messages.
    public var line: Int
    public var conditions: [Condition]

    /// nil when the rule matches; otherwise the first condition that did not, in words.
    public func mismatch(_ facts: FlowFacts) -> String? {
        for condition in conditions {
            if let why = condition.mismatch(facts) { return why }
        }
        return nil
    }

    public func matches(_ facts: FlowFacts) -> Bool { conditions.allSatisfy { $0.matches(facts) } }

    /// Whether the rule trusts the client's SNI (which a client can spoof).
    public var matchesOnSNI: Bool { conditions.contains { if case .sni = $0 { true } else { false } } }

    public var matchReason: String {
        reason ?? (conditions.isEmpty ? "matches every flow" : "matched " + conditions.map(\.description).joined(separator: ", "))
    }
}

/// Host names matched against inline patterns and any referenced lists (shared, not copied).
public struct HostMatcher: Sendable {
    var sets: [HostSet]
    var text: [String]

    func matches(_ name: String) -> Bool {
        guard let normalised = HostName.normalise(name) else { return false }
        return sets.contains { $0.contains(normalised: normalised) }
    }
}

public enum Condition: Sendable, CustomStringConvertible {
    case proto(Set<FlowFacts.Proto>)
    case family(Set<FlowFacts.Family>)
    case dstNet([CIDR])
    case srcNet([CIDR])
    case dstPort([ClosedRange<UInt16>])
    case srcPort([ClosedRange<UInt16>])
    case uid(Set<UInt32>)
    case user(Set<String>)
    case gid(Set<UInt32>)
    case group(Set<String>)
    case exe([String])
    case names(HostMatcher)
    case tls(Bool)
    case sni(HostMatcher)
    case alpn(Set<String>)
    case method(Set<String>)
    case path([String])
    case url([URLPrefix])

    /// The match fields, the first stage whose facts include them, and their TOML key.
    public static let fields: [(key: String, stage: Stage)] = [
        ("proto", .connect), ("family", .connect), ("dst_net", .connect), ("src_net", .connect),
        ("dst_port", .connect), ("src_port", .connect), ("uid", .connect), ("user", .connect),
        ("gid", .connect), ("group", .connect), ("exe", .connect), ("names", .connect),
        ("tls", .hello), ("sni", .hello), ("alpn", .hello), ("method", .request), ("path", .request), ("url", .request),
    ]

    public var description: String {
        switch self {
        case .proto(let s): "proto \(s.map(\.rawValue).sorted().joined(separator: "|"))"
        case .family(let s): "family \(s.map(\.rawValue).sorted().joined(separator: "|"))"
        case .dstNet(let n): "dst_net \(n.map(\.description).joined(separator: "|"))"
        case .srcNet(let n): "src_net \(n.map(\.description).joined(separator: "|"))"
        case .dstPort(let p): "dst_port \(Self.ports(p))"
        case .srcPort(let p): "src_port \(Self.ports(p))"
        case .uid(let s): "uid \(s.sorted().map(String.init).joined(separator: "|"))"
        case .user(let s): "user \(s.sorted().joined(separator: "|"))"
        case .gid(let s): "gid \(s.sorted().map(String.init).joined(separator: "|"))"
        case .group(let s): "group \(s.sorted().joined(separator: "|"))"
        case .exe(let g): "exe \(g.joined(separator: "|"))"
        case .names(let m): "names \(m.text.joined(separator: "|"))"
        case .tls(let b): "tls \(b)"
        case .sni(let m): "sni \(m.text.joined(separator: "|"))"
        case .alpn(let s): "alpn \(s.sorted().joined(separator: "|"))"
        case .method(let s): "method \(s.sorted().joined(separator: "|"))"
        case .path(let p): "path \(p.joined(separator: "|"))"
        case .url(let u): "url \(u.map(\.text).joined(separator: "|"))"
        }
    }

    static func ports(_ ranges: [ClosedRange<UInt16>]) -> String {
        ranges.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: "|")
    }

    /// The hot path: no strings are built.
    func matches(_ f: FlowFacts) -> Bool {
        switch self {
        case .proto(let s): return s.contains(f.proto)
        case .family(let s): return f.family.map(s.contains) ?? false
        case .dstNet(let n): return f.dst.map { d in n.contains { $0.contains(d.address) } } ?? false
        case .srcNet(let n): return f.src.map { s in n.contains { $0.contains(s.address) } } ?? false
        case .dstPort(let p): return f.dst.map { d in p.contains { $0.contains(d.port) } } ?? false
        case .srcPort(let p): return f.src.map { s in p.contains { $0.contains(s.port) } } ?? false
        case .uid(let s): return f.uid.map(s.contains) ?? false
        case .user(let s): return f.user.map(s.contains) ?? false
        case .gid(let s): return f.gid.map(s.contains) ?? false
        case .group(let s): return f.group.map(s.contains) ?? false
        case .exe(let globs): return f.exe.map { exe in globs.contains { fnmatch($0, exe, FNM_PATHNAME) == 0 } } ?? false
        case .names(let m): return f.names.contains(where: m.matches)
        case .tls(let b): return f.tls == b
        case .sni(let m): return f.sni.map(m.matches) ?? false
        case .alpn(let s): return f.alpn.contains { s.contains($0.lowercased()) }
        case .method(let s): return f.method.map { s.contains($0.uppercased()) } ?? false
        case .path(let p): return p.contains { f.pathHasPrefix($0) ?? false }
        case .url(let u): return u.contains { f.canonicalURLHas($0) }  // (a method reference would copy f)
        }
    }

    /// nil when the condition holds; otherwise what the flow had instead (for `explain`).
    func mismatch(_ f: FlowFacts) -> String? {
        if matches(f) { return nil }
        let had: String? = switch self {
        case .proto: f.proto.rawValue
        case .family: f.family?.rawValue
        case .dstNet: f.dst.map { IPAddress.format($0.address) }
        case .srcNet: f.src.map { IPAddress.format($0.address) }
        case .dstPort: f.dst.map { "port \($0.port)" }
        case .srcPort: f.src.map { "port \($0.port)" }
        case .uid: f.uid.map { "uid \($0)" }
        case .user: f.user.map { "user \($0)" }
        case .gid: f.gid.map { "gid \($0)" }
        case .group: f.group.map { "group \($0)" }
        case .exe: f.exe
        case .names: f.names.isEmpty ? nil : "names \(f.names.joined(separator: ","))"
        case .tls: f.tls.map { "tls \($0)" }
        case .sni: f.sni.map { "sni \($0)" }
        case .alpn: f.alpn.isEmpty ? nil : "alpn \(f.alpn.joined(separator: ","))"
        case .method: f.method
        case .path: f.path.map { "path \($0)" }
        case .url: f.url
        }
        let field = description.prefix { $0 != " " }
        return had.map { "\(description): flow has \($0)" } ?? "\(description): flow's \(field) is unknown"
    }

    /// Whether the condition may hold for a request of a flow whose connect and hello facts are
    /// `f`: request fields are unknown (they may), a URL prefix may if it names the flow's SNI
    /// (or the flow has none); everything else is known already.
    func couldHoldBeforeRequest(_ f: FlowFacts) -> Bool {
        switch self {
        case .method, .path: return true
        case .url(let prefixes):
            guard let sni = f.sni.flatMap(HostName.normalise) else { return true }
            return prefixes.contains { prefix in
                guard let authority = URLPath.authority(prefix.origin) else { return true }
                return HostName.normalise(String(URLPath.hostAndPort(authority).host)) == sni
            }
        default: return matches(f)
        }
    }

}

/// A `url` condition's prefix, split once when the policy is read. It names one origin (scheme,
/// host and port, exactly: "https://intranet.test" is not a prefix of
/// "https://intranet.test.evil.test") and a prefix of what follows it — both in canonical form
/// (`URLPath`: rules are stored so, requests are `FlowFacts.canonicalURL`), so case, a default
/// port or a trailing dot change nothing.
public struct URLPrefix: Sendable {
    /// "scheme://authority".
    let origin: String
    /// The path (and query) prefix after it.
    let rest: String
    /// The whole prefix, `origin` and `rest`.
    public let text: String

    init(canonical: String) {
        (origin, rest) = URLPath.split(canonical)
        text = canonical
    }
}
