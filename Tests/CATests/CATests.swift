import Foundation
import TestSupport
import Testing
@testable import CA
@testable import Store
import TLS

/// A root in a scratch store.
func withAuthority(_ profile: CAProfile = CAProfile(), _ body: (RootAuthority, String) throws -> Void) throws {
    let dir = TestEnv.scratch("ca")
    defer { TestEnv.remove(dir) }
    let store = try SealedStore.create(stateDirectory: dir, provider: .hostKey)
    try body(RootAuthority(store: store, profile: profile), dir)
}

func writeFile(_ path: String, _ text: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }

@Suite struct ProfileTests {
    @Test func theShippedProfileParses() throws {
        let profile = try CAProfile.load(path: "\(TestEnv.packageRoot)/ca/root.toml")
        #expect(profile.rootKey == .ecP256)
        #expect(profile.rootSubject.map(\.field) == ["O", "OU", "CN"])
        #expect(profile.leafMaxLifetimeDays == 397)
    }

    @Test(arguments: [
        ("[root]\nkey = \"dsa\"", 2, "must be one of"),
        ("[root]\nlifetime_days = \"ten\"", 2, "must be an integer"),
        ("[leaf]\nmax_lifetime_days = 800", 2, "between 1 and 397"),
        ("[root]\ncolour = 1", 2, "unknown key 'root.colour'"),
        ("[root.subject]\nO = \"x\"", 1, "needs a CN"),
        ("[root.subject]\nCN = \"x\"\nemail = \"a\"", 3, "not a supported attribute"),
        ("[root.name_constraints]\npermitted_dns = [\"a,b\"]", 2, "not a DNS name"),
        ("[root.name_constraints]\npermitted_ip = [\"10.0.0.0/33\"]", 2, "not a CIDR"),
        ("[root\n", 1, "expected ']'"),
    ])
    func badProfilesNameFileAndLine(text: String, line: Int, message: String) {
        do {
            _ = try CAProfile.parse(text, file: "root.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.file == "root.toml" && error.line == line, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }

    @Test func nameConstraintSemantics() throws {
        let p = try CAProfile.parse("""
        [root.name_constraints]
        permitted_dns = ["corp.example", ".svc.example"]
        excluded_dns = ["secret.corp.example"]
        permitted_ip = ["10.0.0.0/8"]
        """, file: "p")
        #expect(p.permits(.dns("corp.example")) && p.permits(.dns("a.corp.example")))
        #expect(!p.permits(.dns("svc.example")) && p.permits(.dns("x.svc.example")))
        #expect(!p.permits(.dns("x.secret.corp.example")) && !p.permits(.dns("evilcorp.example")))
        #expect(p.permits(.ip([10, 9, 8, 7])) && !p.permits(.ip([11, 0, 0, 1])))
        #expect(p.nameConstraintsValue == "critical,permitted;DNS:corp.example,permitted;DNS:.svc.example,permitted;IP:10.0.0.0/255.0.0.0,excluded;DNS:secret.corp.example")
    }
}

@Suite struct RootLifecycleTests {
    @Test func initIsIdempotentAndTheRootHasTheRightShape() throws {
        try withAuthority { authority, _ in
            guard case .created(let root) = try authority.initialize() else { Issue.record("expected a new root"); return }
            guard case .existing(let again) = try authority.initialize(algorithm: .rsa3072) else { Issue.record("must keep the root"); return }
            #expect(again.certificate.der == root.certificate.der)
            let cert = root.certificate
            #expect(cert.subject.contains("CN=Loupe Root CA \(RootAuthority.hostname()) "))
            #expect(cert.isCA && cert.isSigned(by: cert))
            #expect(cert.keyDescription == "EC P-256")
            let text = TestEnv.sh("openssl x509 -noout -text", stdin: Array(cert.pem.utf8)).out
            #expect(text.contains("CA:TRUE, pathlen:0"))
            #expect(text.contains("Certificate Sign, CRL Sign"))
            #expect(text.contains("Subject Key Identifier"))
            #expect(text.contains("X509v3 Basic Constraints: critical") && text.contains("X509v3 Key Usage: critical"))
            // Two hosts (or two inits after a wipe) never share a subject: the id differs.
            let other = try RootAuthority(store: authority.store, profile: authority.profile).rotate().new
            #expect(other.certificate.subject != cert.subject)
        }
    }

    @Test(arguments: [KeyAlgorithm.ecP384, .rsa3072])
    func otherKeyTypes(algorithm: KeyAlgorithm) throws {
        try withAuthority { authority, _ in
            guard case .created(let root) = try authority.initialize(algorithm: algorithm) else { Issue.record("expected a root"); return }
            #expect(KeyAlgorithm(keyDescription: root.certificate.keyDescription) == algorithm)
            let leaf = try LeafMinter(root: root, profile: authority.profile).mint(.forNames(["a.test"]))
            #expect(leaf.certificate.isSigned(by: root.certificate))
        }
    }

    @Test func rotateKeepsPreviousUntilRetired() throws {
        try withAuthority { authority, dir in
            _ = try authority.initialize()
            let first = try #require(try authority.root())
            let (new, old) = try authority.rotate()
            #expect(old.certificate.der == first.certificate.der)
            #expect(try authority.root()?.certificate.der == new.certificate.der)
            #expect(try authority.root(.previous)?.certificate.der == first.certificate.der)
            #expect(throws: CAError.self) { try authority.rotate() }  // previous still kept
            // Survives reopening.
            let reopened = RootAuthority(store: try SealedStore.open(stateDirectory: dir), profile: authority.profile)
            #expect(try reopened.root(.previous)?.certificate.der == first.certificate.der)
            _ = try reopened.retirePrevious()
            #expect(try reopened.root(.previous) == nil)
            #expect(reopened.store.find(.key).count == 1)
            #expect(throws: CAError.self) { try reopened.retirePrevious() }
        }
    }

    @Test func aRotationInterruptedAfterDemotionStillHasACurrentRoot() throws {
        try withAuthority { authority, _ in
            _ = try authority.initialize()
            let (new, _) = try authority.rotate()
            // Simulate a crash between "demote old" and "promote new".
            try authority.store.update(new.certificateRef, attributes: ["role": "next"])
            try authority.store.update(new.keyRef, attributes: ["role": "next"])
            #expect(try authority.root()?.certificate.der == new.certificate.der)
        }
    }
}

@Suite struct LeafMintingTests {
    func root(_ profile: CAProfile = CAProfile(), _ body: (Root, LeafMinter) throws -> Void) throws {
        try withAuthority(profile) { authority, _ in
            _ = try authority.initialize()
            let root = try #require(try authority.root())
            try body(root, try LeafMinter(root: root, profile: profile))
        }
    }

    @Test func leafForNamesVerifiesWithOpenSSL() throws {
        try root { root, minter in
            let leaf = try minter.mint(.forNames(["Www.Example.TEST.", "192.0.2.7", "2001:db8::7"]))
            let cert = leaf.certificate
            #expect(cert.commonName == "www.example.test")
            #expect(cert.subjectAltNames.map(\.description) == ["DNS:www.example.test", "IP:192.0.2.7", "IP:2001:db8::7"])
            #expect(cert.serialHex.count == 32)  // 128 bits, positive, no leading zero octet
            #expect(cert.publicKeyDER == (try minter.leafKey.publicKeyDER()))
            let dir = TestEnv.scratch("verify")
            defer { TestEnv.remove(dir) }
            try writeFile("\(dir)/root.pem", root.certificate.pem)
            try writeFile("\(dir)/leaf.pem", cert.pem)
            let verify = TestEnv.sh("openssl verify -CAfile \(dir)/root.pem -purpose sslserver -verify_hostname www.example.test \(dir)/leaf.pem")
            #expect(verify.status == 0 && verify.out.contains("OK"), "\(verify)")
            #expect(TestEnv.sh("openssl verify -CAfile \(dir)/root.pem -verify_ip 192.0.2.7 \(dir)/leaf.pem").status == 0)
            #expect(TestEnv.sh("openssl verify -CAfile \(dir)/root.pem -verify_hostname other.test \(dir)/leaf.pem").status != 0)
            let text = TestEnv.sh("openssl x509 -noout -text -in \(dir)/leaf.pem").out
            #expect(text.contains("TLS Web Server Authentication") && text.contains("Authority Key Identifier"))
            #expect(text.contains("CA:FALSE"))
        }
    }

    @Test func validityIsClampedToRootUpstreamAndMaximum() throws {
        var profile = CAProfile()
        profile.leafMaxLifetimeDays = 30
        try root(profile) { root, minter in
            let now = Date()
            let leaf = try minter.mint(.forNames(["a.test"]), now: now)
            #expect(leaf.certificate.notAfter <= now.addingTimeInterval(30 * 86_400 + 1))
            #expect(leaf.certificate.notBefore >= root.certificate.notBefore)
            // Never beyond the upstream's own expiry.
            var request = LeafRequest.forNames(["b.test"])
            request.notAfterCap = now.addingTimeInterval(3 * 86_400)
            #expect(abs(try minter.mint(request, now: now).certificate.notAfter.timeIntervalSince(now.addingTimeInterval(3 * 86_400))) < 2)
            // Never beyond the root's.
            let late = root.certificate.notAfter.addingTimeInterval(-86_400)
            #expect(try minter.mint(.forNames(["c.test"]), now: late).certificate.notAfter <= root.certificate.notAfter)
            // Nothing valid is possible after the upstream expired.
            request.notAfterCap = now.addingTimeInterval(-10)
            #expect(throws: CAError.self) { try minter.mint(request, now: now) }
        }
    }

    @Test func mirroringCopiesSubjectAndNamesAsTheyAre() throws {
        try root { root, minter in
            let upstreamKey = try PrivateKey.generate(.ecP256)
            func upstream(_ names: [SubjectAltName]) throws -> Certificate {
                let spec = CertificateSpec(subject: .attributes([("C", "US"), ("O", "Origin Inc"), ("CN", "origin.test")]),
                                           serial: try CertificateSpec.randomSerial(), notBefore: Date().addingTimeInterval(-100),
                                           notAfter: Date().addingTimeInterval(7 * 86_400), publicKey: upstreamKey,
                                           extensions: names.isEmpty ? [] : [try CertificateExtension.subjectAltNames(names)])
                return try CertificateBuilder.sign(spec, issuer: nil, issuerKey: upstreamKey)
            }
            let withSANs = try upstream([.dns("origin.test"), .dns("*.origin.test"), .ip([203, 0, 113, 5])])
            let leaf = try minter.mint(.mirroring(withSANs)).certificate
            #expect(leaf.subject == withSANs.subject)
            #expect(leaf.subjectAltNames == withSANs.subjectAltNames)
            #expect(leaf.notAfter <= withSANs.notAfter)
            #expect(leaf.issuer == root.certificate.subject)
            // A CN-only upstream gets a CN-only leaf: no SAN is invented.
            let cnOnly = try upstream([])
            #expect(try minter.mint(.mirroring(cnOnly)).certificate.subjectAltNames.isEmpty)
            // Extra names (a hello without SNI: the destination IP) are added once.
            let extra = try minter.mint(.mirroring(withSANs, extraNames: [.ip([198, 51, 100, 1]), .dns("origin.test")])).certificate
            #expect(extra.subjectAltNames.map(\.description) == ["DNS:origin.test", "DNS:*.origin.test", "IP:203.0.113.5", "IP:198.51.100.1"])
        }
    }

    /// A self-signed upstream certificate for origin.test with these extensions beside its SAN.
    static func upstream(_ extra: [(String, String)]) throws -> Certificate {
        let key = try PrivateKey.generate(.ecP256)
        let extensions = [try CertificateExtension.subjectAltNames([.dns("origin.test")])] + (try extra.map { try CertificateExtension.make($0.0, $0.1) })
        let spec = CertificateSpec(subject: .attributes([("CN", "origin.test")]), serial: try CertificateSpec.randomSerial(),
                                   notBefore: Date().addingTimeInterval(-100), notAfter: Date().addingTimeInterval(7 * 86_400),
                                   publicKey: key, extensions: extensions)
        return try CertificateBuilder.sign(spec, issuer: nil, issuerKey: key)
    }

    /// An upstream whose keyUsage forbids signatures hands the prohibition on: a client that
    /// checks key usage (GnuTLS) refuses the masquerade as it refuses the real server. Other
    /// upstreams get Loupe's own keyUsage.
    @Test func aKeyUsageWithoutSignaturesIsMirrored() throws {
        try root { root, minter throws in
            func upstream(_ usage: String?) throws -> Certificate { try Self.upstream(usage.map { [("keyUsage", $0)] } ?? []) }
            #expect(try upstream("critical,keyEncipherment").keyUsage == "critical,keyEncipherment")
            let noSignatures = try minter.mint(.mirroring(try upstream("critical,keyEncipherment"))).certificate
            #expect(noSignatures.keyUsage == "critical,keyEncipherment")
            for usage in ["critical,digitalSignature,keyEncipherment", "digitalSignature", nil] {
                #expect(try minter.mint(.mirroring(try upstream(usage))).certificate.keyUsage == "critical,digitalSignature", "\(usage ?? "none")")
            }
        }
    }

    /// OCSP must-staple (TLS Feature) is mirrored as it is, so a client that enforces it fails
    /// without a staple exactly as it would directly; an upstream without it gives a leaf
    /// without it.
    @Test func theTLSFeatureIsMirrored() throws {
        try root { root, minter throws in
            func upstream(_ features: String?) throws -> Certificate { try Self.upstream(features.map { [("tlsfeature", $0)] } ?? []) }
            #expect(try upstream("status_request").tlsFeature == "5")
            #expect(try minter.mint(.mirroring(try upstream("status_request"))).certificate.tlsFeature == "5")
            #expect(try minter.mint(.mirroring(try upstream("status_request,status_request_v2"))).certificate.tlsFeature == "5,17")
            #expect(try minter.mint(.mirroring(try upstream(nil))).certificate.tlsFeature == nil)
        }
    }

    /// Clients whose hello cannot verify ECDSA get the same leaf on the shared RSA key (a
    /// separate cache entry). A mirrored empty subject keeps its SAN critical (RFC 5280).
    @Test func rsaLeavesAndEmptySubjects() throws {
        try root { root, minter in
            let upstreamKey = try PrivateKey.generate(.ecP256)
            let spec = CertificateSpec(subject: .attributes([]), serial: try CertificateSpec.randomSerial(),
                                       notBefore: Date().addingTimeInterval(-100), notAfter: Date().addingTimeInterval(7 * 86_400), publicKey: upstreamKey,
                                       extensions: [try CertificateExtension.subjectAltNames([.dns("origin.test")], critical: true)])
            let upstream = try CertificateBuilder.sign(spec, issuer: nil, issuerKey: upstreamKey)
            #expect(LeafRequest.mirroring(upstream) != .mirroring(upstream, keyType: .rsa2048), "the cache must not hand one for the other")
            let ecdsa = try minter.mint(.mirroring(upstream))
            let rsa = try minter.mint(.mirroring(upstream, keyType: .rsa2048))
            #expect(ecdsa.certificate.keyDescription == "EC P-256" && rsa.certificate.keyDescription == "RSA 2048")
            #expect(rsa.certificate.publicKeyDER == (try rsa.key.publicKeyDER()))
            var other = LeafRequest.forNames(["b.test"])
            other.keyType = .rsa2048
            #expect(try minter.mint(other).key.publicKeyDER() == (try rsa.key.publicKeyDER()), "one shared RSA key, made once")
            let p384 = try minter.mint(.mirroring(upstream, keyType: .ecdsaP384))
            #expect(try p384.certificate.keyDescription == "EC P-384" && p384.certificate.publicKeyDER == p384.key.publicKeyDER())
            #expect(try minter.mint(.mirroring(upstream, keyType: .ecdsaP384)).key.publicKeyDER() == (try p384.key.publicKeyDER()), "one shared P-384 key")
            let p521 = try minter.mint(.mirroring(upstream, keyType: .ecdsaP521))
            #expect(try p521.certificate.keyDescription == "EC P-521" && p521.certificate.publicKeyDER == p521.key.publicKeyDER())
            let dir = TestEnv.scratch("rsa-leaf")
            defer { TestEnv.remove(dir) }
            try writeFile("\(dir)/root.pem", root.certificate.pem)
            try writeFile("\(dir)/rsa.pem", rsa.certificate.pem)
            let verify = TestEnv.sh("openssl verify -CAfile \(dir)/root.pem -purpose sslserver -verify_hostname origin.test \(dir)/rsa.pem")
            #expect(verify.status == 0, "\(verify)")
            let text = TestEnv.sh("openssl x509 -noout -text -in \(dir)/rsa.pem").out
            #expect(text.contains("Digital Signature, Key Encipherment"), "TLS 1.2 RSA key exchange needs keyEncipherment")
            #expect(rsa.certificate.subject.isEmpty && text.contains("Subject Alternative Name: critical"), "\(text.prefix(1500))")
        }
    }

    @Test func nameConstraintsRefuseOutsideNames() throws {
        let profile = try CAProfile.parse("[root.name_constraints]\npermitted_dns = [\"corp.test\"]", file: "p")
        try root(profile) { root, minter in
            #expect(try minter.mint(.forNames(["www.corp.test"])).certificate.isSigned(by: root.certificate))
            #expect(throws: CAError.self) { try minter.mint(.forNames(["bank.test"])) }
            let dir = TestEnv.scratch("nc")
            defer { TestEnv.remove(dir) }
            try writeFile("\(dir)/root.pem", root.certificate.pem)
            #expect(TestEnv.sh("openssl x509 -noout -text -in \(dir)/root.pem").out.contains("Permitted"))
        }
    }

    @Test func longAndHostileNames() throws {
        try root { _, minter in
            let long = String(repeating: "a", count: 63) + "." + String(repeating: "b", count: 40) + ".test"
            let leaf = try minter.mint(.forNames([long]))
            #expect(leaf.certificate.commonName == nil)  // CN is capped at 64; the SAN carries it
            #expect(leaf.certificate.subjectAltNames == [.dns(long)])
            let hostile = try minter.mint(.forNames(["a.test,DNS:bank.test"]))
            #expect(hostile.certificate.subjectAltNames == [.dns("a.test,dns:bank.test")])
        }
    }
}

@Suite struct LeafCacheTests {
    @Test func singleFlightUnderConcurrency() async throws {
        let dir = TestEnv.scratch("cache")
        defer { TestEnv.remove(dir) }
        let authority = RootAuthority(store: try SealedStore.create(stateDirectory: dir, provider: .hostKey), profile: CAProfile())
        _ = try authority.initialize()
        let cache = LeafCache(minter: try LeafMinter(root: try #require(try authority.root()), profile: CAProfile()))
        let request = LeafRequest.forNames(["new-host.test"])
        let serials = try await withThrowingTaskGroup(of: String.self) { group in
            for _ in 0..<1000 { group.addTask { try await cache.leaf(for: request).certificate.serialHex } }
            var all = Set<String>()
            for try await serial in group { all.insert(serial) }
            return all
        }
        #expect(serials.count == 1)
        let stats = cache.statistics
        #expect(stats.mints == 1)
        #expect(stats.misses == 1 && stats.hits + stats.joined == 999)
        #expect(cache.cached(request)?.certificate.serialHex == serials.first)
        // Another host is another mint; the same names again are a hit.
        _ = try await cache.leaf(for: .forNames(["other.test"]))
        _ = try await cache.leaf(for: .forNames(["other.test"]))
        #expect(cache.statistics.mints == 2)
    }

    @Test func failuresAreNotCachedAndCapacityIsBounded() async throws {
        let dir = TestEnv.scratch("cache2")
        defer { TestEnv.remove(dir) }
        let profile = try CAProfile.parse("[root.name_constraints]\npermitted_dns = [\"ok.test\"]", file: "p")
        let authority = RootAuthority(store: try SealedStore.create(stateDirectory: dir, provider: .hostKey), profile: profile)
        _ = try authority.initialize()
        let cache = LeafCache(minter: try LeafMinter(root: try #require(try authority.root()), profile: profile), capacity: 3)
        await #expect(throws: CAError.self) { try await cache.leaf(for: .forNames(["no.test"])) }
        await #expect(throws: CAError.self) { try await cache.leaf(for: .forNames(["no.test"])) }
        #expect(cache.statistics.failures == 2)
        for i in 0..<10 { _ = try await cache.leaf(for: .forNames(["h\(i).ok.test"])) }
        #expect(cache.count == 3)
        #expect(cache.cached(.forNames(["h9.ok.test"])) != nil && cache.cached(.forNames(["h0.ok.test"])) == nil)
    }
}

@Suite struct ExportTests {
    @Test func formatsAndStableProfileIdentifiers() throws {
        try withAuthority { authority, _ in
            _ = try authority.initialize()
            let cert = try #require(try authority.root()).certificate
            #expect(try RootExport.render(cert, as: .der) == cert.der)
            #expect(String(decoding: try RootExport.render(cert, as: .pem), as: UTF8.self) == cert.pem)
            let line = String(decoding: try RootExport.render(cert, as: .mdm), as: UTF8.self)
            #expect(line.hasPrefix("<result>loupe-root sha256=\(cert.sha256Fingerprint) der=") && line.hasSuffix("</result>\n"))
            #expect(try RootExport.importCertificate(Array(line.utf8)).der == cert.der)
            let tampered = line.replacingOccurrences(of: "sha256=\(cert.sha256Fingerprint.prefix(4))", with: "sha256=0000")
            #expect(throws: CAError.self) { try RootExport.importCertificate(Array(tampered.utf8)) }
            let template = try String(contentsOfFile: "\(TestEnv.packageRoot)/ca/apple-root.mobileconfig", encoding: .utf8)
            let a = RootExport.mobileconfig(cert, template: template)
            #expect(a == RootExport.mobileconfig(cert, template: template))
            #expect(!a.contains("{{"))
            #expect(throws: CAError.self) { try RootExport.render(cert, as: .mobileconfig, template: nil) }
        }
    }
}
