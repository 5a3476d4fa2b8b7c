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

    init(kind: Kind, name: String) {
        self.kind = kind
        self.name = name
    }

    /// From the bytes of a list file's line: the ASCII fast path without an intermediate String.
    init?(bytes: ArraySlice<UInt8>) {
        var body = bytes
        var kind = Kind.exact
        if body.starts(with: [0x2A, 0x2E]) { kind = .subdomains; body = body.dropFirst(2) } else if body.first == 0x2E { kind = .apexAndSubdomains; body = body.dropFirst() }
        if let name = HostName.normaliseASCII(bytes: body) {
            self.init(kind: kind, name: name)
        } else {
            self.init(String(decoding: bytes, as: UTF8.self))
        }
    }

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
        if let fast = normaliseASCII(text) { return fast }
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

extension HostName {
    /// The common case — ASCII letters, digits, '-', '_' — in one pass over the bytes; nil
    /// sends anything else (IDNs, odd bytes) down the general path.
    static func normaliseASCII(_ text: String) -> String? { normaliseASCII(bytes: text.utf8) }

    static func normaliseASCII(bytes input: some Collection<UInt8>) -> String? {
        var bytes = Array(input)
        if bytes.last == 0x2E { bytes.removeLast() }
        guard !bytes.isEmpty, bytes.count <= 253 else { return nil }
        var labelLength = 0
        for i in bytes.indices {
            let c = bytes[i]
            switch c {
            case 0x41...0x5A: bytes[i] = c | 0x20; labelLength += 1
            case 0x61...0x7A, 0x30...0x39, 0x2D, 0x5F: labelLength += 1
            case 0x2E:
                guard labelLength > 0 else { return nil }
                labelLength = 0
            default: return nil
            }
        }
        guard labelLength > 0 else { return nil }
        return String(decoding: bytes, as: UTF8.self)
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
