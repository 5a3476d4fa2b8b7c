import Foundation
import TestSupport
import Testing
import Wire
@testable import TLS

/// Stapled OCSP on the upstream leg: asked for only when the client asked, a verified revoked
/// staple fails the handshake (certificate_revoked to the client), a good one is recorded so
/// Loupe can staple its own; an unusable staple counts as none.
@Suite struct OCSPTests {
    func handshake(staple: [UInt8]?, ask: Bool, pki: TestPKI, leaf: (Certificate, PrivateKey)) throws -> TLSSession {
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf.0], key: leaf.1, staple: staple)
        var offer = UpstreamOffer()
        offer.statusRequest = ask
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test", offer: offer)
        client.advanceHandshake()
        pump(client, server)
        return client
    }

    @Test func stapledStatusDecidesAndUnusableStaplesAreIgnored() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let stranger = try TestPKI(name: "Stranger")
        defer { TestEnv.remove(stranger.dir) }
        let leaf = try pki.leaf([.dns("origin.test")])
        let now = Date()
        func staple(revoked: Bool, by issuer: TestPKI? = nil, until: Date = now.addingTimeInterval(86_400)) throws -> [UInt8] {
            let signer = issuer ?? pki
            return try OCSP.response(for: leaf.0, issuer: signer.root, issuerKey: signer.rootKey, revoked: revoked, thisUpdate: now.addingTimeInterval(-60), nextUpdate: until)
        }
        let good = try handshake(staple: try staple(revoked: false), ask: true, pki: pki, leaf: leaf)
        #expect(good.state == .established && good.stapledStatus == .good)

        let revoked = try handshake(staple: try staple(revoked: true), ask: true, pki: pki, leaf: leaf)
        guard case .failed(let why) = revoked.state else { Issue.record("a revoked staple was accepted: \(revoked.state)"); return }
        #expect(why.contains("revoked") && revoked.failureAlert == 44, "\(why)")

        let unasked = try handshake(staple: try staple(revoked: true), ask: false, pki: pki, leaf: leaf)
        #expect(unasked.state == .established && unasked.stapledStatus == nil, "a client that never asked decides without it, as direct")

        let forged = try handshake(staple: try staple(revoked: true, by: stranger), ask: true, pki: pki, leaf: leaf)
        #expect(forged.state == .established, "a staple no trusted responder signed counts as none")
        if case .unusable? = forged.stapledStatus {} else { Issue.record("\(String(describing: forged.stapledStatus))") }

        let stale = try handshake(staple: try staple(revoked: true, until: now.addingTimeInterval(-3600)), ask: true, pki: pki, leaf: leaf)
        #expect(stale.state == .established, "an out-of-date staple counts as none: \(String(describing: stale.stapledStatus))")

        let none = try handshake(staple: nil, ask: true, pki: pki, leaf: leaf)
        #expect(none.state == .established && none.stapledStatus == nil)
    }

    /// A resumption carries no staple: the full handshake's good verdict stands for the
    /// sessions resumed from it (so Loupe's leaf is stapled for a client that asks — GnuTLS
    /// refuses a must-staple leaf without it); a session that had none resumes with none.
    @Test func aResumedSessionKeepsItsFullHandshakesStapleVerdict() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let leaf = try pki.leaf([.dns("origin.test")])
        let now = Date()
        let good = try OCSP.response(for: leaf.0, issuer: pki.root, issuerKey: pki.rootKey, thisUpdate: now.addingTimeInterval(-60), nextUpdate: now.addingTimeInterval(86_400))
        let serverContext = try TLSContext.server(), clientContext = try TLSContext.client(trustBundle: pki.bundle)
        var offer = UpstreamOffer()
        offer.statusRequest = true
        for (key, staple) in [("stapled", good as [UInt8]?), ("unstapled", nil)] {
            var seen: [(resumed: Bool, status: StapledStatus?)] = []
            for _ in 0..<3 {
                let server = try TLSSession.server(serverContext, chain: [leaf.0], key: leaf.1, staple: staple)
                let client = try TLSSession.client(clientContext, serverName: "origin.test", resumptionKey: key, offer: offer)
                client.advanceHandshake()
                pump(client, server)
                _ = client.read()  // TLS 1.3 tickets arrive after the handshake
                #expect(client.state == .established)
                seen.append((client.resumed, client.stapledStatus))
            }
            #expect(seen.map(\.resumed) == [false, true, true], "\(key)")
            #expect(seen.map(\.status) == (staple == nil ? [nil, nil, nil] : [.good, .good, .good]), "\(key): \(seen)")
        }
    }

    @Test func theClientsStatusRequestIsMirrored() throws {
        let offers = try TLSContext.client().offers
        let asks = ClientHello(supportedVersions: [0x0304], cipherSuites: [0x1301], extensionTypes: [0, 5, 43], signatureAlgorithms: [0x0403])
        #expect(try offers.offer(mirroring: asks).statusRequest)
        var silent = asks
        silent.extensionTypes = [0, 43]
        #expect(try !offers.offer(mirroring: silent).statusRequest)
    }
}
