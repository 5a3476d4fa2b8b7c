import COpenSSL
import Foundation
import TestSupport
import Testing
import Wire
@testable import TLS

/// The upstream leg offers only what the client's hello offered: the origin can settle on
/// nothing the client would have refused directly.
@Suite struct UpstreamOfferTests {
    static let rsaPSS: [UInt16] = [0x0804, 0x0805, 0x0806]
    static let ecdheRSA: [UInt16] = [0xC02F, 0xC030]

    static func hello(versions: [UInt16] = [0x0304, 0x0303], suites: [UInt16], schemes: [UInt16] = [0x0403, 0x0804, 0x0401], groups: [UInt16] = [0x001D, 0x0017]) -> ClientHello {
        ClientHello(supportedVersions: versions, cipherSuites: suites, signatureAlgorithms: schemes, supportedGroups: groups)
    }

    @Test func theCatalogueIsWhatAClientHelloOfLoupesWouldCarry() throws {
        let offers = try TLSContext.client().offers
        #expect(offers.tls13.map(\.name) == ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256", "TLS_AES_256_GCM_SHA384"])
        #expect(offers.tls12.contains(.init(id: 0xC02B, name: "ECDHE-ECDSA-AES128-GCM-SHA256")))
        #expect(offers.tls12.contains { $0.id == 0xC013 }, "CBC suites are in OpenSSL's default list")
        #expect(!offers.tls12.contains { $0.name.contains("PSK") || $0.name.contains("SRP") }, "a client hello of Loupe's never carries PSK or SRP suites")
        #expect(!offers.tls12.contains { $0.name.contains("DES") || $0.name.contains("RC4") })
    }

    @Test func aes128GCMComesBeforeAES256GCMForEachKeyExchange() throws {
        let defaults = ["ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-SHA384",
                        "DHE-RSA-AES256-GCM-SHA384", "AES256-GCM-SHA384", "AES128-GCM-SHA256", "AES128-SHA"]
        #expect(OfferCatalog.aes128First(defaults) == [
            "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-SHA384", "DHE-RSA-AES256-GCM-SHA384",
            "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA"], "a twin that is missing (DHE-RSA-AES128-GCM) is not invented")
        // The context's own TLS 1.2 list: the same suites as OpenSSL's default, AES-128-GCM first.
        let offers = try TLSContext.client().offers
        #expect(offers.tls12.first?.name == "ECDHE-ECDSA-AES128-GCM-SHA256")
        let defaultList = TestEnv.sh("openssl ciphers -s -tls1_2 DEFAULT").out.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(Set(offers.tls12.map(\.name)) == Set(defaultList.split(separator: ":").map(String.init)))
    }

    @Test func everyNameInTheTablesIsOneOpenSSLAccepts() throws {
        let context = try TLSContext.client()
        var offer = UpstreamOffer()
        offer.signatureSchemes = OfferCatalog.signatureSchemes.values.sorted().joined(separator: ":")
        offer.groups = OfferCatalog.groups.values.sorted().joined(separator: ":")
        offer.cipherList = context.offers.tls12.map(\.name).joined(separator: ":")
        offer.ciphersuites = context.offers.tls13.map(\.name).joined(separator: ":")
        _ = try TLSSession.client(context, serverName: "origin.test", offer: offer)
    }

    @Test func aClientOfferingAllOfLoupesSuitesChangesNoList() throws {
        let offers = try TLSContext.client().offers
        let all = offers.tls13.map(\.id) + offers.tls12.map(\.id)
        let offer = try offers.offer(mirroring: Self.hello(suites: [0x0A0A] + all.reversed()))
        #expect(offer.cipherList == nil && offer.ciphersuites == nil && offer.minimum == nil && offer.maximum == nil)
        #expect(offer.signatureSchemes == "ecdsa_secp256r1_sha256:rsa_pss_rsae_sha256:rsa_pkcs1_sha256")
        #expect(offer.groups == "X25519:P-256")
    }

    @Test func aSubsetKeepsLoupesOrderAndDropsWhatLoupeLacks() throws {
        let offers = try TLSContext.client().offers
        // GREASE, 3DES (0x000A) and RC4 (0x0005) are not Loupe's; CBC and GCM ECDHE-RSA are.
        let offer = try offers.offer(mirroring: Self.hello(suites: [0x1A1A, 0x1302, 0xC013, 0x000A, 0x0005, 0xC02F]))
        #expect(offer.cipherList == "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA")
        #expect(offer.ciphersuites == "TLS_AES_256_GCM_SHA384")
    }

    @Test func versionsFollowWhichSuitesAreShared() throws {
        let offers = try TLSContext.client().offers
        let only13 = try offers.offer(mirroring: Self.hello(suites: [0x1301, 0x000A]))
        #expect(only13.minimum == .tls13 && only13.cipherList == nil, "no TLS 1.2 suite in common: TLS 1.3 only")
        let only12 = try offers.offer(mirroring: Self.hello(suites: [0xC02B]))
        #expect(only12.maximum == .tls12 && only12.ciphersuites == nil)
        let legacy = try offers.offer(mirroring: Self.hello(versions: [0x0303], suites: [0x1301, 0xC02B]))
        #expect(legacy.maximum == .tls12, "a TLS 1.2 client's TLS 1.3 suites count for nothing")
        #expect(throws: NoCommonParameters.self) { try offers.offer(mirroring: Self.hello(suites: [0x000A, 0x0005])) }
        #expect(throws: NoCommonParameters.self) { try offers.offer(mirroring: Self.hello(versions: [0x0303], suites: [0x1301])) }
    }

    @Test func schemesAndGroupsKeepTheClientsOrderOnce() throws {
        let offers = try TLSContext.client().offers
        let offer = try offers.offer(mirroring: Self.hello(suites: [0x1301], schemes: [0x0A0A, 0x0806, 0x0806, 0x0403], groups: [0x2A2A, 0x11EC, 0x0018, 0x001D, 0x0018]))
        #expect(offer.signatureSchemes == "rsa_pss_rsae_sha512:ecdsa_secp256r1_sha256")
        #expect(offer.groups == "P-384:X25519", "X25519MLKEM768 (0x11EC) is unknown to OpenSSL 3.0")
        #expect(throws: NoCommonParameters.self) { try offers.offer(mirroring: Self.hello(suites: [0x1301], schemes: [0x0A0A, 0x081A])) }
        let noGroups = try offers.offer(mirroring: Self.hello(suites: [0xC02F], schemes: [0x0401], groups: [0x11EC]))
        #expect(noGroups.groups == nil, "no known group: the context's own (DHE and RSA need none)")
        let same = try offers.offer(mirroring: Self.hello(suites: [0x1301], schemes: [0x0806, 0x0403], groups: [0x0018, 0x001D]))
        #expect(offer.fingerprint != noGroups.fingerprint && offer.fingerprint == same.fingerprint)
    }

    /// The offer reaches OpenSSL: against an ECDSA origin, a client held to ECDHE-RSA suites
    /// (TLS 1.2) or to RSA-PSS signatures (TLS 1.3) gets no upstream session; one that offers
    /// ECDSA does, on a suite it offered.
    @Test func anOriginTheClientCouldNotMeetFailsTheUpstreamLeg() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let clientContext = try TLSContext.client(trustBundle: pki.bundle)
        let cases: [(String, ClientHello, Bool)] = [
            ("TLS 1.2, ECDHE-RSA suites only", Self.hello(versions: [0x0303], suites: Self.ecdheRSA, schemes: [0x0403, 0x0401]), false),
            ("TLS 1.3, RSA-PSS signatures only", Self.hello(versions: [0x0304], suites: [0x1301], schemes: Self.rsaPSS), false),
            ("TLS 1.2, ECDHE-ECDSA CBC", Self.hello(versions: [0x0303], suites: [0xC009], schemes: [0x0403]), true),
            ("TLS 1.3, ChaCha20 only", Self.hello(suites: [0x1303]), true),
        ]
        for (label, hello, works) in cases {
            let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
            let offer = try clientContext.offers.offer(mirroring: hello)
            let client = try TLSSession.client(clientContext, serverName: "origin.test", offer: offer)
            client.advanceHandshake()
            pump(client, server)
            #expect((client.state == .established) == works, "\(label): \(client.state)")
            if works, let cipher = client.cipher {
                let id = (clientContext.offers.tls12 + clientContext.offers.tls13).first { $0.name == cipher }?.id
                #expect(id.map(hello.cipherSuites.contains) == true, "\(label): negotiated \(cipher), which the client did not offer")
            }
            if !works { #expect(client.failureAlert == 40, "\(label): the client hears handshake_failure") }
        }
    }

    /// RFC 7507: a client retrying at TLS 1.2 with TLS_FALLBACK_SCSV is refused by an origin that
    /// speaks 1.3 — Loupe's upstream leg must say the same, or the downgrade goes through.
    @Test func aFallbackRetryIsAnnouncedUpstream() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let context = try TLSContext.client(trustBundle: pki.bundle)
        for (suites, works) in [([0xC02B, 0x5600], false), ([0xC02B], true)] as [([UInt16], Bool)] {
            let offer = try context.offers.offer(mirroring: Self.hello(versions: [0x0303], suites: suites, schemes: [0x0403]))
            #expect(offer.fallback == !works)
            let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
            let client = try TLSSession.client(context, serverName: "origin.test", maximum: .tls12, offer: offer)
            client.advanceHandshake()
            pump(client, server)
            #expect((client.state == .established) == works, "\(suites): \(client.state)")
            if !works { #expect(client.failureAlert == 86, "the client hears inappropriate_fallback") }
        }
    }

    @Test func theResumptionCacheIsBounded() {
        var cache = SessionCache(capacity: 3)
        let session = { ResumableSession(SSL_SESSION_new()!) }
        for i in 0..<10 { cache.insert(session(), for: "k\(i)") }
        #expect(cache.count == 3)
        #expect(cache["k9"] != nil && cache["k7"] != nil && cache["k6"] == nil)
        cache.insert(session(), for: "k7")  // a replaced entry keeps its place in line
        cache.insert(session(), for: "k10")
        #expect(cache.count == 3 && cache["k7"] == nil && cache["k8"] != nil && cache["k10"] != nil)
    }
}
