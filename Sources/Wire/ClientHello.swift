/// What a TLS ClientHello offers (the facts of stage "hello").
public struct ClientHello: Sendable, Equatable {
    public var legacyVersion: UInt16
    /// The host_name from server_name, if any.
    public var serverName: String?
    public var alpn: [String]
    /// From supported_versions (TLS 1.3 clients), else [legacyVersion].
    public var supportedVersions: [UInt16]
    public var cipherSuites: [UInt16]
    public var extensionTypes: [UInt16]
    /// From signature_algorithms; empty when the extension is absent.
    public var signatureAlgorithms: [UInt16] = []
    /// From supported_groups; empty when the extension is absent.
    public var supportedGroups: [UInt16] = []

    public init(legacyVersion: UInt16 = 0x0303, serverName: String? = nil, alpn: [String] = [], supportedVersions: [UInt16], cipherSuites: [UInt16],
                extensionTypes: [UInt16] = [], signatureAlgorithms: [UInt16] = [], supportedGroups: [UInt16] = []) {
        self.legacyVersion = legacyVersion
        self.serverName = serverName
        self.alpn = alpn
        self.supportedVersions = supportedVersions
        self.cipherSuites = cipherSuites
        self.extensionTypes = extensionTypes
        self.signatureAlgorithms = signatureAlgorithms
        self.supportedGroups = supportedGroups
    }
}

extension ClientHello {
    /// The newest TLS/SSL version offered, GREASE and unknown values ignored (0x0304 = TLS 1.3).
    public var newestVersion: UInt16? {
        supportedVersions.filter { $0 >= 0x0300 && $0 <= 0x0304 }.max()
    }

    /// Whether this client can accept a server certificate with a P-256 ECDSA key when the
    /// handshake settles on `version` (0x0304 = TLS 1.3). A masquerade leaf the client cannot use
    /// would fail a handshake that works directly; clients answering `false` get another key.
    public func acceptsP256ECDSA(at version: UInt16) -> Bool { acceptsECDSA(curve: Self.p256, at: version) }

    /// The TLS groups (supported_groups code points) of the curves Loupe's ECDSA leaves use.
    public static let p256: UInt16 = 0x0017, p384: UInt16 = 0x0018, p521: UInt16 = 0x0019

    /// The same for an ECDSA key on `curve` (`p256`, `p384`, `p521`).
    public func acceptsECDSA(curve: UInt16, at version: UInt16) -> Bool {
        if speaksTLS13(at: version) {
            // RFC 8446 4.2.3: each ECDSA scheme names the one curve it signs with.
            guard let scheme = Self.tls13ECDSAScheme[curve] else { return false }
            return signatureAlgorithms.contains(scheme)
        }
        // TLS 1.2 (RFC 8422): an ECDHE_ECDSA suite, an ECDSA scheme with SHA-2 (without the
        // extension the default would be SHA-1, which OpenSSL 3 refuses), and the key's curve
        // among the curves if the client names any.
        return cipherSuites.contains(where: Self.ecdheECDSASuites.contains)
            && signatureAlgorithms.contains(where: Self.ecdsaSHA2Schemes.contains)
            && (supportedGroups.isEmpty || supportedGroups.contains(curve))
    }

    /// Whether this client plainly cannot take an RSA server key at `version`: TLS 1.3 without
    /// an rsa_pss_rsae scheme; TLS 1.2 offering no suite but ECDHE_ECDSA ones. (Anything less
    /// clear keeps RSA as the key for clients that cannot take P-256.)
    public func refusesRSA(at version: UInt16) -> Bool {
        if speaksTLS13(at: version) { return !signatureAlgorithms.contains { (0x0804...0x0806).contains($0) } }
        return cipherSuites.allSatisfy { Self.ecdheECDSASuites.contains($0) || $0 >> 8 == 0x13 || Self.signallingSuites.contains($0) || Self.isGREASE($0) }
    }

    private func speaksTLS13(at version: UInt16) -> Bool { version >= 0x0304 && supportedVersions.contains(0x0304) }

    static let tls13ECDSAScheme: [UInt16: UInt16] = [p256: 0x0403, p384: 0x0503, p521: 0x0603]
    /// TLS_EMPTY_RENEGOTIATION_INFO_SCSV and TLS_FALLBACK_SCSV: not ways to authenticate.
    static let signallingSuites: Set<UInt16> = [0x00FF, 0x5600]
    static func isGREASE(_ value: UInt16) -> Bool { value & 0x0F0F == 0x0A0A && value >> 8 == value & 0xFF }

    /// The TLS 1.2 ECDHE_ECDSA suites OpenSSL can serve (AES-CBC/GCM/CCM, ChaCha20-Poly1305).
    static let ecdheECDSASuites: Set<UInt16> = [0xC009, 0xC00A, 0xC023, 0xC024, 0xC02B, 0xC02C, 0xCCA9, 0xC0AC, 0xC0AD]
    /// ecdsa_secp256r1_sha256, ecdsa_secp384r1_sha384, ecdsa_secp521r1_sha512 (any curve in 1.2).
    static let ecdsaSHA2Schemes: Set<UInt16> = [0x0403, 0x0503, 0x0603]
}

/// Collects a ClientHello from the first bytes of a connection, however TCP segments and TLS
/// records split it (post-quantum key shares push hellos past one record). Sans-IO: feed
/// bytes as they arrive; it answers "need more", the hello, or why it is not one.
public struct ClientHelloReader: Sendable {
    public enum Result: Sendable, Equatable {
        case needMore
        case hello(ClientHello)
        /// Not TLS at all (e.g. plain HTTP on :443): policy decides what to do with it.
        case notTLS
        case malformed(WireError)
    }

    /// A hello bigger than this is refused (real ones are under 2 KiB; hybrid PQ ~1.8 KiB).
    public static let maximumHelloSize = 64 * 1024

    private var buffered: [UInt8] = []
    private var handshake: [UInt8] = []
    public private(set) var result: Result = .needMore

    public init() {}

    /// Every byte received so far (to replay upstream after a splice decision).
    public var bytes: [UInt8] { buffered }

    // Concrete byte types rather than `some Sequence`: a generic here runs unspecialised from
    // the proxy's module, once per new connection's first reads.
    public mutating func feed(_ data: [UInt8]) -> Result {
        feed(data[...])
    }

    public mutating func feed(_ data: ArraySlice<UInt8>) -> Result {
        guard result == .needMore else { return result }
        buffered.append(contentsOf: data)
        result = advance()
        return result
    }

    private mutating func advance() -> Result {
        // Records are re-walked from the start: hellos are small and this keeps no partial state.
        handshake.removeAll(keepingCapacity: true)
        var offset = 0
        while true {
            guard buffered.count - offset >= 5 else {
                if offset == 0, let first = buffered.first, first != 0x16 { return .notTLS }
                return .needMore
            }
            let type = buffered[offset]
            let major = buffered[offset + 1]
            let length = Int(buffered[offset + 3]) << 8 | Int(buffered[offset + 4])
            guard type == 0x16, major == 3 else { return offset == 0 ? .notTLS : .malformed(.malformed("record type \(type) inside the ClientHello")) }
            guard length > 0, length <= 16_384 + 256 else { return .malformed(.malformed("TLS record length \(length)")) }
            guard buffered.count - offset - 5 >= length else { return .needMore }
            handshake.append(contentsOf: buffered[(offset + 5)..<(offset + 5 + length)])
            offset += 5 + length
            if handshake.count >= 4 {
                guard handshake[0] == 1 else { return .malformed(.malformed("first handshake message is type \(handshake[0]), not ClientHello")) }
                let helloLength = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
                guard helloLength <= Self.maximumHelloSize else { return .malformed(.malformed("ClientHello of \(helloLength) bytes")) }
                if handshake.count >= 4 + helloLength {
                    do {
                        return .hello(try Self.parseHello(handshake[4..<(4 + helloLength)]))
                    } catch {
                        return .malformed(error)
                    }
                }
            }
        }
    }

    /// Parses a ClientHello body (after the 4-byte handshake header).
    public static func parseHello(_ body: ArraySlice<UInt8>) throws(WireError) -> ClientHello {
        var r = ByteReader(body)
        let version = try r.u16("legacy_version")
        try r.skip(32, "random")
        try r.skip(Int(try r.u8("session_id length")), "session_id")
        let suites = try codePoints(&r, length: Int(try r.u16("cipher_suites length")), "cipher_suites")
        try r.skip(Int(try r.u8("compression length")), "compression_methods")
        var hello = ClientHello(legacyVersion: version, serverName: nil, alpn: [], supportedVersions: [version],
                                cipherSuites: suites, extensionTypes: [])
        if r.isAtEnd { return hello }  // no extensions (SSL 3.0-era hellos)
        var extensions = try r.sub(Int(try r.u16("extensions length")), "extensions")
        guard r.isAtEnd else { throw .malformed("bytes after the extensions") }
        var seen = Set<UInt16>()
        while !extensions.isAtEnd {
            let type = try extensions.u16("extension type")
            var data = try extensions.sub(Int(try extensions.u16("extension length")), "extension \(type)")
            guard seen.insert(type).inserted else { throw .malformed("extension \(type) appears twice") }
            hello.extensionTypes.append(type)
            switch type {
            case 0: hello.serverName = try serverName(&data)
            case 16: hello.alpn = try alpn(&data)
            case 43: hello.supportedVersions = try codePoints(&data, length: Int(try data.u8("supported_versions length")), "supported_versions")
            case 10: hello.supportedGroups = try codePoints(&data, length: Int(try data.u16("supported_groups length")), "supported_groups")
            case 13: hello.signatureAlgorithms = try codePoints(&data, length: Int(try data.u16("signature_algorithms length")), "signature_algorithms")
            default: continue
            }
            guard data.isAtEnd else { throw .malformed("extension \(type) has trailing bytes") }
        }
        return hello
    }

    static func serverName(_ r: inout ByteReader) throws(WireError) -> String? {
        var list = try r.sub(Int(try r.u16("server_name list length")), "server_name list")
        var name: String?
        while !list.isAtEnd {
            let type = try list.u8("server_name type")
            let value = try list.take(Int(try list.u16("server_name length")), "server_name")
            guard type == 0 else { continue }
            guard name == nil else { throw .malformed("two host_name entries in server_name") }
            // RFC 6066: ASCII host name, no trailing dot, no NUL or other control bytes.
            guard !value.isEmpty, value.count <= 255, value.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                throw .malformed("server_name is not an ASCII host name")
            }
            name = String(decoding: value, as: UTF8.self)
        }
        return name
    }

    static func alpn(_ r: inout ByteReader) throws(WireError) -> [String] {
        var list = try r.sub(Int(try r.u16("ALPN list length")), "ALPN list")
        var protocols: [String] = []
        while !list.isAtEnd {
            let value = try list.take(Int(try list.u8("ALPN protocol length")), "ALPN protocol")
            guard !value.isEmpty else { throw .malformed("empty ALPN protocol name") }
            protocols.append(String(decoding: value, as: UTF8.self))
        }
        guard !protocols.isEmpty else { throw .malformed("empty ALPN list") }
        return protocols
    }

    /// A non-empty list of 16-bit code points, `length` bytes (cipher suites, versions, groups,
    /// signature schemes).
    static func codePoints(_ r: inout ByteReader, length: Int, _ what: String) throws(WireError) -> [UInt16] {
        guard length % 2 == 0, length > 0 else { throw .malformed("\(what) length \(length)") }
        var list = try r.sub(length, what)
        var values: [UInt16] = []
        values.reserveCapacity(length / 2)
        while !list.isAtEnd { values.append(try list.u16()) }
        return values
    }
}
