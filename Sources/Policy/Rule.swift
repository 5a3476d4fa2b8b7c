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
    case sni(HostMatcher)
    case alpn(Set<String>)
    case method(Set<String>)
    case path([String])
    case url([String])

    /// The match fields, the first stage whose facts include them, and their TOML key.
    public static let fields: [(key: String, stage: Stage)] = [
        ("proto", .connect), ("family", .connect), ("dst_net", .connect), ("src_net", .connect),
        ("dst_port", .connect), ("src_port", .connect), ("uid", .connect), ("user", .connect),
        ("gid", .connect), ("group", .connect), ("exe", .connect), ("names", .connect),
        ("sni", .hello), ("alpn", .hello), ("method", .request), ("path", .request), ("url", .request),
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
        case .sni(let m): "sni \(m.text.joined(separator: "|"))"
        case .alpn(let s): "alpn \(s.sorted().joined(separator: "|"))"
        case .method(let s): "method \(s.sorted().joined(separator: "|"))"
        case .path(let p): "path \(p.joined(separator: "|"))"
        case .url(let u): "url \(u.joined(separator: "|"))"
        }
    }

    static func ports(_ ranges: [ClosedRange<UInt16>]) -> String {
        ranges.map { $0.lowerBound == $0.upperBound ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }.joined(separator: "|")
    }

    func mismatch(_ f: FlowFacts) -> String? {
        func check(_ ok: Bool, _ known: Bool, _ what: String) -> String? {
            ok ? nil : (known ? "\(description): flow has \(what)" : "\(description): flow's \(what) is unknown")
        }
        switch self {
        case .proto(let s): return check(s.contains(f.proto), true, f.proto.rawValue)
        case .family(let s): return check(f.family.map(s.contains) ?? false, f.family != nil, f.family?.rawValue ?? "family")
        case .dstNet(let n): return check(f.dst.map { d in n.contains { $0.contains(d.address) } } ?? false, f.dst != nil, f.dst.map { IPAddress.format($0.address) } ?? "destination")
        case .srcNet(let n): return check(f.src.map { s in n.contains { $0.contains(s.address) } } ?? false, f.src != nil, f.src.map { IPAddress.format($0.address) } ?? "source")
        case .dstPort(let p): return check(f.dst.map { d in p.contains { $0.contains(d.port) } } ?? false, f.dst != nil, f.dst.map { "port \($0.port)" } ?? "destination port")
        case .srcPort(let p): return check(f.src.map { s in p.contains { $0.contains(s.port) } } ?? false, f.src != nil, f.src.map { "port \($0.port)" } ?? "source port")
        case .uid(let s): return check(f.uid.map(s.contains) ?? false, f.uid != nil, f.uid.map { "uid \($0)" } ?? "uid")
        case .user(let s): return check(f.user.map(s.contains) ?? false, f.user != nil, f.user.map { "user \($0)" } ?? "user")
        case .gid(let s): return check(f.gid.map(s.contains) ?? false, f.gid != nil, f.gid.map { "gid \($0)" } ?? "gid")
        case .group(let s): return check(f.group.map(s.contains) ?? false, f.group != nil, f.group.map { "group \($0)" } ?? "group")
        case .exe(let globs):
            return check(f.exe.map { exe in globs.contains { fnmatch($0, exe, FNM_PATHNAME) == 0 } } ?? false, f.exe != nil, f.exe ?? "executable")
        case .names(let m): return check(f.names.contains(where: m.matches), !f.names.isEmpty, f.names.isEmpty ? "names" : "names \(f.names.joined(separator: ","))")
        case .sni(let m): return check(f.sni.map(m.matches) ?? false, f.sni != nil, f.sni.map { "sni \($0)" } ?? "sni")
        case .alpn(let s): return check(f.alpn.contains { s.contains($0.lowercased()) }, !f.alpn.isEmpty, f.alpn.isEmpty ? "alpn" : "alpn \(f.alpn.joined(separator: ","))")
        case .method(let s): return check(f.method.map { s.contains($0.uppercased()) } ?? false, f.method != nil, f.method ?? "method")
        case .path(let p): return check(f.path.map { path in p.contains { path.hasPrefix($0) } } ?? false, f.path != nil, f.path.map { "path \($0)" } ?? "path")
        case .url(let u): return check(f.url.map { url in u.contains { Self.urlMatches(url, prefix: $0) } } ?? false, f.url != nil, f.url ?? "url")
        }
    }

    /// URL prefixes compare scheme and host case-insensitively, the rest exactly.
    static func urlMatches(_ url: String, prefix: String) -> Bool {
        func split(_ s: String) -> (String, String) {
            guard let scheme = s.range(of: "://") else { return (s.lowercased(), "") }
            let rest = s[scheme.upperBound...]
            let authorityEnd = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
            return (String(s[..<authorityEnd]).lowercased(), String(rest[authorityEnd...]))
        }
        let (u1, u2) = split(url), (p1, p2) = split(prefix)
        return p2.isEmpty ? u1.hasPrefix(p1) : (u1 == p1 && u2.hasPrefix(p2))
    }
}
