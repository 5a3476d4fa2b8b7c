/// Host name patterns as policies write them:
///   `example.com`    exactly that name
///   `*.example.com`  any subdomain, at any depth, but not the apex
///   `.example.com`   the apex and every subdomain
/// Compared case-insensitively, trailing dot ignored, IDNs in A-label (punycode) form.
public struct HostPattern: Hashable, Sendable, CustomStringConvertible {
    public enum Kind: Hashable, Sendable { case exact, subdomains, apexAndSubdomains }
    public var kind: Kind
    /// The normalised name the pattern is anchored at.
    public var name: String

    public init?(_ text: String) {
        var body = Substring(text)
        var kind = Kind.exact
        if body.hasPrefix("*.") { kind = .subdomains; body = body.dropFirst(2) } else if body.hasPrefix(".") { kind = .apexAndSubdomains; body = body.dropFirst() }
        guard let name = HostName.normalise(String(body)), !name.contains("*") else { return nil }
        self.kind = kind
        self.name = name
    }

    public var description: String {
        switch kind {
        case .exact: name
        case .subdomains: "*.\(name)"
        case .apexAndSubdomains: ".\(name)"
        }
    }
}

public enum HostName {
    /// Lowercase, no trailing dot, A-labels; nil when it cannot be a host name.
    public static func normalise(_ text: String) -> String? {
        var text = text
        if text.hasSuffix(".") { text.removeLast() }
        guard !text.isEmpty, text.utf8.count <= 253 * 4 else { return nil }
        var labels: [String] = []
        for label in text.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty else { return nil }
            let lower = label.lowercased()
            if lower.unicodeScalars.allSatisfy(\.isASCII) {
                guard lower.unicodeScalars.allSatisfy({ $0 != " " && $0.value > 0x20 && $0.value < 0x7F }) else { return nil }
                labels.append(lower)
            } else {
                guard let encoded = Punycode.encode(lower) else { return nil }
                labels.append("xn--" + encoded)
            }
        }
        let joined = labels.joined(separator: ".")
        return joined.utf8.count <= 253 ? joined : nil
    }
}

/// RFC 3492 punycode encoding of one label (for IDN → A-label).
enum Punycode {
    static func encode(_ input: String) -> String? {
        let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700
        let scalars = input.unicodeScalars.map { Int($0.value) }
        var output = scalars.filter { $0 < 0x80 }.map { Character(UnicodeScalar(UInt8($0))) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append("-") }
        var n = 0x80, delta = 0, bias = 72
        func digit(_ d: Int) -> Character { Character(UnicodeScalar(UInt8(d < 26 ? d + 97 : d + 22))) }
        func adapt(_ delta: Int, _ count: Int, _ first: Bool) -> Int {
            var delta = first ? delta / damp : delta / 2
            delta += delta / count
            var k = 0
            while delta > ((base - tMin) * tMax) / 2 { delta /= base - tMin; k += base }
            return k + (base - tMin + 1) * delta / (delta + skew)
        }
        while handled < scalars.count {
            guard let m = scalars.filter({ $0 >= n }).min() else { return nil }
            let (product, overflow) = (m - n).multipliedReportingOverflow(by: handled + 1)
            guard !overflow else { return nil }
            delta += product
            n = m
            for c in scalars {
                if c < n { delta += 1 }
                if c == n {
                    var q = delta, k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return String(output)
    }
}

/// A set of host patterns with constant-time lookup per name: one hash probe per label suffix,
/// whatever the set's size (a 1,000,000-entry block list costs the same as a 10-entry one).
public struct HostSet: Sendable {
    private var exact: Set<String> = []
    private var subdomainsOf: Set<String> = []
    private var apexAndSubdomainsOf: Set<String> = []
    public private(set) var count = 0

    public init(_ patterns: [HostPattern] = []) {
        for pattern in patterns { insert(pattern) }
    }

    public mutating func insert(_ pattern: HostPattern) {
        count += 1
        switch pattern.kind {
        case .exact: exact.insert(pattern.name)
        case .subdomains: subdomainsOf.insert(pattern.name)
        case .apexAndSubdomains: apexAndSubdomainsOf.insert(pattern.name)
        }
    }

    /// `name` must already be normalised (`HostName.normalise`).
    public func contains(normalised name: String) -> Bool {
        if exact.contains(name) || apexAndSubdomainsOf.contains(name) { return true }
        guard !subdomainsOf.isEmpty || !apexAndSubdomainsOf.isEmpty else { return false }
        var rest = Substring(name)
        while let dot = rest.firstIndex(of: ".") {
            rest = rest[rest.index(after: dot)...]
            let suffix = String(rest)
            if subdomainsOf.contains(suffix) || apexAndSubdomainsOf.contains(suffix) { return true }
        }
        return false
    }

    public func contains(_ name: String) -> Bool {
        guard let normalised = HostName.normalise(name) else { return false }
        return contains(normalised: normalised)
    }
}
