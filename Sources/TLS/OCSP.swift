import COpenSSL
import Foundation

/// What a server's stapled OCSP response says about its certificate.
public enum StapledStatus: Sendable, Equatable, CustomStringConvertible {
    case good
    case revoked(reason: String)
    /// Present but not usable: not OCSP, not about this certificate, not signed by a
    /// responder the trust store accepts, or out of date. Treated as no staple.
    case unusable(String)

    public var description: String {
        switch self {
        case .good: "good"
        case .revoked(let reason): "revoked (\(reason))"
        case .unusable(let why): "unusable: \(why)"
        }
    }
}

/// OCSP responses: reading a server's staple, and making the one Loupe staples for its leaf.
public enum OCSP {
    /// A response by `issuer` that `certificate` is good (or revoked), for the given period.
    public static func response(for certificate: Certificate, issuer: Certificate, issuerKey: PrivateKey, revoked: Bool = false,
                                thisUpdate: Date, nextUpdate: Date) throws(OpenSSLError) -> [UInt8] {
        ERR_clear_error()
        guard let id = OCSP_cert_to_id(EVP_sha1(), certificate.x509, issuer.x509) else { throw OpenSSLError.drain("OCSP_cert_to_id") }
        defer { OCSP_CERTID_free(id) }
        guard let basic = OCSP_BASICRESP_new() else { throw OpenSSLError.drain("OCSP_BASICRESP_new") }
        defer { OCSP_BASICRESP_free(basic) }
        let start = ASN1_TIME_set(nil, time_t(thisUpdate.timeIntervalSince1970)), end = ASN1_TIME_set(nil, time_t(nextUpdate.timeIntervalSince1970))
        defer { ASN1_TIME_free(start); ASN1_TIME_free(end) }
        let status = revoked ? V_OCSP_CERTSTATUS_REVOKED : V_OCSP_CERTSTATUS_GOOD
        try check("OCSP_basic_add1_status", OCSP_basic_add1_status(basic, id, status, revoked ? OCSP_REVOKED_STATUS_KEYCOMPROMISE : 0,
                                                                   revoked ? start : nil, start, end) != nil)
        try check("OCSP_basic_sign", OCSP_basic_sign(basic, issuer.x509, issuerKey.pkey, EVP_sha256(), nil, UInt(OCSP_NOCERTS)) == 1)
        guard let response = OCSP_response_create(OCSP_RESPONSE_STATUS_SUCCESSFUL, basic) else { throw OpenSSLError.drain("OCSP_response_create") }
        defer { OCSP_RESPONSE_free(response) }
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_OCSP_RESPONSE(response, &out)
        guard length > 0, let out else { throw OpenSSLError.drain("i2d_OCSP_RESPONSE") }
        defer { CRYPTO_free(out, #fileID, #line) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    /// How far past its period a response still counts (clocks differ).
    static let leewaySeconds = 300

    /// What `der` says about `chain[0]`, issued by `chain[1]`: its signature checked against
    /// `store` (an issuer-signed or delegated responder), its period against now (5 min leeway).
    /// `goodUntil`: a good response's nextUpdate in seconds since 1970 (nil without one), how
    /// long the verdict holds.
    static func evaluate(_ der: UnsafeBufferPointer<UInt8>, chain: OpaquePointer, store: OpaquePointer) -> (status: StapledStatus, goodUntil: Int?) {
        ERR_clear_error()
        defer { ERR_clear_error() }
        func unusable(_ why: String) -> (status: StapledStatus, goodUntil: Int?) { (.unusable(why), nil) }
        var cursor: UnsafePointer<UInt8>? = der.baseAddress
        guard let response = d2i_OCSP_RESPONSE(nil, &cursor, der.count) else { return unusable("not an OCSP response") }
        defer { OCSP_RESPONSE_free(response) }
        guard OCSP_response_status(response) == OCSP_RESPONSE_STATUS_SUCCESSFUL, let basic = OCSP_response_get1_basic(response) else {
            return unusable("the responder answered with an error")
        }
        defer { OCSP_BASICRESP_free(basic) }
        guard loupe_sk_X509_num(chain) >= 2, let leaf = loupe_sk_X509_value(chain, 0), let issuer = loupe_sk_X509_value(chain, 1) else {
            return unusable("no issuer to check it against")
        }
        guard OCSP_basic_verify(basic, chain, store, 0) == 1 else { return unusable("its signature does not verify") }
        guard let id = OCSP_cert_to_id(nil, leaf, issuer) else { return unusable("cannot name the certificate") }
        defer { OCSP_CERTID_free(id) }
        var status: Int32 = -1, reason: Int32 = -1
        var revokedAt: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?, thisUpdate: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?, nextUpdate: UnsafeMutablePointer<ASN1_GENERALIZEDTIME>?
        guard OCSP_resp_find_status(basic, id, &status, &reason, &revokedAt, &thisUpdate, &nextUpdate) == 1 else {
            return unusable("it says nothing about this certificate")
        }
        guard OCSP_check_validity(thisUpdate, nextUpdate, leewaySeconds, -1) == 1 else { return unusable("it is out of date") }
        switch status {
        case V_OCSP_CERTSTATUS_GOOD: return (.good, nextUpdate.map { Int(asn1Date($0).timeIntervalSince1970) })
        case V_OCSP_CERTSTATUS_REVOKED: return (.revoked(reason: reason >= 0 ? String(cString: OCSP_crl_reason_str(Int(reason))) : "no reason given"), nil)
        default: return unusable("status unknown to the responder")
        }
    }
}
