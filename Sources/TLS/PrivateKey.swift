import COpenSSL

/// The key algorithms Loupe creates.
public enum KeyAlgorithm: String, Sendable, CaseIterable, Codable {
    case ecP256 = "ec-p256"
    case ecP384 = "ec-p384"
    case rsa3072 = "rsa-3072"
}

/// An OpenSSL private key (EVP_PKEY). Immutable after creation; OpenSSL allows concurrent
/// read-only use (signing, encoding) of one EVP_PKEY, hence `@unchecked Sendable`.
public final class PrivateKey: @unchecked Sendable {
    let pkey: OpaquePointer

    init(taking pkey: OpaquePointer) { self.pkey = pkey }
    deinit { EVP_PKEY_free(pkey) }

    public static func generate(_ algorithm: KeyAlgorithm) throws(OpenSSLError) -> PrivateKey {
        switch algorithm {
        case .ecP256: try generateEC(curve: "P-256")
        case .ecP384: try generateEC(curve: "P-384")
        case .rsa3072: try generateRSA(bits: 3072)
        }
    }

    /// An EC key on a named curve: a root's (P-256, P-384), or a masquerade leaf's — P-521 too,
    /// for clients that verify ECDSA on it alone (never a root's, so not a `KeyAlgorithm`).
    public static func generateEC(curve: String) throws(OpenSSLError) -> PrivateKey {
        ERR_clear_error()
        guard let made = loupe_EVP_EC_gen(curve) else { throw OpenSSLError.drain("generating an EC \(curve) key") }
        return PrivateKey(taking: made)
    }

    /// An RSA key of `bits` (the masquerade leaf key for clients that cannot take ECDSA).
    public static func generateRSA(bits: UInt32) throws(OpenSSLError) -> PrivateKey {
        ERR_clear_error()
        guard let made = loupe_EVP_RSA_gen(bits) else { throw OpenSSLError.drain("generating an RSA-\(bits) key") }
        return PrivateKey(taking: made)
    }

    /// A P-256 key held as a legacy EC_KEY: OpenSSL 3.0 re-encodes provider-native keys on every
    /// X509_set_pubkey, which would dominate leaf minting (shared/FACTS.md).
    public static func generateLegacyP256() throws(OpenSSLError) -> PrivateKey {
        ERR_clear_error()
        guard let ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1) else { throw OpenSSLError.drain("EC_KEY_new_by_curve_name") }
        guard EC_KEY_generate_key(ec) == 1, let pkey = loupe_EVP_PKEY_from_EC_KEY(ec) else {
            EC_KEY_free(ec)
            throw OpenSSLError.drain("generating the leaf key")
        }
        return PrivateKey(taking: pkey)
    }

    /// The same EC key held as a legacy EC_KEY, which OpenSSL 3.0 signs with markedly faster
    /// than a provider-native key (no per-call provider fetches); other keys are returned as is.
    public func legacyEC() -> PrivateKey {
        guard EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC, let ec = EVP_PKEY_get1_EC_KEY(pkey) else { return self }
        guard let legacy = loupe_EVP_PKEY_from_EC_KEY(ec) else {
            EC_KEY_free(ec)
            return self
        }
        return PrivateKey(taking: legacy)
    }

    /// Parses a DER private key (PKCS#8 or traditional).
    public convenience init(der: [UInt8]) throws(OpenSSLError) {
        ERR_clear_error()
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var p: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_AutoPrivateKey(nil, &p, buffer.count)
        }
        guard let parsed else { throw OpenSSLError.drain("parsing a DER private key") }
        self.init(taking: parsed)
    }

    /// Parses a PEM private key (unencrypted).
    public convenience init(pem: String) throws(OpenSSLError) {
        let parsed: OpaquePointer? = try withMemoryBIO(Array(pem.utf8)) { bio in
            ERR_clear_error()
            return PEM_read_bio_PrivateKey(bio, nil, nil, nil)
        }
        guard let parsed else { throw OpenSSLError.drain("parsing a PEM private key") }
        self.init(taking: parsed)
    }

    /// PKCS#8 DER of the private key. Handle with care: this is the secret.
    public func pkcs8DER() throws(OpenSSLError) -> [UInt8] {
        try writeMemoryBIO("encoding a private key") { bio in i2d_PKCS8PrivateKey_bio(bio, pkey, nil, nil, 0, nil, nil) == 1 }
    }

    public func pkcs8PEM() throws(OpenSSLError) -> String {
        String(decoding: try writeMemoryBIO("encoding a private key") { bio in
            PEM_write_bio_PKCS8PrivateKey(bio, pkey, nil, nil, 0, nil, nil) == 1
        }, as: UTF8.self)
    }

    /// SubjectPublicKeyInfo DER: what identifies the key pair (matching certificates to keys).
    public func publicKeyDER() throws(OpenSSLError) -> [UInt8] {
        ERR_clear_error()
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_PUBKEY(pkey, &out)
        guard length > 0, let out else { throw OpenSSLError.drain("encoding a public key") }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    public var isRSA: Bool { EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA }

    /// "EC P-256", "RSA 3072", ...
    public var typeDescription: String { describeKey(pkey) }

    /// The digest to sign with: SHA-384 for P-384 (matching its strength), SHA-256 otherwise.
    var signingDigest: OpaquePointer? {
        EVP_PKEY_get_bits(pkey) >= 384 && EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC ? EVP_sha384() : EVP_sha256()
    }
}

func describeKey(_ pkey: OpaquePointer) -> String {
    let bits = EVP_PKEY_get_bits(pkey)
    switch EVP_PKEY_get_base_id(pkey) {
    case EVP_PKEY_EC: return "EC P-\(bits)"
    case EVP_PKEY_RSA: return "RSA \(bits)"
    case EVP_PKEY_ED25519: return "Ed25519"
    default: return "\(String(cString: OBJ_nid2sn(EVP_PKEY_get_base_id(pkey)))) \(bits)"
    }
}
