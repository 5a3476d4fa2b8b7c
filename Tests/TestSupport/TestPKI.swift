import Foundation
import TLS

/// A root and leaves built with the TLS module alone, written where OpenSSL can load them.
public struct TestPKI: Sendable {
    public let root: Certificate
    public let rootKey: PrivateKey
    public let dir: String
    public var bundle: String { "\(dir)/root.pem" }

    public init(name: String = "Test Root") throws {
        dir = TestEnv.scratch("pki")
        rootKey = try PrivateKey.generate(.ecP256)
        let spec = CertificateSpec(subject: .attributes([("CN", name)]), serial: try CertificateSpec.randomSerial(),
                                   notBefore: Date().addingTimeInterval(-3600), notAfter: Date().addingTimeInterval(86_400 * 30), publicKey: rootKey,
                                   extensions: [try CertificateExtension.make("basicConstraints", "critical,CA:TRUE"),
                                                try CertificateExtension.make("keyUsage", "critical,keyCertSign,cRLSign")])
        root = try CertificateBuilder.sign(spec, issuer: nil, issuerKey: rootKey)
        try root.pem.write(toFile: bundle, atomically: true, encoding: .utf8)
    }

    /// No `names`: no SAN extension at all (a CN-only certificate).
    public func leaf(_ names: [SubjectAltName], commonName: String = "leaf", notBefore: Date = Date().addingTimeInterval(-60),
                     notAfter: Date = Date().addingTimeInterval(86_400)) throws -> (Certificate, PrivateKey) {
        let key = try PrivateKey.generate(.ecP256)
        let spec = CertificateSpec(subject: .attributes([("CN", commonName)]), serial: try CertificateSpec.randomSerial(),
                                   notBefore: notBefore, notAfter: notAfter, publicKey: key,
                                   extensions: (names.isEmpty ? [] : [try CertificateExtension.subjectAltNames(names)])
                                       + [try CertificateExtension.make("extendedKeyUsage", "serverAuth")])
        return (try CertificateBuilder.sign(spec, issuer: root, issuerKey: rootKey), key)
    }
}

