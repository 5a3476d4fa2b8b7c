import Foundation
import TestSupport
import Testing
@testable import TLS

@Suite struct AESGCMTests {
    @Test func roundTripAndTamperDetection() throws {
        let key = try Crypto.randomBytes(32)
        let sealed = try AESGCM.seal(Array("secret".utf8), key: key, aad: [1, 2])
        #expect(try AESGCM.open(sealed, key: key, aad: [1, 2]) == Array("secret".utf8))
        var flipped = sealed
        flipped[14] ^= 1
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(flipped, key: key, aad: [1, 2]) }
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(sealed, key: key, aad: [1, 3]) }
        #expect(throws: AESGCM.AuthenticationFailure.self) { try AESGCM.open(Array(sealed.prefix(20)), key: key, aad: [1, 2]) }
        #expect(try AESGCM.open(try AESGCM.seal([], key: key, aad: []), key: key, aad: []) == [])
    }

    @Test func sha256KnownAnswer() {
        #expect(Crypto.sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}

@Suite struct CertificateTests {
    func selfSigned(names: [SubjectAltName], subject: [(String, String)] = [("CN", "t")]) throws -> (Certificate, PrivateKey) {
        let key = try PrivateKey.generate(.ecP256)
        let spec = CertificateSpec(subject: .attributes(subject), serial: try CertificateSpec.randomSerial(),
                                   notBefore: Date(timeIntervalSince1970: 1_700_000_000), notAfter: Date(timeIntervalSince1970: 1_800_000_000),
                                   publicKey: key, extensions: [try CertificateExtension.subjectAltNames(names)])
        return (try CertificateBuilder.sign(spec, issuer: nil, issuerKey: key), key)
    }

    @Test func buildParseAndReadBack() throws {
        let (cert, key) = try selfSigned(names: [.dns("a.example"), .ip([10, 0, 0, 1]), .ip(IPAddress.parse("2001:db8::1")!)],
                                         subject: [("O", "Acme & Co"), ("CN", "a.example")])
        #expect(cert.subject == "CN=a.example,O=Acme & Co")
        #expect(cert.commonName == "a.example")
        #expect(cert.subjectAltNames.map(\.description) == ["DNS:a.example", "IP:10.0.0.1", "IP:2001:db8::1"])
        #expect(cert.notBefore == Date(timeIntervalSince1970: 1_700_000_000))
        #expect(cert.notAfter == Date(timeIntervalSince1970: 1_800_000_000))
        #expect(cert.publicKeyDER == (try key.publicKeyDER()))
        #expect(cert.serialHex.count == 32)
        #expect(cert.keyDescription == "EC P-256")
        #expect(cert.isSigned(by: cert))
        let again = try Certificate.parsePEM(cert.pem + cert.pem)
        #expect(again.count == 2 && again[0].der == cert.der)
        #expect(try Certificate.parse(cert.der).der == cert.der)
    }

    /// A hostile name with a comma must stay one SAN entry, never inject a second.
    @Test func sanEntriesCannotBeInjected() throws {
        let (cert, _) = try selfSigned(names: [.dns("evil.example,DNS:bank.example")])
        #expect(cert.subjectAltNames == [.dns("evil.example,DNS:bank.example")])
    }

    @Test func garbageIsAClearError() {
        #expect(throws: OpenSSLError.self) { try Certificate(der: [0x30, 0x03, 1, 2, 3]) }
        #expect(throws: OpenSSLError.self) { try Certificate.parsePEM("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n") }
        #expect(throws: OpenSSLError.self) { try PrivateKey(der: [1, 2, 3]) }
        do {
            _ = try Certificate(der: [0x30, 0x03, 1, 2, 3])
        } catch {
            #expect(!error.details.isEmpty, "OpenSSL's own reason must be kept: \(error)")
        }
    }

    @Test(arguments: KeyAlgorithm.allCases)
    func keysRoundTrip(algorithm: KeyAlgorithm) throws {
        let key = try PrivateKey.generate(algorithm)
        let again = try PrivateKey(der: try key.pkcs8DER())
        #expect(try again.publicKeyDER() == (try key.publicKeyDER()))
        #expect(try PrivateKey(pem: try key.pkcs8PEM()).typeDescription == key.typeDescription)
    }

    @Test(.enabled(if: TestEnv.has("openssl"), "the openssl command is not installed"))
    func pkcs12FromOpenSSL() throws {
        let dir = TestEnv.scratch("p12")
        defer { TestEnv.remove(dir) }
        let made = TestEnv.sh("""
            cd \(dir) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem -subj /CN=client -days 2 2>&1 && \
            openssl pkcs12 -export -inkey k.pem -in c.pem -out id.p12 -passout pass:s3cret 2>&1
            """)
        #expect(made.status == 0, "\(made.out)")
        let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/id.p12")))
        let bundle = try PKCS12Bundle.parse(bytes, password: "s3cret")
        #expect(bundle.certificate.subject == "CN=client")
        #expect(bundle.certificate.publicKeyDER == (try bundle.key.publicKeyDER()))
        #expect(throws: (any Error).self) { try PKCS12Bundle.parse(bytes, password: "wrong") }
        #expect(throws: (any Error).self) { try PKCS12Bundle.parse([0x30, 0x00], password: "") }
    }
}
