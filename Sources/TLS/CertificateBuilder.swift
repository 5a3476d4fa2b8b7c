import COpenSSL
import Foundation

/// What a new certificate's subject is.
public enum SubjectName: Sendable {
    /// Attribute/value pairs in order, e.g. [("O", "Loupe"), ("CN", "host")].
    case attributes([(String, String)])
    /// The subject of an existing certificate, byte for byte (mirroring an upstream).
    case copied(from: Certificate)
}

/// An X.509v3 extension built once and added to many certificates (X509_add_ext copies it).
public final class CertificateExtension: @unchecked Sendable {
    let ext: OpaquePointer
    init(taking ext: OpaquePointer) { self.ext = ext }
    deinit { X509_EXTENSION_free(ext) }

    /// An extension from OpenSSL's configuration syntax, e.g. ("basicConstraints",
    /// "critical,CA:TRUE,pathlen:0"). Only for trusted, fixed vocabulary — never for names
    /// that come off the network (a comma would inject entries); use `subjectAltNames` there.
    /// `issuer` feeds authorityKeyIdentifier; `subjectKey` feeds subjectKeyIdentifier.
    public static func make(_ name: String, _ value: String, issuer: Certificate? = nil, subjectKey: PrivateKey? = nil) throws(OpenSSLError) -> CertificateExtension {
        ERR_clear_error()
        // The v3 context wants certificates: a scratch one carries the subject's public key.
        guard let scratch = X509_new() else { throw OpenSSLError.drain("X509_new") }
        defer { X509_free(scratch) }
        if let subjectKey { X509_set_pubkey(scratch, subjectKey.pkey) }
        var ctx = X509V3_CTX()
        X509V3_set_ctx(&ctx, issuer?.x509 ?? scratch, scratch, nil, nil, 0)
        let nid = OBJ_txt2nid(name)
        guard nid != NID_undef, let ext = X509V3_EXT_nconf_nid(nil, &ctx, nid, value) else {
            throw OpenSSLError.drain("building extension \(name)=\(value)")
        }
        return CertificateExtension(taking: ext)
    }

    /// subjectAltName built field by field, safe for any bytes a peer sent.
    public static func subjectAltNames(_ names: [SubjectAltName], critical: Bool = false) throws(OpenSSLError) -> CertificateExtension {
        ERR_clear_error()
        guard let stack = loupe_sk_GENERAL_NAME_new() else { throw OpenSSLError.drain("sk_GENERAL_NAME_new") }
        defer { loupe_GENERAL_NAMES_free(stack) }
        for name in names {
            guard let gen = GENERAL_NAME_new() else { throw OpenSSLError.drain("GENERAL_NAME_new") }
            let (type, bytes): (Int32, [UInt8]) = switch name {
            case .dns(let n): (GEN_DNS, Array(n.utf8))
            case .ip(let b): (GEN_IPADD, b)
            case .email(let e): (GEN_EMAIL, Array(e.utf8))
            case .uri(let u): (GEN_URI, Array(u.utf8))
            }
            let string = type == GEN_IPADD ? ASN1_OCTET_STRING_new() : ASN1_IA5STRING_new()
            guard let string, ASN1_STRING_set(string, bytes, Int32(bytes.count)) == 1 else {
                GENERAL_NAME_free(gen)
                throw OpenSSLError.drain("encoding \(name)")
            }
            GENERAL_NAME_set0_value(gen, type, UnsafeMutableRawPointer(string))
            guard loupe_sk_GENERAL_NAME_push(stack, gen) > 0 else {
                GENERAL_NAME_free(gen)
                throw OpenSSLError.drain("sk_GENERAL_NAME_push")
            }
        }
        guard let ext = X509V3_EXT_i2d(NID_subject_alt_name, critical ? 1 : 0, UnsafeMutableRawPointer(stack)) else {
            throw OpenSSLError.drain("encoding subjectAltName")
        }
        return CertificateExtension(taking: ext)
    }
}

/// Everything a certificate needs besides its issuer.
public struct CertificateSpec: Sendable {
    public var subject: SubjectName
    /// Big-endian, positive (top bit clear).
    public var serial: [UInt8]
    public var notBefore: Date
    public var notAfter: Date
    public var publicKey: PrivateKey
    public var extensions: [CertificateExtension]

    public init(subject: SubjectName, serial: [UInt8], notBefore: Date, notAfter: Date, publicKey: PrivateKey, extensions: [CertificateExtension]) {
        self.subject = subject
        self.serial = serial
        self.notBefore = notBefore
        self.notAfter = notAfter
        self.publicKey = publicKey
        self.extensions = extensions
    }

    /// A random positive serial of `bits` bits (RFC 5280 allows up to 20 octets).
    public static func randomSerial(bits: Int = 128) throws(OpenSSLError) -> [UInt8] {
        var serial = try Crypto.randomBytes(bits / 8)
        serial[0] &= 0x7F
        serial[0] |= 0x40  // keep the full length: no leading zero octet, never zero
        return serial
    }
}

public enum CertificateBuilder {
    /// Builds and signs. `issuer == nil` makes a self-signed certificate (issuer = subject).
    public static func sign(_ spec: CertificateSpec, issuer: Certificate?, issuerKey: PrivateKey) throws(OpenSSLError) -> Certificate {
        ERR_clear_error()
        guard let x = X509_new() else { throw OpenSSLError.drain("X509_new") }
        let cert = Certificate(taking: x)
        try check("X509_set_version", X509_set_version(x, 2) == 1)

        guard let bn = BN_bin2bn(spec.serial, Int32(spec.serial.count), nil) else { throw OpenSSLError.drain("BN_bin2bn") }
        defer { BN_free(bn) }
        guard let serial = BN_to_ASN1_INTEGER(bn, nil) else { throw OpenSSLError.drain("BN_to_ASN1_INTEGER") }
        defer { ASN1_INTEGER_free(serial) }
        try check("X509_set_serialNumber", X509_set_serialNumber(x, serial) == 1)

        switch spec.subject {
        case .copied(let source):
            try check("X509_set_subject_name", X509_set_subject_name(x, X509_get_subject_name(source.x509)) == 1)
        case .attributes(let pairs):
            guard let name = X509_NAME_new() else { throw OpenSSLError.drain("X509_NAME_new") }
            defer { X509_NAME_free(name) }
            for (field, value) in pairs {
                try check("subject \(field)=\(value)",
                          X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, value, -1, -1, 0) == 1)
            }
            try check("X509_set_subject_name", X509_set_subject_name(x, name) == 1)
        }
        let issuerName = issuer.map { X509_get_subject_name($0.x509) } ?? X509_get_subject_name(x)
        try check("X509_set_issuer_name", X509_set_issuer_name(x, issuerName) == 1)

        try check("notBefore", ASN1_TIME_set(X509_getm_notBefore(x), time_t(spec.notBefore.timeIntervalSince1970)) != nil)
        try check("notAfter", ASN1_TIME_set(X509_getm_notAfter(x), time_t(spec.notAfter.timeIntervalSince1970)) != nil)
        try check("X509_set_pubkey", X509_set_pubkey(x, spec.publicKey.pkey) == 1)
        for ext in spec.extensions {
            try check("X509_add_ext", X509_add_ext(x, ext.ext, -1) == 1)
        }
        try check("signing the certificate", X509_sign(x, issuerKey.pkey, issuerKey.signingDigest) > 0)
        return cert
    }
}
