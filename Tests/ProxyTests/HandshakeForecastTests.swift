import Foundation
import NIOCore
import TestSupport
import Testing
import CA
@testable import Proxy
import TLS

/// The client-facing handshake worked out while the upstream answers (HandshakeForecasts): it is
/// used only when the upstream, verified, asked for exactly what the last connection to it did,
/// and nothing of it reaches the client before then.
@Suite struct HandshakeForecastTests {
    struct Round {
        var client: TLSSession
        var log: [ConnectionMachine.Command]
    }

    /// One bumped connection through a fresh machine to an origin serving `chain` (and
    /// `staple`, to a client that asks for certificate status with `askStatus`).
    func connect(_ p: Playbook, chain: (Certificate, PrivateKey), originALPN: [String] = ["h2", "http/1.1"], keyLog: KeyLog? = nil,
                 staple: [UInt8]? = nil, askStatus: Bool = false) throws -> Round {
        p.log = []
        let m = try p.machine(keyLog: keyLog)
        let origin = try TLSSession.server(try TLSContext.server(), chain: [chain.0], key: chain.1, alpn: originALPN, staple: staple)
        var offer = UpstreamOffer()
        offer.statusRequest = askStatus
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test", alpn: ["h2", "http/1.1"],
                                           offer: offer)
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        return Round(client: client, log: p.log)
    }

    func playbook() throws -> Playbook {
        let p = try Playbook()
        p.forecasts = HandshakeForecasts()
        p.reuseLeaves = true
        return p
    }

    /// Handshake records (content type 22) sent to the client, and where the first one went.
    func firstHandshakeToClient(_ log: [ConnectionMachine.Command]) -> Int? {
        log.firstIndex { if case .sendClient(let bytes) = $0 { bytes.readableBytesView.first == 22 } else { false } }
    }

    @Test func theSecondConnectionsHandshakeIsPreparedAndSentOnlyOnceTheUpstreamIsVerified() throws {
        let p = try playbook()
        let origin = try p.originPKI.leaf([.dns("www.origin.test")])
        let first = try connect(p, chain: origin)
        #expect(first.client.state == .established && first.client.alpn == "h2")
        #expect(!first.log.contains(.afterSending), "no forecast yet: nothing to prepare")
        let second = try connect(p, chain: origin)
        #expect(second.client.state == .established && second.client.alpn == "h2")
        #expect(second.client.peerCertificate?.sha256Fingerprint == first.client.peerCertificate?.sha256Fingerprint)
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 1, discarded: 0))
        // Prepared after the upstream's hello left, sent after the leaf for the verified upstream.
        let hello = second.log.firstIndex { if case .sendUpstream = $0 { true } else { false } }
        let prepare = second.log.firstIndex(of: .afterSending)
        let mint = second.log.firstIndex { if case .mintLeaf = $0 { true } else { false } }
        let toClient = firstHandshakeToClient(second.log)
        #expect(hello != nil && prepare != nil && hello! < prepare!, "\(second.log)")
        #expect(mint != nil && toClient != nil && mint! < toClient!, "\(second.log)")
    }

    /// Never launder: the upstream now fails verification; the prepared flight is thrown away
    /// unsent and the client gets the alert it would have got without a forecast.
    @Test func aPreparedHandshakeIsNeverSentForAnUpstreamThatFailsVerification() throws {
        let p = try playbook()
        _ = try connect(p, chain: try p.originPKI.leaf([.dns("www.origin.test")]))
        let expired = try p.originPKI.leaf([.dns("www.origin.test")], notBefore: Date().addingTimeInterval(-86_400 * 9), notAfter: Date().addingTimeInterval(-86_400))
        let second = try connect(p, chain: expired)
        guard case .failed = second.client.state else { Issue.record("the client must fail: \(second.client.state)"); return }
        #expect(firstHandshakeToClient(second.log) == nil, "no handshake record may reach the client: \(second.log)")
        #expect(second.log.contains { if case .sendClient(let bytes) = $0 { bytes.readableBytesView.first == 21 } else { false } }, "an alert instead")
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 0, discarded: 1))
    }

    /// The upstream chose another protocol, or serves another certificate: the handshake is
    /// made afresh with what it chose, the prepared one dropped.
    @Test func aForecastThatNoLongerHoldsIsDropped() throws {
        let p = try playbook()
        let origin = try p.originPKI.leaf([.dns("www.origin.test")])
        _ = try connect(p, chain: origin)
        let http1 = try connect(p, chain: origin, originALPN: ["http/1.1"])
        #expect(http1.client.state == .established && http1.client.alpn == "http/1.1")
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 0, discarded: 1))
        let renewed = try p.originPKI.leaf([.dns("www.origin.test"), .dns("api.origin.test")])
        let third = try connect(p, chain: renewed, originALPN: ["http/1.1"])
        #expect(third.client.state == .established)
        #expect(third.client.peerCertificate?.subjectAltNames.contains(.dns("api.origin.test")) == true, "the leaf mirrors the new certificate")
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 0, discarded: 2))
        // A dropped forecast is replaced by what the handshake was made with: the next one holds.
        let fourth = try connect(p, chain: renewed, originALPN: ["http/1.1"])
        #expect(fourth.client.state == .established && fourth.client.alpn == "http/1.1")
        #expect(fourth.client.peerCertificate?.sha256Fingerprint == third.client.peerCertificate?.sha256Fingerprint)
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 1, discarded: 2))
    }

    /// A client asking for certificate status gets Loupe's staple in a prepared handshake as in
    /// a fresh one; a revoked staple upstream fails the client with certificate_revoked and
    /// nothing prepared is sent.
    @Test func stapledLeavesAreForecastAndARevokedUpstreamStillFails() throws {
        let p = try playbook()
        let origin = try p.originPKI.leaf([.dns("www.origin.test")])
        func staple(revoked: Bool) throws -> [UInt8] {
            try OCSP.response(for: origin.0, issuer: p.originPKI.root, issuerKey: p.originPKI.rootKey, revoked: revoked,
                              thisUpdate: Date().addingTimeInterval(-60), nextUpdate: Date().addingTimeInterval(86_400))
        }
        let first = try connect(p, chain: origin, staple: try staple(revoked: false), askStatus: true)
        #expect(first.client.state == .established && first.client.stapledStatus == .good)
        let second = try connect(p, chain: origin, staple: try staple(revoked: false), askStatus: true)
        #expect(second.client.state == .established && second.client.stapledStatus == .good, "\(second.client.state)")
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 1, discarded: 0))
        let revoked = try connect(p, chain: origin, staple: try staple(revoked: true), askStatus: true)
        guard case .failed = revoked.client.state else { Issue.record("a revoked upstream must fail the client: \(revoked.client.state)"); return }
        #expect(firstHandshakeToClient(revoked.log) == nil && revoked.log.contains(.sendClient(ByteBuffer(bytes: [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 44]))),
                "certificate_revoked, and no prepared flight: \(revoked.log)")
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 1, discarded: 1))
    }

    /// With a key log, nothing is prepared: a discarded handshake's secrets would be logged
    /// under the same client random as the real one's.
    @Test func noPreparedHandshakesWhileKeysAreLogged() throws {
        let p = try playbook()
        let dir = TestEnv.scratch("forecast-keylog")
        defer { TestEnv.remove(dir) }
        let keyLog = try KeyLog(path: "\(dir)/keys")
        let origin = try p.originPKI.leaf([.dns("www.origin.test")])
        for _ in 0..<2 {
            let round = try connect(p, chain: origin, keyLog: keyLog)
            #expect(round.client.state == .established)
        }
        #expect(p.forecasts?.statistics == HandshakeForecasts.Statistics(used: 0, discarded: 0))
        let lines = try String(contentsOfFile: "\(dir)/keys", encoding: .utf8).split(separator: "\n")
        #expect(lines.filter { $0.hasPrefix("SERVER_HANDSHAKE_TRAFFIC_SECRET") }.count == 2, "one per client-facing handshake, none for a discarded one")
    }
}
