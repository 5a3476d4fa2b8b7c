import Wire

/// What an upstream context can offer, by IANA code point: the cipher suites its ClientHello
/// would carry (in its order of preference), and the signature schemes and groups OpenSSL
/// knows by name.
public struct OfferCatalog: Sendable, Equatable {
    public struct Suite: Sendable, Equatable {
        public var id: UInt16
        public var name: String
        public init(id: UInt16, name: String) { self.id = id; self.name = name }
        /// TLS 1.3 suites are 0x13xx.
        var isTLS13: Bool { id >> 8 == 0x13 }
    }

    /// TLS 1.2 (and older) suites, OpenSSL names, in the context's order.
    public var tls12: [Suite]
    /// TLS 1.3 suites, in the context's order.
    public var tls13: [Suite]

    public init(tls12: [Suite], tls13: [Suite]) {
        self.tls12 = tls12
        self.tls13 = tls13
    }

    /// SignatureScheme code points (RFC 8446 4.2.3) that OpenSSL 3.0's sigalgs lists accept by
    /// name. ECDSA-SHA1 and DSA are left out: OpenSSL 3.0 has no list names for them, and its
    /// security level refuses them anyway.
    static let signatureSchemes: [UInt16: String] = [
        0x0201: "rsa_pkcs1_sha1", 0x0301: "rsa_pkcs1_sha224",
        0x0401: "rsa_pkcs1_sha256", 0x0501: "rsa_pkcs1_sha384", 0x0601: "rsa_pkcs1_sha512",
        0x0403: "ecdsa_secp256r1_sha256", 0x0503: "ecdsa_secp384r1_sha384", 0x0603: "ecdsa_secp521r1_sha512",
        0x0804: "rsa_pss_rsae_sha256", 0x0805: "rsa_pss_rsae_sha384", 0x0806: "rsa_pss_rsae_sha512",
        0x0809: "rsa_pss_pss_sha256", 0x080A: "rsa_pss_pss_sha384", 0x080B: "rsa_pss_pss_sha512",
        0x0807: "ed25519", 0x0808: "ed448",
    ]

    /// NamedGroup code points (RFC 8446 4.2.7, RFC 7919, RFC 7027) OpenSSL 3.0 can use.
    static let groups: [UInt16: String] = [
        0x0016: "secp256k1", 0x0017: "P-256", 0x0018: "P-384", 0x0019: "P-521",
        0x001A: "brainpoolP256r1", 0x001B: "brainpoolP384r1", 0x001C: "brainpoolP512r1",
        0x001D: "X25519", 0x001E: "X448",
        0x0100: "ffdhe2048", 0x0101: "ffdhe3072", 0x0102: "ffdhe4096", 0x0103: "ffdhe6144", 0x0104: "ffdhe8192",
    ]

    /// The offer for an upstream handshake on behalf of `hello`'s client: the client's cipher
    /// suites, signature schemes and groups, as far as this catalogue has them. Suites keep
    /// Loupe's order (which one wins never decides whether a handshake works); schemes and
    /// groups keep the client's (the first group gets the key share).
    public func offer(mirroring hello: ClientHello) throws(NoCommonParameters) -> UpstreamOffer {
        let suites = Set(hello.cipherSuites)
        let kept12 = tls12.filter { suites.contains($0.id) }
        let kept13 = tls13.filter { suites.contains($0.id) }
        let usable12 = hello.supportedVersions.contains(0x0303) && !kept12.isEmpty
        let usable13 = hello.supportedVersions.contains(0x0304) && !kept13.isEmpty
        guard usable12 || usable13 else {
            throw NoCommonParameters(reason: "the client's hello shares no cipher suite with Loupe (TLS 1.2 and 1.3 suites of OpenSSL's default list)")
        }
        var offer = UpstreamOffer()
        if !usable12 { offer.minimum = .tls13 } else if kept12.count < tls12.count { offer.cipherList = kept12.map(\.name).joined(separator: ":") }
        if !usable13 { offer.maximum = .tls12 } else if kept13.count < tls13.count { offer.ciphersuites = kept13.map(\.name).joined(separator: ":") }
        if !hello.signatureAlgorithms.isEmpty {
            let names = Self.names(hello.signatureAlgorithms, in: Self.signatureSchemes)
            guard !names.isEmpty else { throw NoCommonParameters(reason: "the client's hello offers no signature scheme OpenSSL can verify") }
            offer.signatureSchemes = names.joined(separator: ":")
        }
        // No known group: the client can still do DHE or RSA key exchange under TLS 1.2, so the
        // context's own groups stay (a TLS 1.3 handshake would fail on the client's leg).
        let groups = Self.names(hello.supportedGroups, in: Self.groups)
        if !groups.isEmpty { offer.groups = groups.joined(separator: ":") }
        // TLS_FALLBACK_SCSV (RFC 7507): a client retrying with an older version says so, and an
        // origin that speaks newer refuses the downgrade — it must hear it from Loupe too.
        offer.fallback = suites.contains(0x5600)
        // status_request (RFC 6066): a client that asks for the server's OCSP staple gets the
        // real server's verdict — and Loupe's own staple when the real one was good.
        offer.statusRequest = hello.extensionTypes.contains(5)
        return offer
    }

    /// `names` (OpenSSL's TLS 1.2 suite names) with each AES-128-GCM suite moved up to just
    /// before the AES-256-GCM suite of the same key exchange and authentication, as Mozilla's
    /// recommended server configurations order them: as strong for TLS, and a quarter less AES
    /// work for Loupe and the origin. The set is unchanged.
    static func aes128First(_ names: [String]) -> [String] {
        let present = Set(names)
        var moved = Set<String>()
        var out: [String] = []
        for name in names where !moved.contains(name) {
            let aes256 = "AES256-GCM-SHA384"
            let twin = String(name.dropLast(aes256.count)) + "AES128-GCM-SHA256"
            if name.hasSuffix(aes256), present.contains(twin) {
                out.append(twin)
                moved.insert(twin)
            }
            out.append(name)
        }
        return out
    }

    /// Names for the known code points, first occurrence only, GREASE and unknown values dropped.
    static func names(_ points: [UInt16], in table: [UInt16: String]) -> [String] {
        var seen = Set<UInt16>()
        return points.compactMap { point in seen.insert(point).inserted ? table[point] : nil }
    }
}

/// The client's hello and Loupe share no cipher suite (or signature scheme): no upstream leg
/// could be negotiated that the client itself would accept.
public struct NoCommonParameters: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }
}

/// What one upstream handshake offers beyond its context's defaults (nil: the context's own).
public struct UpstreamOffer: Sendable, Equatable, Hashable {
    /// OpenSSL cipher list for TLS 1.2 and older.
    public var cipherList: String?
    /// TLS 1.3 cipher suites.
    public var ciphersuites: String?
    /// Signature schemes offered (and so accepted) in signature_algorithms.
    public var signatureSchemes: String?
    /// Key-exchange groups, in the client's order.
    public var groups: String?
    /// TLS 1.3 only: the client shares no TLS 1.2 suite with Loupe.
    public var minimum: TLSVersion?
    /// TLS 1.2 at most: the client shares no TLS 1.3 suite with Loupe.
    public var maximum: TLSVersion?
    /// Send TLS_FALLBACK_SCSV: the client's hello carried it.
    public var fallback = false
    /// Ask for the server's OCSP staple: the client's hello did.
    public var statusRequest = false

    public init() {}

    /// Tells offers apart in the resumption cache: a session made under one offer (an ECDSA
    /// server, a suite) must not be resumed for a client that could not have made it.
    public var fingerprint: String {
        var hasher = Hasher()
        hasher.combine(self)
        return String(UInt(bitPattern: hasher.finalize()), radix: 36)
    }
}
