import COpenSSL

/// A key with its certificate and chain, as read from a PKCS#12 file.
public struct PKCS12Bundle: Sendable {
    public var key: PrivateKey
    public var certificate: Certificate
    public var chain: [Certificate]

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public static func parse(_ bytes: [UInt8], password: String) throws -> PKCS12Bundle {
        ERR_clear_error()
        let p12: OpaquePointer? = bytes.withUnsafeBufferPointer { buffer in
            var p: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_PKCS12(nil, &p, buffer.count)
        }
        guard let p12 else { throw OpenSSLError.drain("reading the PKCS#12 file (is it PKCS#12?)") }
        defer { PKCS12_free(p12) }
        var pkey: OpaquePointer?
        var x509: OpaquePointer?
        var ca: OpaquePointer?
        guard PKCS12_parse(p12, password, &pkey, &x509, &ca) == 1 else {
            throw OpenSSLError.drain("opening the PKCS#12 file (wrong password?)")
        }
        defer { if let ca { loupe_sk_X509_pop_free(ca) } }
        guard let pkey, let x509 else {
            if let pkey { EVP_PKEY_free(pkey) }
            if let x509 { X509_free(x509) }
            throw Failure(description: "the PKCS#12 file holds no key and certificate pair")
        }
        var chain: [Certificate] = []
        if let ca {
            for i in 0..<loupe_sk_X509_num(ca) {
                if let c = loupe_sk_X509_value(ca, i), X509_up_ref(c) == 1 { chain.append(Certificate(taking: c)) }
            }
        }
        return PKCS12Bundle(key: PrivateKey(taking: pkey), certificate: Certificate(taking: x509), chain: chain)
    }
}
