import Foundation
import Store
import TLS

/// A root CA: its certificate and the private key, unsealed from the store.
public struct Root: Sendable {
    public var certificate: Certificate
    public var key: PrivateKey
    public var certificateRef: String
    public var keyRef: String
}

public struct CAError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The per-host root's life: create once, load, rotate (keeping the old one as "previous"),
/// retire the previous one. Roots live in the store as a key item and a certificate item
/// labelled "loupe-root" with a `role` attribute: current, previous, or next (mid-rotation).
public struct RootAuthority {
    public let store: SealedStore
    public let profile: CAProfile

    static let label = "loupe-root"

    public init(store: SealedStore, profile: CAProfile) {
        self.store = store
        self.profile = profile
    }

    public enum Role: String, Sendable { case current, previous, next }

    /// The root with `role`, or nil. A rotation interrupted after the old root was demoted
    /// leaves only a "next" root: it is the current one then.
    public func root(_ role: Role = .current) throws -> Root? {
        if let found = try find(role) { return found }
        if role == .current { return try find(.next) }
        return nil
    }

    private func find(_ role: Role) throws -> Root? {
        let certs = store.find(.certificate, matching: ["label": Self.label, "role": role.rawValue])
        guard let certItem = certs.first else { return nil }
        guard let keyItem = store.find(.key, matching: ["label": Self.label, "public-key-sha256": certItem.attributes["public-key-sha256"] ?? ""]).first else {
            throw CAError("the \(role.rawValue) root certificate (\(certItem.ref)) has no matching key in the store")
        }
        return Root(certificate: try Certificate(der: certItem.data), key: try PrivateKey(der: keyItem.data),
                    certificateRef: certItem.ref, keyRef: keyItem.ref)
    }

    public enum InitResult { case created(Root), existing(Root) }

    /// Creates the root unless one exists; an existing root is kept and returned.
    public func initialize(algorithm: KeyAlgorithm? = nil, now: Date = Date()) throws -> InitResult {
        if let existing = try root() { return .existing(existing) }
        return .created(try makeRoot(algorithm: algorithm ?? profile.rootKey, role: .current, now: now))
    }

    /// Makes a new current root; the old one becomes "previous" (still exportable and
    /// trusted by fleets) until `retirePrevious`. Refuses while a previous root is kept.
    public func rotate(algorithm: KeyAlgorithm? = nil, now: Date = Date()) throws -> (new: Root, previous: Root) {
        guard let old = try root(.current) else { throw CAError("there is no root to rotate; run 'loupe ca init' first") }
        if let previous = try root(.previous) {
            throw CAError("a previous root (\(previous.certificate.sha256Fingerprint.prefix(16))…) is still kept; retire it first with 'loupe ca retire-previous' once fleets trust the current root")
        }
        let algorithm = algorithm ?? KeyAlgorithm(keyDescription: old.certificate.keyDescription) ?? profile.rootKey
        // Order matters for crash safety: new root as "next", demote the old, promote the new.
        let fresh = try makeRoot(algorithm: algorithm, role: .next, now: now)
        try store.update(old.certificateRef, attributes: ["role": Role.previous.rawValue])
        try store.update(old.keyRef, attributes: ["role": Role.previous.rawValue])
        try store.update(fresh.certificateRef, attributes: ["role": Role.current.rawValue])
        try store.update(fresh.keyRef, attributes: ["role": Role.current.rawValue])
        return (fresh, old)
    }

    /// Deletes the previous root (explicit operator action).
    public func retirePrevious() throws -> Root {
        guard let previous = try root(.previous) else { throw CAError("there is no previous root to retire") }
        try store.delete(previous.certificateRef)
        try store.delete(previous.keyRef)
        return previous
    }

    private func makeRoot(algorithm: KeyAlgorithm, role: Role, now: Date) throws -> Root {
        let key = try PrivateKey.generate(algorithm)
        let id = Crypto.hex(try Crypto.randomBytes(4))
        let subject = profile.rootSubject(hostname: Self.hostname(), id: id, date: now)
        let certificate = try Self.selfSigned(subject: subject, key: key, days: profile.rootLifetimeDays,
                                              nameConstraints: profile.nameConstraintsValue, now: now)
        let attributes = ["label": Self.label, "role": role.rawValue]
        let keyItem = try store.add(.key, data: try key.pkcs8DER(), attributes: attributes)
        let certItem = try store.add(.certificate, data: certificate.der, attributes: attributes)
        return Root(certificate: certificate, key: key, certificateRef: certItem.ref, keyRef: keyItem.ref)
    }

    /// The quarantine issuer: a root made in memory at start, stored nowhere and trusted by
    /// nobody. Leaves it signs let a browser show its own certificate error page for an
    /// upstream that failed verification, instead of a bare handshake failure.
    public static func quarantineRoot(now: Date = Date()) throws -> Root {
        let key = try PrivateKey.generate(.ecP256)
        let subject = [("O", "Loupe"), ("OU", "Quarantine: the real server failed verification"), ("CN", "Loupe Quarantine (untrusted)")]
        let certificate = try selfSigned(subject: subject, key: key, days: 30, nameConstraints: nil, now: now)
        return Root(certificate: certificate, key: key, certificateRef: "", keyRef: "")
    }

    static func selfSigned(subject: [(String, String)], key: PrivateKey, days: Int, nameConstraints: String?, now: Date) throws -> Certificate {
        var extensions = [
            try CertificateExtension.make("basicConstraints", "critical,CA:TRUE,pathlen:0"),
            try CertificateExtension.make("keyUsage", "critical,keyCertSign,cRLSign"),
            try CertificateExtension.make("subjectKeyIdentifier", "hash", subjectKey: key),
        ]
        if let nameConstraints {
            extensions.append(try CertificateExtension.make("nameConstraints", nameConstraints))
        }
        let spec = CertificateSpec(
            subject: .attributes(subject), serial: try CertificateSpec.randomSerial(),
            // Backdated an hour so that hosts with slightly slow clocks accept it at once.
            notBefore: now.addingTimeInterval(-3600),
            notAfter: now.addingTimeInterval(TimeInterval(days) * 86_400),
            publicKey: key, extensions: extensions)
        return try CertificateBuilder.sign(spec, issuer: nil, issuerKey: key)
    }

    static func hostname() -> String {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count) == 0 else { return "localhost" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension KeyAlgorithm {
    /// From `Certificate.keyDescription` ("EC P-256", "RSA 3072").
    init?(keyDescription: String) {
        switch keyDescription {
        case "EC P-256": self = .ecP256
        case "EC P-384": self = .ecP384
        case "RSA 3072": self = .rsa3072
        default: return nil
        }
    }
}
