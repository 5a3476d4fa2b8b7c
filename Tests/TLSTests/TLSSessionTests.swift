import COpenSSL
import Foundation
import TestSupport
import Testing
@testable import TLS

/// Moves bytes between two sessions until neither has anything to say.
func pump(_ a: TLSSession, _ b: TLSSession) {
    for _ in 0..<50 {
        let fromA = a.takeOutput(), fromB = b.takeOutput()
        if fromA.isEmpty && fromB.isEmpty { return }
        b.receive(fromA)
        a.receive(fromB)
    }
}

@Suite struct TLSSessionTests {
    @Test func handshakeALPNAndDataBothWays() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf, pki.root], key: key, alpn: ["http/1.1"])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test", alpn: ["h2", "http/1.1"])
        client.advanceHandshake()
        pump(client, server)
        #expect(client.state == .established && server.state == .established, "\(client.state) \(server.state)")
        #expect(client.alpn == "http/1.1" && server.alpn == "http/1.1")  // only what the server side allows
        #expect(client.version == "TLSv1.3" && client.cipher != nil)
        #expect(client.verifyError == nil)
        #expect(client.peerChain.first?.der == leaf.der)
        try client.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        pump(client, server)
        #expect(server.read() == Array("GET / HTTP/1.1\r\n\r\n".utf8))
        let big = [UInt8](repeating: 0x5A, count: 100_000)
        try server.write(big)
        pump(client, server)
        #expect(client.read() == big)
        server.close()
        pump(client, server)
        _ = client.read()
        #expect(client.state == .closed)
    }

    /// Records arriving in arbitrary pieces come out whole, in order; a partial record yields
    /// nothing until it completes. Upstream sessions offer AES-128-GCM first.
    @Test func piecewiseRecordsAndCipherOrder() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test")
        client.advanceHandshake()
        pump(client, server)
        #expect(client.cipher == "TLS_AES_128_GCM_SHA256")
        let body = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try server.write(body)
        let wire = server.takeOutput()
        #expect(client.read().isEmpty)
        var got: [UInt8] = []
        var offset = 0
        while offset < wire.count {
            let end = min(wire.count, offset + 997)
            client.receive(Array(wire[offset..<end]))
            got += client.read()
            offset = end
        }
        #expect(got == body && client.state == .established)
        // Once read and taken, nothing of the burst stays in the sessions' byte queues.
        #expect(client.bufferedCapacity == 0 && server.bufferedCapacity == 0, "queues keep what they carried")
        // A partial record waits in the queue, whole, until the rest of it comes.
        try server.write(Array("split".utf8))
        let record = server.takeOutput()
        client.receive(Array(record.prefix(3)))
        #expect(client.read().isEmpty)
        client.receive(Array(record.dropFirst(3)))
        #expect(client.read() == Array("split".utf8) && client.bufferedCapacity == 0)
        // Record buffers given back while quiet: the session goes on.
        client.releaseBuffers()
        server.releaseBuffers()
        try client.write(Array("after".utf8))
        server.receive(client.takeOutput())
        #expect(server.read() == Array("after".utf8))
        // …but never while bytes are waiting: those are not lost.
        try server.write(Array("pending".utf8))
        client.receive(server.takeOutput())
        client.releaseBuffers()
        #expect(client.read() == Array("pending".utf8))
    }

    /// Three visits to one upstream (one server context, one client context): whether each
    /// resumed. `prepare` adjusts each client session before its handshake; every connection
    /// ends without close_notify from either side.
    static func visits(maximum: TLSVersion? = nil, prepare: (TLSSession) -> Void = { _ in },
                       check: (TLSSession, TLSSession, Certificate) -> Void) throws -> [Bool] {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let serverContext = try TLSContext.server()
        let clientContext = try TLSContext.client(trustBundle: pki.bundle)
        var resumed: [Bool] = []
        for _ in 0..<3 {
            let server = try TLSSession.server(serverContext, chain: [leaf], key: key)
            let client = try TLSSession.client(clientContext, serverName: "origin.test", resumptionKey: "origin.test|192.0.2.1:443", maximum: maximum)
            prepare(client)
            client.advanceHandshake()
            pump(client, server)
            _ = client.read()  // TLS 1.3 tickets arrive after the handshake
            check(client, server, leaf)
            resumed.append(client.resumed)
        }
        // Another upstream key never gets this session.
        let server = try TLSSession.server(serverContext, chain: [leaf], key: key)
        let other = try TLSSession.client(clientContext, serverName: "origin.test", resumptionKey: "origin.test|192.0.2.2:443", maximum: maximum)
        prepare(other)
        other.advanceHandshake()
        pump(other, server)
        #expect(other.state == .established && !other.resumed)
        return resumed
    }

    /// A second visit to the same upstream resumes the session (no full handshake) and still
    /// knows the upstream's certificate, which the masquerade leaf mirrors.
    @Test func upstreamSessionsAreResumed() throws {
        let resumed = try Self.visits { client, _, leaf in
            #expect(client.state == .established)
            #expect(client.peerCertificate?.der == leaf.der)
        }
        #expect(resumed == [false, true, true])
    }

    /// TLS 1.2 clients without tickets resume by session ID from the server context's cache —
    /// also after a connection that ended without Loupe's close_notify (it sends one only after
    /// the upstream's, and nginx sends none), which OpenSSL would otherwise take as a reason to
    /// drop the session.
    @Test func sessionIDsResumeAfterConnectionsThatEndWithoutCloseNotify() throws {
        let resumed = try Self.visits(maximum: .tls12, prepare: { _ = SSL_set_options($0.ssl, 1 << 14) }) { client, server, _ in  // SSL_OP_NO_TICKET
            #expect(client.state == .established && client.protocolVersion == .tls12)
            #expect(server.resumed == client.resumed)
        }
        #expect(resumed == [false, true, true])
        // The cache is bounded (OpenSSL's own bound would be 20,480 sessions, ~14 MiB).
        #expect(SSL_CTX_ctrl(try TLSContext.server().ctx, SSL_CTRL_GET_SESS_CACHE_SIZE, 0, nil) == TLSContext.serverSessionCacheSize)
    }

    @Test func noALPNOverlapMeansNoALPN() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key, alpn: ["h2"])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test", alpn: ["http/1.1"])
        client.advanceHandshake()
        pump(client, server)
        #expect(client.state == .established && client.alpn == nil)
    }

    /// Strict verification: every bad certificate fails the client's handshake with the reason.
    @Test func strictUpstreamVerification() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let other = try TestPKI(name: "Another Root")
        defer { TestEnv.remove(other.dir) }
        let cases: [(String, (Certificate, PrivateKey), String)] = [
            ("wrong name", try pki.leaf([.dns("other.test")]), "hostname mismatch"),
            ("expired", try pki.leaf([.dns("origin.test")], notBefore: Date().addingTimeInterval(-86_400 * 3), notAfter: Date().addingTimeInterval(-86_400)), "expired"),
            ("not yet valid", try pki.leaf([.dns("origin.test")], notBefore: Date().addingTimeInterval(86_400)), "not yet valid"),
            ("untrusted root", try other.leaf([.dns("origin.test")]), "unable to get local issuer certificate"),
        ]
        for (label, (leaf, key), reason) in cases {
            let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
            let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test")
            client.advanceHandshake()
            pump(client, server)
            guard case .failed(let why) = client.state else { Issue.record("\(label): \(client.state)"); continue }
            #expect(why.contains(reason), "\(label): \(why)")
        }
        // A fully qualified name (trailing dot) is the same host: verified without the dot.
        // IP addresses are verified against IP SANs.
        let named = try pki.leaf([.dns("origin.test")])
        let numbered = try pki.leaf([.ip([192, 0, 2, 9])])
        for ((leaf, key), name, ok) in [(named, "origin.test.", true), (named, "other.test.", false), (numbered, "192.0.2.9", true), (numbered, "192.0.2.10", false)] {
            let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
            let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: name)
            client.advanceHandshake()
            pump(client, server)
            #expect((client.state == .established) == ok, "\(name): \(client.state)")
        }
        // ...or, in a certificate without DNS or IP SANs, the subject's CN (curl's fallback).
        let (cnOnly, cnKey) = try pki.leaf([], commonName: "192.0.2.9")
        let (cnAndSAN, sanKey) = try pki.leaf([.dns("origin.test")], commonName: "192.0.2.9")
        for (leaf, key, name, ok) in [(cnOnly, cnKey, "192.0.2.9", true), (cnOnly, cnKey, "192.0.2.10", false), (cnAndSAN, sanKey, "192.0.2.9", false)] {
            let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
            let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: name)
            client.advanceHandshake()
            pump(client, server)
            #expect((client.state == .established) == ok, "\(name), \(leaf.subjectAltNames): \(client.state)")
            #expect((client.verifyError == nil) == ok, "\(name): \(client.verifyError ?? "verified")")
            #expect(leaf.covers(host: name) == ok, "the request stage's check agrees for \(name)")
        }
    }

    @Test func anOldProtocolIsNotUpgraded() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        // A server stuck at TLS 1.1 against a client that requires 1.2: no session at all.
        let oldServer = try TLSSession.server(try TLSContext.server(minimum: .tls10, maximum: .tls11), chain: [leaf], key: key)
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle, minimum: .tls12), serverName: "origin.test")
        client.advanceHandshake()
        pump(client, oldServer)
        guard case .failed = client.state else { Issue.record("TLS 1.1 was accepted: \(client.state)"); return }
        #expect(client.failureAlert == 70, "a proxied client must hear protocol_version")
    }

    /// SSL_get_error reads the thread's error queue: a session clears what another call left
    /// there (and skips the clearing when nothing is queued), so a stale error never passes
    /// for the session's own failure — in the handshake, in reading or in writing.
    @Test func aStaleErrorOnTheQueueFailsNoSession() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        func leaveAnError() {
            let junk = Array("not a certificate".utf8)
            let bio = junk.withUnsafeBytes { BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }
            #expect(PEM_read_bio_X509(bio, nil, nil, nil) == nil)
            BIO_free(bio)
            #expect(ERR_peek_error() != 0, "the failed parse left its error queued")
        }
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
        let client = try TLSSession.client(try TLSContext.client(trustBundle: pki.bundle), serverName: "origin.test")
        leaveAnError()
        client.advanceHandshake()
        for _ in 0..<50 {
            let fromClient = client.takeOutput(), fromServer = server.takeOutput()
            if fromClient.isEmpty && fromServer.isEmpty { break }
            leaveAnError()
            server.receive(fromClient)
            leaveAnError()
            client.receive(fromServer)
        }
        #expect(client.state == .established && server.state == .established, "\(client.state) \(server.state)")
        for round in 0..<3 {
            leaveAnError()
            try client.write(Array("request \(round)".utf8))
            server.receive(client.takeOutput())
            leaveAnError()
            #expect(server.read() == Array("request \(round)".utf8))
            leaveAnError()
            try server.write(Array("answer \(round)".utf8))
            client.receive(server.takeOutput())
            leaveAnError()
            #expect(client.read() == Array("answer \(round)".utf8))
        }
        #expect(client.state == .established && server.state == .established, "\(client.state) \(server.state)")
        ERR_clear_error()
    }

    @Test func garbageFromThePeerFailsCleanly() throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let server = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
        server.receive(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        guard case .failed(let why) = server.state else { Issue.record("\(server.state)"); return }
        #expect(why.contains("http request"), "\(why)")
        #expect(throws: OpenSSLError.self) { try server.write([1]) }
    }
}
