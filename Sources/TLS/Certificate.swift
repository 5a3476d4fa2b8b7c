import COpenSSL
import Foundation
@_exported import Wire

/// A subject alternative name as Loupe mints and mirrors them.
public enum SubjectAltName: Sendable, Hashable, CustomStringConvertible {
    case dns(String)
    /// 4 or 16 bytes.
    case ip([UInt8])
    case email(String)
    case uri(String)

    /// "1.2.3.4" / "2001:db8::1" → `.ip`, anything else → `.dns` (lowercased, trailing dot dropped).
    public static func parse(_ text: String) -> SubjectAltName {
        if let bytes = IPAddress.parse(text) { return .ip(bytes) }
        var name = text.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        return .dns(name)
    }

    public var description: String {
        switch self {
        case .dns(let n): "DNS:\(n)"
        case .ip(let b): "IP:\(IPAddress.format(b))"
        case .email(let e): "email:\(e)"
        case .uri(let u): "URI:\(u)"
        }
    }
}

/// An X.509 certificate. Immutable once built or parsed; OpenSSL allows concurrent reads of
/// an X509, hence `@unchecked Sendable`.
public final class Certificate: @unchecked Sendable {
    let x509: OpaquePointer

    init(taking x509: OpaquePointer) { self.x509 = x509 }
    deinit { X509_free(x509) }

    public convenience init(der: [UInt8]) throws(OpenSSLError) {
        ERR_clear_error()
        let parsed: OpaquePointer? = der.withUnsafeBufferPointer { buffer in
            var p: UnsafePointer<UInt8>? = buffer.baseAddress
            return d2i_X509(nil, &p, buffer.count)
        }
        guard let parsed else { throw OpenSSLError.drain("parsing a DER certificate") }
        self.init(taking: parsed)
    }

    /// Every certificate in a PEM text, in order (a chain file). Throws when there is none.
    public static func parsePEM(_ pem: String) throws(OpenSSLError) -> [Certificate] {
        try withMemoryBIO(Array(pem.utf8)) { (bio) throws(OpenSSLError) -> [Certificate] in
            var certs: [Certificate] = []
            ERR_clear_error()
            while let x = PEM_read_bio_X509(bio, nil, nil, nil) { certs.append(Certificate(taking: x)) }
            // Reading stops with "no start line" at the end; that one is expected.
            let endOfInput = ERR_GET_REASON(ERR_peek_last_error()) == PEM_R_NO_START_LINE
            if certs.isEmpty || !endOfInput { throw OpenSSLError.drain("parsing PEM certificates") }
            ERR_clear_error()
            return certs
        }
    }

    /// PEM or DER, whichever `bytes` holds (the first certificate of a PEM chain).
    public static func parse(_ bytes: [UInt8]) throws(OpenSSLError) -> Certificate {
        if bytes.starts(with: Array("-----BEGIN".utf8)) || String(decoding: bytes.prefix(4096), as: UTF8.self).contains("-----BEGIN CERTIFICATE") {
            return try parsePEM(String(decoding: bytes, as: UTF8.self))[0]
        }
        return try Certificate(der: bytes)
    }

    public var der: [UInt8] {
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_X509(x509, &out)
        guard length > 0, let out else { return [] }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    public var pem: String {
        let base64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN CERTIFICATE-----\n\(base64)\n-----END CERTIFICATE-----\n"
    }

    /// SHA-256 over the DER, lowercase hex: the identity fleets compare.
    public var sha256Fingerprint: String { Crypto.sha256Hex(der) }

    /// RFC 2253 form, e.g. "CN=Loupe Root,O=Loupe".
    public var subject: String { formatName(X509_get_subject_name(x509)) }
    public var issuer: String { formatName(X509_get_issuer_name(x509)) }

    /// The subject's first commonName, if any.
    public var commonName: String? {
        let name = X509_get_subject_name(x509)
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        return asn1String(data)
    }

    public var serialHex: String {
        guard let bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x509), nil) else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { CRYPTO_free(hex, #fileID, #line) }
        return String(cString: hex).lowercased()
    }

    public var notBefore: Date { asn1Date(X509_get0_notBefore(x509)) }
    public var notAfter: Date { asn1Date(X509_get0_notAfter(x509)) }

    public var keyDescription: String {
        guard let key = X509_get0_pubkey(x509) else { return "unknown" }
        return describeKey(key)
    }

    /// SubjectPublicKeyInfo DER, comparable with `PrivateKey.publicKeyDER()`.
    public var publicKeyDER: [UInt8] {
        var out: UnsafeMutablePointer<UInt8>?
        guard let key = X509_get0_pubkey(x509) else { return [] }
        let length = i2d_PUBKEY(key, &out)
        guard length > 0, let out else { return [] }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    /// Whether a keyUsage extension is present and leaves out digitalSignature (read per
    /// mirrored connection, so no strings are made).
    public var keyUsageForbidsSignatures: Bool {
        X509_get_ext_by_NID(x509, NID_key_usage, -1) >= 0 && X509_get_key_usage(x509) & UInt32(KU_DIGITAL_SIGNATURE) == 0
    }

    /// The TLS Feature extension (RFC 7633) as OpenSSL's config syntax — "5" is status_request,
    /// OCSP must-staple — nil when the certificate has none.
    public var tlsFeature: String? {
        var values = [Int](repeating: 0, count: 16)
        let count = values.withUnsafeMutableBufferPointer { loupe_X509_tls_features(x509, $0.baseAddress, Int32($0.count)) }
        guard count >= 0 else { return nil }
        return values.prefix(Int(count)).map(String.init).joined(separator: ",")
    }

    /// The keyUsage extension as OpenSSL's config syntax ("critical,keyEncipherment"), nil
    /// when the certificate has none.
    public var keyUsage: String? {
        let index = X509_get_ext_by_NID(x509, NID_key_usage, -1)
        guard index >= 0 else { return nil }
        let bits = X509_get_key_usage(x509)
        let names: [(UInt32, String)] = [(0x80, "digitalSignature"), (0x40, "nonRepudiation"), (0x20, "keyEncipherment"), (0x10, "dataEncipherment"),
                                         (0x08, "keyAgreement"), (0x04, "keyCertSign"), (0x02, "cRLSign"), (0x01, "encipherOnly"), (0x8000, "decipherOnly")]
        let critical = X509_EXTENSION_get_critical(X509_get_ext(x509, index)) == 1
        return ((critical ? ["critical"] : []) + names.filter { bits & $0.0 != 0 }.map(\.1)).joined(separator: ",")
    }

    /// Whether this certificate names `host` (a DNS name, or an IP address), by the rules its
    /// verification applied: SAN first, the subject CN only without DNS SANs, wildcards.
    public func covers(host: String) -> Bool {
        if let address = IPAddress.parse(host) { return X509_check_ip_asc(x509, host, 0) == 1 || namesOnlyInCommonName(address: address) }
        return X509_check_host(x509, host, host.utf8.count, 0, nil) == 1
    }

    /// Whether the subject's CN is the only place naming `address`: no DNS or IP SANs, and a
    /// CN that reads as that address. OpenSSL matches an address against IP SANs alone; curl
    /// falls back to the CN here, as OpenSSL itself does for DNS names.
    public func namesOnlyInCommonName(address: [UInt8]) -> Bool {
        let hasNameSANs = subjectAltNames.contains { name in
            switch name {
            case .dns, .ip: true
            case .email, .uri: false
            }
        }
        guard !hasNameSANs else { return false }
        let name = X509_get_subject_name(x509)
        var index: Int32 = -1
        while true {
            index = X509_NAME_get_index_by_NID(name, NID_commonName, index)
            guard index >= 0 else { return false }
            if let entry = X509_NAME_get_entry(name, index), let data = X509_NAME_ENTRY_get_data(entry),
               IPAddress.parse(asn1String(data)) == address { return true }
        }
    }

    public var subjectAltNames: [SubjectAltName] {
        guard let raw = X509_get_ext_d2i(x509, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { loupe_GENERAL_NAMES_free(names) }
        var out: [SubjectAltName] = []
        for i in 0..<loupe_sk_GENERAL_NAME_num(names) {
            guard let gen = loupe_sk_GENERAL_NAME_value(names, i) else { continue }
            var type: Int32 = 0
            guard let value = GENERAL_NAME_get0_value(gen, &type) else { continue }
            let string = UnsafePointer(value.assumingMemoryBound(to: ASN1_STRING.self))
            switch type {
            case GEN_DNS: out.append(.dns(asn1String(string)))
            case GEN_IPADD: out.append(.ip(asn1Bytes(string)))
            case GEN_EMAIL: out.append(.email(asn1String(string)))
            case GEN_URI: out.append(.uri(asn1String(string)))
            default: continue
            }
        }
        return out
    }

    public var isCA: Bool { X509_check_ca(x509) >= 1 }

    /// Whether `issuer`'s key signed this certificate (signature only; no path or time checks).
    public func isSigned(by issuer: Certificate) -> Bool {
        guard let key = X509_get0_pubkey(issuer.x509) else { return false }
        defer { ERR_clear_error() }
        return X509_verify(x509, key) == 1
    }
}

func formatName(_ name: OpaquePointer?) -> String {
    guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
    defer { BIO_free(bio) }
    X509_NAME_print_ex(bio, name, 0, loupe_XN_FLAG_RFC2253() & ~UInt(ASN1_STRFLGS_ESC_MSB))
    return String(decoding: readMemoryBIO(bio), as: UTF8.self)
}

func asn1Bytes(_ string: UnsafePointer<ASN1_STRING>) -> [UInt8] {
    let length = Int(ASN1_STRING_length(string))
    guard length > 0, let data = ASN1_STRING_get0_data(string) else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: length))
}

func asn1String(_ string: UnsafePointer<ASN1_STRING>) -> String { String(decoding: asn1Bytes(string), as: UTF8.self) }

func asn1Date(_ time: UnsafePointer<ASN1_TIME>?) -> Date {
    var tm = tm()
    guard let time, ASN1_TIME_to_tm(time, &tm) == 1 else { return .distantPast }
    return Date(timeIntervalSince1970: TimeInterval(timegm(&tm)))
}
