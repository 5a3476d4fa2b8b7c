import Foundation
import Synchronization
import TLS

/// The key a masquerade leaf carries. P-256 ECDSA serves nearly every client and signs in
/// microseconds; RSA is for clients whose hello cannot verify P-256 ECDSA (Wire's
/// `ClientHello.acceptsP256ECDSA`), which would otherwise fail where a direct RSA origin works;
/// P-384 (else P-521) for the few that verify ECDSA only on that curve and no RSA at all.
public enum LeafKeyType: String, Sendable, Hashable, CaseIterable {
    case ecdsaP256 = "ec-p256"
    case rsa2048 = "rsa-2048"
    case ecdsaP384 = "ec-p384"
    case ecdsaP521 = "ec-p521"
}

/// What a leaf should say. Pure description; `LeafMinter` turns it into a certificate.
public struct LeafRequest: Sendable, Hashable {
    public enum Subject: Sendable, Hashable {
        /// CN = this name (omitted when empty or longer than X.520's 64 characters).
        case commonName(String)
        /// The upstream's subject, copied as it is; identified by its DER fingerprint.
        case mirrored(upstreamSHA256: String)
    }

    public var subject: Subject
    /// Exactly these names: nothing is added that was not asked for.
    public var names: [SubjectAltName]
    /// The leaf never outlives this (the upstream certificate's notAfter when mirroring).
    public var notAfterCap: Date?
    public var notBeforeFloor: Date?
    public var keyType: LeafKeyType = .ecdsaP256
    /// Also an OCSP response for the leaf, signed by the root, to staple (the upstream
    /// stapled a good one to a client that asked for status). Costs a second signature.
    public var stapled = false
    /// The upstream's keyUsage, when it forbids signatures (no digitalSignature): the leaf
    /// carries it instead of Loupe's, so a client that checks key usage (GnuTLS does, OpenSSL
    /// does not) refuses the masquerade as it refuses the real server. nil: Loupe's own.
    public var keyUsage: String?
    /// The upstream's TLS Feature extension (OCSP must-staple), carried as it is: a client that
    /// enforces it (GnuTLS) then fails without a staple exactly as it would directly —
    /// Loupe staples its own only when the upstream stapled a good response.
    public var tlsFeature: String?
    /// The upstream certificate when mirroring (not part of the identity: its hash is).
    public var upstream: Certificate? { _upstream?.value }
    private var _upstream: Box?

    /// A leaf for names given by hand (`loupe ca mint HOST...`): all as SANs, CN = the first.
    public static func forNames(_ names: [String]) -> LeafRequest {
        let sans = names.map(SubjectAltName.parse)
        let first = sans.first.map { san -> String in
            switch san {
            case .dns(let n): n
            default: names[0]
            }
        } ?? ""
        return LeafRequest(subject: .commonName(first), names: sans)
    }

    /// A leaf that mirrors `upstream`: its subject and SAN list as they are (a CN-only upstream
    /// gets a CN-only leaf), plus `extraNames` (e.g. the destination IP of a hello without SNI).
    public static func mirroring(_ upstream: Certificate, extraNames: [SubjectAltName] = [],
                                 keyType: LeafKeyType = .ecdsaP256) -> LeafRequest {
        var names = upstream.subjectAltNames
        for extra in extraNames where !names.contains(extra) { names.append(extra) }
        var request = LeafRequest(subject: .mirrored(upstreamSHA256: upstream.sha256Fingerprint), names: names)
        request.keyType = keyType
        request.notAfterCap = upstream.notAfter
        request.notBeforeFloor = upstream.notBefore
        if upstream.keyUsageForbidsSignatures { request.keyUsage = upstream.keyUsage }
        request.tlsFeature = upstream.tlsFeature
        request._upstream = Box(upstream)
        return request
    }

    public init(subject: Subject, names: [SubjectAltName], notAfterCap: Date? = nil) {
        self.subject = subject
        self.names = names
        self.notAfterCap = notAfterCap
    }

    final class Box: @unchecked Sendable, Hashable {
        let value: Certificate
        init(_ value: Certificate) { self.value = value }
        // Identity is carried by `subject`'s fingerprint; the box never distinguishes requests.
        static func == (a: Box, b: Box) -> Bool { true }
        func hash(into hasher: inout Hasher) {}
    }
}

/// A minted leaf with the chain to present and the shared key.
public struct Leaf: Sendable {
    public var certificate: Certificate
    /// The certificates above the leaf (the root), for `loupe ca mint --out`; the proxy presents
    /// the leaf alone, since clients hold the root as their anchor.
    public var chain: [Certificate]
    public var key: PrivateKey
    /// "good" from the root, for the leaf's whole life (Loupe never revokes a leaf); when asked.
    public var staple: [UInt8]?

    public var pem: String { ([certificate] + chain).map(\.pem).joined() }
}

/// Signs leaves under one root. Everything that is the same for every leaf — the shared leaf
/// keys, basicConstraints, keyUsage, EKU, SKI, AKI — is built once here; per leaf only the
/// serial, names, dates and signature are new (DESIGN.md "Keys").
public final class LeafMinter: Sendable {
    public let root: Root
    public let profile: CAProfile
    /// The shared P-256 key of every ECDSA leaf.
    public var leafKey: PrivateKey { ecdsa.key }
    private let signingKey: PrivateKey
    private let ecdsa: SharedKey
    /// RSA, P-384 and P-521 keys, made on first need: few clients ask for them, and making an
    /// RSA-2048 key takes 0.2–0.6 s here.
    private let lateKeys = Mutex<[LeafKeyType: SharedKey]>([:])
    // Read once: parsing ASN1 times on every mint is measurable.
    private let rootNotBefore: Date
    private let rootNotAfter: Date

    /// One shared leaf key and the extensions every leaf with it carries.
    private struct SharedKey: Sendable {
        let key: PrivateKey
        let fixedExtensions: [CertificateExtension]
        /// Where keyUsage sits in `fixedExtensions` (a mirrored one may replace it).
        static let keyUsageIndex = 1

        init(_ key: PrivateKey, root: Certificate) throws {
            self.key = key
            fixedExtensions = [
                try CertificateExtension.make("basicConstraints", "critical,CA:FALSE"),
                // RSA leaves may also serve TLS 1.2's RSA key exchange suites.
                try CertificateExtension.make("keyUsage", key.isRSA ? "critical,digitalSignature,keyEncipherment" : "critical,digitalSignature"),
                try CertificateExtension.make("extendedKeyUsage", "serverAuth"),
                try CertificateExtension.make("subjectKeyIdentifier", "hash", subjectKey: key),
                try CertificateExtension.make("authorityKeyIdentifier", "keyid:always", issuer: root),
            ]
        }
    }

    public init(root: Root, profile: CAProfile) throws {
        self.root = root
        self.profile = profile
        self.signingKey = root.key.legacyEC()
        self.rootNotBefore = root.certificate.notBefore
        self.rootNotAfter = root.certificate.notAfter
        ecdsa = try SharedKey(PrivateKey.generateLegacyP256(), root: root.certificate)
    }

    private func sharedKey(_ type: LeafKeyType) throws -> SharedKey {
        switch type {
        case .ecdsaP256: return ecdsa
        case .rsa2048, .ecdsaP384, .ecdsaP521:
            return try lateKeys.withLock { made in
                if let key = made[type] { return key }
                let fresh = switch type {
                case .ecdsaP384: try PrivateKey.generateEC(curve: "P-384").legacyEC()
                case .ecdsaP521: try PrivateKey.generateEC(curve: "P-521").legacyEC()
                default: try PrivateKey.generateRSA(bits: 2048)
                }
                let key = try SharedKey(fresh, root: root.certificate)
                made[type] = key
                return key
            }
        }
    }

    public func mint(_ request: LeafRequest, now: Date = Date()) throws -> Leaf {
        for name in request.names where !profile.permits(name) {
            throw CAError("the root's name constraints do not permit \(name); refusing to mint a leaf clients would reject")
        }
        let rootCert = root.certificate
        var notBefore = max(now.addingTimeInterval(-TimeInterval(profile.leafBackdateSeconds)), rootNotBefore)
        if let floor = request.notBeforeFloor { notBefore = max(notBefore, floor) }
        var notAfter = min(now.addingTimeInterval(TimeInterval(profile.leafMaxLifetimeDays) * 86_400), rootNotAfter)
        if let cap = request.notAfterCap { notAfter = min(notAfter, cap) }
        guard notAfter > notBefore, notAfter > now else {
            throw CAError("no valid period for the leaf: the root or upstream certificate has expired (valid until \(notAfter))")
        }

        let subject: SubjectName
        switch request.subject {
        case .commonName(let cn):
            subject = .attributes(cn.isEmpty || cn.utf8.count > 64 ? [] : [("CN", cn)])
        case .mirrored:
            guard let upstream = request.upstream else { throw CAError("a mirrored leaf request lost its upstream certificate") }
            subject = .copied(from: upstream)
        }
        let shared = try sharedKey(request.keyType)
        var extensions = shared.fixedExtensions
        if let usage = request.keyUsage {
            extensions[SharedKey.keyUsageIndex] = try CertificateExtension.make("keyUsage", usage)
        }
        if let features = request.tlsFeature, !features.isEmpty {
            extensions.append(try CertificateExtension.make("tlsfeature", features))
        }
        if !request.names.isEmpty {
            // RFC 5280: the SAN must be critical when the subject is empty.
            let emptySubject = switch subject {
            case .attributes(let pairs): pairs.isEmpty
            case .copied(let upstream): upstream.subject.isEmpty
            }
            extensions.append(try CertificateExtension.subjectAltNames(request.names, critical: emptySubject))
        }
        let spec = CertificateSpec(subject: subject, serial: try CertificateSpec.randomSerial(),
                                   notBefore: notBefore, notAfter: notAfter, publicKey: shared.key, extensions: extensions)
        let certificate = try CertificateBuilder.sign(spec, issuer: rootCert, issuerKey: signingKey)
        var leaf = Leaf(certificate: certificate, chain: [rootCert], key: shared.key)
        if request.stapled {
            leaf.staple = try OCSP.response(for: certificate, issuer: rootCert, issuerKey: signingKey, thisUpdate: notBefore, nextUpdate: notAfter)
        }
        return leaf
    }
}
