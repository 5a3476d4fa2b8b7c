import Foundation
import TLS
import TOML
import Wire

/// The CA profile (ca/root.toml): how roots are made and what leaves may look like.
/// Pure data plus validation; errors carry file:line.
public struct CAProfile: Sendable, Equatable {
    public var rootKey: KeyAlgorithm = .ecP256
    public var rootLifetimeDays: Int = 3650
    /// Subject attributes in order; values may use {hostname}, {id} and {date}.
    public var rootSubject: [Pair] = [Pair("O", "Loupe"), Pair("CN", "Loupe Root CA {hostname} {id}")]
    public var permittedDNS: [String] = []
    public var excludedDNS: [String] = []
    public var permittedIP: [String] = []
    public var excludedIP: [String] = []
    public var leafMaxLifetimeDays: Int = 397
    /// Leaves start this long before "now", for clients whose clocks run slow.
    public var leafBackdateSeconds: Int = 86_400

    public struct Pair: Sendable, Equatable {
        public var field: String
        public var value: String
        public init(_ field: String, _ value: String) { self.field = field; self.value = value }
    }

    public init() {}

    public var hasNameConstraints: Bool { !(permittedDNS.isEmpty && excludedDNS.isEmpty && permittedIP.isEmpty && excludedIP.isEmpty) }

    public static func load(path: String) throws -> CAProfile {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError(file: path, line: 0, message: "cannot read the CA profile: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> CAProfile {
        let doc = try TOMLReader.parse(text, file: file)
        try doc.onlyKeys(["root", "leaf"])
        var profile = CAProfile()
        if let root = try doc.table("root") {
            try root.onlyKeys(["key", "lifetime_days", "subject", "name_constraints"])
            if let key = try root.string("key") {
                guard let algorithm = KeyAlgorithm(rawValue: key) else {
                    throw root.error("'root.key' must be one of \(KeyAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")), found '\(key)'", at: root.table["key"])
                }
                profile.rootKey = algorithm
            }
            if let days = try root.integer("lifetime_days", in: 1...36_500) { profile.rootLifetimeDays = Int(days) }
            if let subject = try root.table("subject") {
                var pairs: [Pair] = []
                for field in subject.table.keys {
                    guard let value = try subject.string(field) else { continue }
                    guard ["C", "ST", "L", "O", "OU", "CN", "serialNumber"].contains(field) else {
                        throw subject.error("'root.subject.\(field)' is not a supported attribute (C, ST, L, O, OU, CN, serialNumber)", at: subject.table[field])
                    }
                    pairs.append(Pair(field, value))
                }
                guard pairs.contains(where: { $0.field == "CN" }) else { throw subject.error("'root.subject' needs a CN") }
                profile.rootSubject = pairs
            }
            if let constraints = try root.table("name_constraints") {
                try constraints.onlyKeys(["permitted_dns", "excluded_dns", "permitted_ip", "excluded_ip"])
                profile.permittedDNS = try dnsNames(constraints, "permitted_dns")
                profile.excludedDNS = try dnsNames(constraints, "excluded_dns")
                profile.permittedIP = try cidrs(constraints, "permitted_ip")
                profile.excludedIP = try cidrs(constraints, "excluded_ip")
            }
        }
        if let leaf = try doc.table("leaf") {
            try leaf.onlyKeys(["max_lifetime_days", "backdate_seconds"])
            // 397 days is the CA/Browser Forum ceiling that browsers enforce for server certificates.
            if let days = try leaf.integer("max_lifetime_days", in: 1...397) { profile.leafMaxLifetimeDays = Int(days) }
            if let seconds = try leaf.integer("backdate_seconds", in: 0...(7 * 86_400)) { profile.leafBackdateSeconds = Int(seconds) }
        }
        return profile
    }

    static func dnsNames(_ reader: TOMLReader, _ key: String) throws(ConfigError) -> [String] {
        let names = try reader.strings(key) ?? []
        for name in names {
            let body = name.hasPrefix(".") ? String(name.dropFirst()) : name
            let ok = !body.isEmpty && body.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") }
            guard ok else { throw reader.error("'\(key)' entry '\(name)' is not a DNS name (letters, digits, '-', '.')", at: reader.table[key]) }
        }
        return names.map { $0.lowercased() }
    }

    static func cidrs(_ reader: TOMLReader, _ key: String) throws(ConfigError) -> [String] {
        let values = try reader.strings(key) ?? []
        for value in values where CIDR(value) == nil {
            throw reader.error("'\(key)' entry '\(value)' is not a CIDR like 10.0.0.0/8 or fd00::/8", at: reader.table[key])
        }
        return values
    }

    /// The subject with placeholders filled in.
    public func rootSubject(hostname: String, id: String, date: Date) -> [(String, String)] {
        let day = ISO8601DateFormatter.string(from: date, timeZone: TimeZone(identifier: "UTC")!, formatOptions: [.withFullDate])
        return rootSubject.map { pair in
            let value = pair.value
                .replacingOccurrences(of: "{hostname}", with: hostname)
                .replacingOccurrences(of: "{id}", with: id)
                .replacingOccurrences(of: "{date}", with: day)
            // X.520 caps most attributes at 64 characters; a long host name must not break init.
            return (pair.field, String(value.prefix(64)))
        }
    }

    /// The nameConstraints extension value in OpenSSL syntax (inputs were validated above).
    var nameConstraintsValue: String? {
        guard hasNameConstraints else { return nil }
        var parts: [String] = []
        parts += permittedDNS.map { "permitted;DNS:\($0)" }
        parts += permittedIP.compactMap { CIDR($0).map { "permitted;IP:\($0.addressSlashMask)" } }
        parts += excludedDNS.map { "excluded;DNS:\($0)" }
        parts += excludedIP.compactMap { CIDR($0).map { "excluded;IP:\($0.addressSlashMask)" } }
        return "critical," + parts.joined(separator: ",")
    }

    /// Whether a root with these constraints may name `san` (RFC 5280 semantics for DNS and IP).
    public func permits(_ san: SubjectAltName) -> Bool {
        switch san {
        case .dns(let name):
            let name = name.lowercased()
            if excludedDNS.contains(where: { Self.dns(name, within: $0) }) { return false }
            return permittedDNS.isEmpty || permittedDNS.contains { Self.dns(name, within: $0) }
        case .ip(let bytes):
            let ranges = { (list: [String]) in list.compactMap(CIDR.init).filter { $0.address.count == bytes.count } }
            if ranges(excludedIP).contains(where: { $0.contains(bytes) }) { return false }
            let permitted = ranges(permittedIP)
            return permittedIP.isEmpty || permitted.contains { $0.contains(bytes) }
        case .email, .uri:
            return true
        }
    }

    /// "example.com" covers itself and its subdomains; ".example.com" only subdomains.
    static func dns(_ name: String, within constraint: String) -> Bool {
        if constraint.hasPrefix(".") { return name.hasSuffix(constraint) }
        return name == constraint || name.hasSuffix("." + constraint)
    }
}
