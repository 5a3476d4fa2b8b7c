import Foundation
import TestSupport
import Testing
import TLS

/// badssl-style origins behind `loupe proxy`: for every certificate problem, curl through the
/// proxy must fail exactly when curl straight to the origin fails — and succeed when it does.
@Suite struct UpstreamMatrixTests {
    static let canRun = TestEnv.isRoot && ["ip", "nft", "curl", "openssl"].allSatisfy(TestEnv.has)

    struct Origin {
        var name: String
        var chain: [Certificate]
        var key: PrivateKey
        var directShouldWork: Bool
        /// The name curl asks for (resolved to the origin).
        var host = "origin.test"
        /// Extra `openssl s_server` and `curl` arguments (protocol versions, ciphers).
        var serverFlags = ""
        var clientFlags = ""
        /// A client other than curl: a command given the CA file ($1), address ($2) and port ($3).
        var client: String?
    }

    /// A TLS 1.3 client that verifies only RSA-PSS signatures (no ECDSA).
    static let rsaPSSOnlyClient = """
        openssl s_client -connect $2:$3 -servername origin.test -CAfile $1 -verify_return_error -verify_hostname origin.test \\
          -tls1_3 -sigalgs rsa_pss_rsae_sha256:rsa_pss_rsae_sha384 </dev/null >/dev/null 2>&1
        """

    /// A TLS 1.3 client that verifies only P-256 ECDSA signatures.
    static let p256OnlyClient = """
        openssl s_client -connect $2:$3 -servername origin.test -CAfile $1 -verify_return_error -verify_hostname origin.test \\
          -tls1_3 -sigalgs ecdsa_secp256r1_sha256 </dev/null >/dev/null 2>&1
        """

    /// A TLS 1.3 client that verifies only P-384 ECDSA signatures (no RSA, no P-256).
    static let p384OnlyClient = """
        openssl s_client -connect $2:$3 -servername origin.test -CAfile $1 -verify_return_error -verify_hostname origin.test \\
          -tls1_3 -sigalgs ecdsa_secp384r1_sha384 </dev/null >/dev/null 2>&1
        """

    /// The same on P-521.
    static let p521OnlyClient = """
        openssl s_client -connect $2:$3 -servername origin.test -CAfile $1 -verify_return_error -verify_hostname origin.test \\
          -tls1_3 -sigalgs ecdsa_secp521r1_sha512 </dev/null >/dev/null 2>&1
        """

    /// A client retrying at TLS 1.2 after a failed attempt, announcing it (RFC 7507).
    static let fallbackClient = """
        openssl s_client -connect $2:$3 -servername origin.test -CAfile $1 -verify_return_error -verify_hostname origin.test \\
          -tls1_2 -fallback_scsv </dev/null >/dev/null 2>&1
        """

    /// A client whose SNI is fully qualified ("origin.test."), checking only the chain: the
    /// real server's certificate names "origin.test", so it works direct.
    static let trailingDotClient = """
        openssl s_client -connect $2:$3 -servername origin.test. -CAfile $1 -verify_return_error </dev/null >/dev/null 2>&1
        """

    /// The same client checking the name as it sent it: OpenSSL matches "origin.test." against
    /// no certificate name, so it fails direct.
    static let trailingDotNameClient = """
        openssl s_client -connect $2:$3 -servername origin.test. -CAfile $1 -verify_return_error -verify_hostname origin.test. </dev/null >/dev/null 2>&1
        """

    /// `extra`: further extensions as OpenSSL configuration strings, name and value.
    static func sign(_ names: [SubjectAltName], key: PrivateKey, issuer: (Certificate, PrivateKey)?, ca: Bool = false, subject: String? = nil,
                     notBefore: Date = Date().addingTimeInterval(-3600), notAfter: Date = Date().addingTimeInterval(30 * 86_400),
                     extra: [(String, String)] = []) throws -> Certificate {
        var extensions = [try CertificateExtension.make("basicConstraints", ca ? "critical,CA:TRUE" : "critical,CA:FALSE")]
        if ca { extensions.append(try CertificateExtension.make("keyUsage", "critical,keyCertSign,cRLSign")) }
        for (name, value) in extra { extensions.append(try CertificateExtension.make(name, value)) }
        let cn = subject ?? (ca ? "Matrix CA \(UUID().uuidString.prefix(8))" : "origin")
        if !names.isEmpty { extensions.append(try CertificateExtension.subjectAltNames(names, critical: cn.isEmpty)) }
        let spec = CertificateSpec(subject: .attributes(cn.isEmpty ? [] : [("CN", cn)]), serial: try CertificateSpec.randomSerial(),
                                   notBefore: notBefore, notAfter: notAfter, publicKey: key, extensions: extensions)
        return try CertificateBuilder.sign(spec, issuer: issuer?.0, issuerKey: issuer?.1 ?? key)
    }

    @Test(.enabled(if: canRun, "needs root, ip, nft, curl and openssl (CI has them)"))
    func everyBadOriginFailsThroughTheProxyExactlyWhenItFailsDirect() throws {
        let dir = TestEnv.scratch("matrix")
        defer { TestEnv.remove(dir) }
        let rootKey = try PrivateKey.generate(.ecP256)
        let root = try Self.sign([], key: rootKey, issuer: nil, ca: true)
        let intermediateKey = try PrivateKey.generate(.ecP256)
        let intermediate = try Self.sign([], key: intermediateKey, issuer: (root, rootKey), ca: true)
        let strangerKey = try PrivateKey.generate(.ecP256)
        let stranger = try Self.sign([], key: strangerKey, issuer: nil, ca: true)
        #expect(TestEnv.sh("openssl genrsa -out \(dir)/weak.key 1024 2>&1").status == 0)
        let weakKey = try PrivateKey(pem: try String(contentsOfFile: "\(dir)/weak.key", encoding: .utf8))
        let name: [SubjectAltName] = [.dns("origin.test")]
        let k = { try PrivateKey.generate(.ecP256) }
        var origins: [Origin] = []
        var key = try k()
        origins.append(Origin(name: "valid chain", chain: [try Self.sign(name, key: key, issuer: (intermediate, intermediateKey)), intermediate], key: key, directShouldWork: true))
        key = try k()
        origins.append(Origin(name: "missing intermediate", chain: [try Self.sign(name, key: key, issuer: (intermediate, intermediateKey))], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "expired", chain: [try Self.sign(name, key: key, issuer: (root, rootKey), notBefore: Date().addingTimeInterval(-90 * 86_400), notAfter: Date().addingTimeInterval(-86_400))], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "not yet valid", chain: [try Self.sign(name, key: key, issuer: (root, rootKey), notBefore: Date().addingTimeInterval(86_400))], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "wrong name", chain: [try Self.sign([.dns("other.test")], key: key, issuer: (root, rootKey))], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "self-signed", chain: [try Self.sign(name, key: key, issuer: nil)], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "untrusted root", chain: [try Self.sign(name, key: key, issuer: (stranger, strangerKey))], key: key, directShouldWork: false))
        // (The origins themselves run at security level 0, or s_server refuses to load such keys.)
        origins.append(Origin(name: "weak key (RSA 1024)", chain: [try Self.sign(name, key: weakKey, issuer: (root, rootKey))], key: weakKey, directShouldWork: false,
                              serverFlags: "-cipher DEFAULT@SECLEVEL=0"))
        // Protocol versions: Loupe's client leg never offers newer TLS than the origin spoke, and
        // never accepts an origin older than TLS 1.2.
        key = try k()
        let good = try Self.sign(name, key: key, issuer: (root, rootKey))
        let goodKey = key
        origins.append(Origin(name: "TLS 1.2-only origin", chain: [good], key: key, directShouldWork: true, serverFlags: "-tls1_2"))
        origins.append(Origin(name: "TLS 1.2-only origin, client requires TLS 1.3", chain: [good], key: key, directShouldWork: false,
                              serverFlags: "-tls1_2", clientFlags: "--tlsv1.3"))
        origins.append(Origin(name: "TLS 1.3-only origin", chain: [good], key: key, directShouldWork: true, serverFlags: "-tls1_3"))
        origins.append(Origin(name: "TLS 1.3-only origin, client offers at most TLS 1.2", chain: [good], key: key, directShouldWork: false,
                              serverFlags: "-tls1_3", clientFlags: "--tls-max 1.2"))
        origins.append(Origin(name: "TLS 1.1-only origin", chain: [good], key: key, directShouldWork: false, serverFlags: "-tls1_1 -cipher DEFAULT@SECLEVEL=0"))
        // Client certificates (badssl.com's client-cert-missing): asked for but optional, the
        // handshake goes on without one; demanded, it fails — through Loupe as direct.
        origins.append(Origin(name: "origin asks for an optional client certificate", chain: [good], key: key, directShouldWork: true,
                              serverFlags: "-verify 1"))
        origins.append(Origin(name: "origin demands a client certificate", chain: [good], key: key, directShouldWork: false,
                              serverFlags: "-Verify 1 -verify_return_error"))
        // Certificate shapes real sites have (badssl.com's no-subject, 1000-sans, reversed-chain).
        key = try k()
        origins.append(Origin(name: "no subject, names in a critical SAN", chain: [try Self.sign(name, key: key, issuer: (root, rootKey), subject: "")],
                              key: key, directShouldWork: true))
        key = try k()
        let manyNames = (1..<1000).map { SubjectAltName.dns("n\($0).origin.test") } + name
        origins.append(Origin(name: "1000 SANs", chain: [try Self.sign(manyNames, key: key, issuer: (root, rootKey))], key: key, directShouldWork: true))
        // Names as real certificates carry them (badssl.com's wildcard, wrong.host, no-common-name
        // kinds, long-extended-subdomain-name...): the masquerade leaf mirrors them as they are,
        // so the client's own name check decides as it would direct.
        key = try k()
        let wildcard = try Self.sign([.dns("*.origin.test")], key: key, issuer: (root, rootKey))
        origins.append(Origin(name: "wildcard leaf, one label under it", chain: [wildcard], key: key, directShouldWork: true, host: "www.origin.test"))
        origins.append(Origin(name: "wildcard leaf, two labels under it", chain: [wildcard], key: key, directShouldWork: false, host: "a.b.origin.test"))
        origins.append(Origin(name: "wildcard leaf, the bare parent name", chain: [wildcard], key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "wildcard over a top-level label (*.test)", chain: [try Self.sign([.dns("*.test")], key: key, issuer: (root, rootKey))],
                              key: key, directShouldWork: false))
        key = try k()
        origins.append(Origin(name: "name only in the subject CN, no SAN", chain: [try Self.sign([], key: key, issuer: (root, rootKey), subject: "origin.test")],
                              key: key, directShouldWork: true))
        key = try k()
        origins.append(Origin(name: "SAN without the name, CN with it", chain: [try Self.sign([.dns("other.test")], key: key, issuer: (root, rootKey), subject: "origin.test")],
                              key: key, directShouldWork: false))
        key = try k()
        let longName = "long-extended-subdomain-name-containing-many-letters-and-dashes.origin.test"
        origins.append(Origin(name: "a 63-character label", chain: [try Self.sign([.dns(longName)], key: key, issuer: (root, rootKey))],
                              key: key, directShouldWork: true, host: longName))
        // What the chain says about its own use: an issuer's dates, whether it may issue, the
        // names it is constrained to, and what the leaf is for.
        let expiredIssuerKey = try k()
        let expiredIssuer = try Self.sign([], key: expiredIssuerKey, issuer: (root, rootKey), ca: true,
                                          notBefore: Date().addingTimeInterval(-90 * 86_400), notAfter: Date().addingTimeInterval(-86_400))
        key = try k()
        origins.append(Origin(name: "expired intermediate", chain: [try Self.sign(name, key: key, issuer: (expiredIssuer, expiredIssuerKey)), expiredIssuer],
                              key: key, directShouldWork: false))
        let notCAKey = try k()
        let notCA = try Self.sign([.dns("issuer.test")], key: notCAKey, issuer: (root, rootKey))
        key = try k()
        origins.append(Origin(name: "issued by a leaf (CA:FALSE)", chain: [try Self.sign(name, key: key, issuer: (notCA, notCAKey)), notCA],
                              key: key, directShouldWork: false))
        for (label, constraint, works) in [("permits", "permitted;DNS:origin.test", true), ("excludes", "excluded;DNS:origin.test", false)] {
            let constrainedKey = try k()
            let constrained = try Self.sign([], key: constrainedKey, issuer: (root, rootKey), ca: true, extra: [("nameConstraints", "critical," + constraint)])
            key = try k()
            origins.append(Origin(name: "intermediate whose name constraints \(label) the name",
                                  chain: [try Self.sign(name, key: key, issuer: (constrained, constrainedKey)), constrained], key: key, directShouldWork: works))
        }
        for (usage, works) in [("serverAuth", true), ("clientAuth", false)] {
            key = try k()
            origins.append(Origin(name: "leaf for \(usage) only (extended key usage)",
                                  chain: [try Self.sign(name, key: key, issuer: (root, rootKey), extra: [("extendedKeyUsage", usage)])], key: key, directShouldWork: works))
        }
        key = try k()
        let secondKey = try k()
        let second = try Self.sign([], key: secondKey, issuer: (intermediate, intermediateKey), ca: true)
        origins.append(Origin(name: "two intermediates sent in reverse order",
                              chain: [try Self.sign(name, key: key, issuer: (second, secondKey)), intermediate, second], key: key, directShouldWork: true))
        // RSA origins and clients that cannot verify ECDSA: the masquerade leaf must be one the
        // client can use, or it fails through Loupe where it works direct.
        #expect(TestEnv.sh("openssl genrsa -out \(dir)/rsa.key 2048 2>&1").status == 0)
        let rsaKey = try PrivateKey(pem: try String(contentsOfFile: "\(dir)/rsa.key", encoding: .utf8))
        let rsaOrigin = try Self.sign(name, key: rsaKey, issuer: (root, rootKey))
        origins.append(Origin(name: "RSA origin, TLS 1.2 client offering only ECDHE-RSA", chain: [rsaOrigin], key: rsaKey, directShouldWork: true,
                              clientFlags: "--tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256"))
        origins.append(Origin(name: "RSA origin, TLS 1.3 client verifying only RSA-PSS", chain: [rsaOrigin], key: rsaKey, directShouldWork: true,
                              client: Self.rsaPSSOnlyClient))
        origins.append(Origin(name: "RSA origin with only static-RSA key exchange", chain: [rsaOrigin], key: rsaKey, directShouldWork: true,
                              serverFlags: "-tls1_2 -cipher AES128-GCM-SHA256"))
        // badssl.com's dh2048, with a client that offers only DHE: Loupe's client leg must speak
        // DHE too.
        origins.append(Origin(name: "DHE-only origin (2048-bit group), TLS 1.2 client offering only DHE-RSA", chain: [rsaOrigin], key: rsaKey,
                              directShouldWork: true, serverFlags: "-tls1_2 -cipher DHE-RSA-AES128-GCM-SHA256",
                              clientFlags: "--tls-max 1.2 --ciphers DHE-RSA-AES128-GCM-SHA256"))
        // A 1024-bit DH group (badssl.com's dh1024): OpenSSL's security level refuses it.
        #expect(TestEnv.sh("openssl genpkey -genparam -algorithm DH -pkeyopt dh_rfc5114:1 -out \(dir)/dh1024.pem 2>&1").status == 0)
        origins.append(Origin(name: "DHE with a 1024-bit group only", chain: [rsaOrigin], key: rsaKey, directShouldWork: false,
                              serverFlags: "-tls1_2 -cipher DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0 -dhparam $D/dh1024.pem"))
        // A leaf signed with SHA-1 (badssl.com's sha1-2016): refused at OpenSSL's security level 2.
        // (openssl x509 -CA re-signs only a self-signed input.)
        key = try k()
        try (try Self.sign(name, key: key, issuer: nil)).pem.write(toFile: "\(dir)/sha1-in.pem", atomically: true, encoding: .utf8)
        try root.pem.write(toFile: "\(dir)/matrix-root.pem", atomically: true, encoding: .utf8)
        try rootKey.pkcs8PEM().write(toFile: "\(dir)/matrix-root.key", atomically: true, encoding: .utf8)
        let resign = TestEnv.sh("openssl x509 -in \(dir)/sha1-in.pem -CA \(dir)/matrix-root.pem -CAkey \(dir)/matrix-root.key -sha1 -set_serial 7 -out \(dir)/sha1.pem 2>&1")
        #expect(resign.status == 0, "\(resign.out)")
        let sha1Leaf = try #require(try Certificate.parsePEM(try String(contentsOfFile: "\(dir)/sha1.pem", encoding: .utf8)).first)
        origins.append(Origin(name: "leaf signed with SHA-1", chain: [sha1Leaf], key: key, directShouldWork: false, serverFlags: "-cipher DEFAULT@SECLEVEL=0"))

        // The client's own offer (badssl.com's cbc, ecc384 and mozilla-modern kinds): the
        // upstream leg offers only the client's suites, signature schemes and groups, so an
        // origin that cannot meet the client fails through Loupe as it does direct.
        origins.append(Origin(name: "ECDSA origin, TLS 1.2 client offering only ECDHE-RSA", chain: [good], key: goodKey, directShouldWork: false,
                              clientFlags: "--tls-max 1.2 --ciphers ECDHE-RSA-AES128-GCM-SHA256"))
        origins.append(Origin(name: "ECDSA origin, TLS 1.3 client verifying only RSA-PSS", chain: [good], key: goodKey, directShouldWork: false,
                              client: Self.rsaPSSOnlyClient))
        origins.append(Origin(name: "GCM-only origin, client held to CBC suites", chain: [good], key: goodKey, directShouldWork: false,
                              serverFlags: "-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256", clientFlags: "--tls-max 1.2 --ciphers ECDHE-ECDSA-AES128-SHA"))
        origins.append(Origin(name: "CBC-only origin", chain: [good], key: goodKey, directShouldWork: true,
                              serverFlags: "-tls1_2 -cipher ECDHE-ECDSA-AES256-SHA"))
        origins.append(Origin(name: "ChaCha20-only TLS 1.3 origin, client without ChaCha20", chain: [good], key: goodKey, directShouldWork: false,
                              serverFlags: "-tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256", clientFlags: "--tls13-ciphers TLS_AES_128_GCM_SHA256"))
        origins.append(Origin(name: "P-384-only origin, client offering only X25519", chain: [good], key: goodKey, directShouldWork: false,
                              serverFlags: "-groups P-384", clientFlags: "--curves X25519"))
        origins.append(Origin(name: "SNI with a trailing dot, client checks the chain", chain: [good], key: goodKey, directShouldWork: true,
                              client: Self.trailingDotClient))
        origins.append(Origin(name: "SNI with a trailing dot, client checks that name with OpenSSL", chain: [good], key: goodKey,
                              directShouldWork: false, client: Self.trailingDotNameClient))
        origins.append(Origin(name: "TLS 1.3 origin, client falling back to TLS 1.2 with TLS_FALLBACK_SCSV", chain: [good], key: goodKey,
                              directShouldWork: false, client: Self.fallbackClient))
        // OCSP staples (status_request): a client that asks gets the real server's verdict —
        // a revoked staple fails through Loupe too — and Loupe's own staple when it was good.
        // (The root goes along: curl looks for the staple's issuer among what the server sent.)
        for (file, revoked) in [("staple-good", false), ("staple-revoked", true)] {
            let der = try OCSP.response(for: good, issuer: root, issuerKey: rootKey, revoked: revoked,
                                        thisUpdate: Date().addingTimeInterval(-60), nextUpdate: Date().addingTimeInterval(86_400))
            try Data(der).write(to: URL(fileURLWithPath: "\(dir)/\(file).der"))
        }
        origins.append(Origin(name: "good OCSP staple, client requires status", chain: [good, root], key: goodKey, directShouldWork: true,
                              serverFlags: "-status_file $D/staple-good.der", clientFlags: "--cert-status"))
        origins.append(Origin(name: "revoked OCSP staple, client requires status", chain: [good, root], key: goodKey, directShouldWork: false,
                              serverFlags: "-status_file $D/staple-revoked.der", clientFlags: "--cert-status"))
        origins.append(Origin(name: "revoked OCSP staple, client does not ask", chain: [good, root], key: goodKey, directShouldWork: true,
                              serverFlags: "-status_file $D/staple-revoked.der"))
        origins.append(Origin(name: "no staple, client requires status", chain: [good, root], key: goodKey, directShouldWork: false,
                              clientFlags: "--cert-status"))
        let p384Key = try PrivateKey.generate(.ecP384)
        origins.append(Origin(name: "P-384 ECDSA origin, TLS 1.3 client verifying only P-256 ECDSA",
                              chain: [try Self.sign(name, key: p384Key, issuer: (root, rootKey))], key: p384Key, directShouldWork: false,
                              client: Self.p256OnlyClient))
        let p384Origin = try Self.sign(name, key: p384Key, issuer: (root, rootKey))
        origins.append(Origin(name: "P-384 ECDSA origin, TLS 1.3 client verifying only P-384 ECDSA", chain: [p384Origin], key: p384Key,
                              directShouldWork: true, client: Self.p384OnlyClient))
        origins.append(Origin(name: "P-384 ECDSA origin, TLS 1.2 client offering only ECDHE-ECDSA on P-384", chain: [p384Origin], key: p384Key,
                              directShouldWork: true, clientFlags: "--tls-max 1.2 --ciphers ECDHE-ECDSA-AES128-GCM-SHA256 --curves secp384r1"))
        let p521Key = try PrivateKey.generateEC(curve: "P-521")
        origins.append(Origin(name: "P-521 ECDSA origin, TLS 1.3 client verifying only P-521 ECDSA",
                              chain: [try Self.sign(name, key: p521Key, issuer: (root, rootKey))], key: p521Key,
                              directShouldWork: true, client: Self.p521OnlyClient))

        try root.pem.write(toFile: "\(dir)/origin-root.pem", atomically: true, encoding: .utf8)
        var servers = ""
        var probes = ""
        for (i, origin) in origins.enumerated() {
            let port = 4431 + i
            try (origin.chain.map(\.pem).joined() + (try origin.key.pkcs8PEM())).write(toFile: "\(dir)/o\(i).pem", atomically: true, encoding: .utf8)
            servers += RedirectedProxy.server(i, flags: origin.serverFlags)
            if let client = origin.client {
                try client.write(toFile: "\(dir)/client\(i).sh", atomically: true, encoding: .utf8)
                probes += """
                    ip netns exec $B timeout 10 bash $D/client\(i).sh $D/origin-root.pem 127.0.0.1 \(port); d=$?
                    ip netns exec $A timeout 10 bash $D/client\(i).sh $D/loupe-root.pem 10.206.0.2 \(port); p=$?

                    """
            } else {
                probes += """
                    ip netns exec $B curl -s \(origin.clientFlags) --max-time 10 --cacert $D/origin-root.pem --resolve \(origin.host):\(port):127.0.0.1 https://\(origin.host):\(port)/ -o /dev/null; d=$?
                    ip netns exec $A curl -s \(origin.clientFlags) --max-time 10 --cacert $D/loupe-root.pem --resolve \(origin.host):\(port):10.206.0.2 https://\(origin.host):\(port)/ -o /dev/null; p=$?

                    """
            }
            probes += """
                echo "CASE \(i) direct=$d proxied=$p"

                """
        }
        let run = try RedirectedProxy.run("lm\(getpid() % 100_000)", directory: dir, subnet: "10.206.0", origins: origins.count,
                                          servers: servers, probes: probes, proxyFlags: "--flow-log $D/flows.jsonl", timeout: 300)
        let lines = run.lines
        // A case is only a case if its origin is up: a refused connection fails both ways.
        #expect(run.listening.first == "LISTENING \(origins.count)", "every origin must be listening: \(run.listening)")
        for (i, origin) in origins.enumerated() {
            guard let line = lines.first(where: { $0.hasPrefix("CASE \(i) ") }) else { Issue.record("\(origin.name): no result\n\(run.out)"); continue }
            let direct = line.contains("direct=0"), proxied = line.contains("proxied=0")
            #expect(direct == origin.directShouldWork, "\(origin.name): the direct baseline is not what the case means (\(line))")
            #expect(proxied == direct, "\(origin.name): through the proxy \(proxied ? "succeeded" : "failed") but direct \(direct ? "succeeded" : "failed") (\(line))")
        }
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("certificate has expired"), "the flow log names the reason: \(flows.prefix(2000))")
        #expect(flows.contains("stapled OCSP response says its certificate is revoked"), "a revoked staple is the reason, not a missing one")
        #expect(flows.contains("\"upstream_ocsp\":\"good\""), "the staple's verdict is logged")
    }
}
