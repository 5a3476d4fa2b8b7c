import Foundation
import NIOCore
import TestSupport
import Testing
import CA
import Policy
@testable import Proxy
import Store
import TLS
import Wire

/// A world for one connection: a real client TLS session (trusting Loupe's root), a real origin
/// TLS session (its own PKI), Loupe's CA — and the machine between them. `run` plays the NIO
/// handler's part: it carries bytes, answers connects and mints, and records what happened.
final class Playbook {
    let loupeDir: String
    let minter: LeafMinter
    let loupeRootBundle: String
    let originPKI: TestPKI
    var log: [ConnectionMachine.Command] = []
    var connectFails: String?
    /// What answers a name probe at the destination (a fresh session of the same origin).
    var probeOrigin: (() throws -> TLSSession)?
    /// Shared by the machines made here, as a proxy shares them between connections.
    var forecasts: HandshakeForecasts?
    /// Leaves minted once per request, as the proxy's leaf cache hands them out.
    var reuseLeaves = false
    private var leaves: [LeafRequest: Leaf] = [:]

    init() throws {
        loupeDir = TestEnv.scratch("proxy")
        let authority = RootAuthority(store: try SealedStore.create(stateDirectory: loupeDir, provider: .hostKey), profile: CAProfile())
        _ = try authority.initialize()
        let root = try authority.root()!
        minter = try LeafMinter(root: root, profile: CAProfile())
        loupeRootBundle = "\(loupeDir)/loupe-root.pem"
        try root.certificate.pem.write(toFile: loupeRootBundle, atomically: true, encoding: .utf8)
        originPKI = try TestPKI(name: "Origin Test Root")
    }

    deinit {
        TestEnv.remove(loupeDir)
        TestEnv.remove(originPKI.dir)
    }

    static let policyText = """
        [defaults]
        connect = "inspect"
        hello = "bump"
        request = "allow"
        [[rule]]
        name = "splice-bank"
        stage = "hello"
        sni = [".bank.test"]
        action = "splice"
        [[rule]]
        name = "block-bad"
        stage = "hello"
        sni = ["bad.test"]
        action = "block"
        [[rule]]
        name = "no-admin-post"
        stage = "request"
        method = ["POST"]
        path = ["/admin"]
        action = "block"
        reason = "admin uploads are not allowed"
        """

    func machine(dst: String = "192.0.2.10:443", policy: String = Playbook.policyText, autoSplice: AutoSplice? = nil,
                 keyLog: KeyLog? = nil, clientPort: (UInt16, Bool)? = nil) throws -> ConnectionMachine {
        var facts = FlowFacts()
        facts.dst = FlowFacts.Endpoint(dst)
        var settings = ConnectionMachine.Settings(upstreamContext: try TLSContext.client(trustBundle: originPKI.bundle),
                                                  clientContext: try TLSContext.server())
        settings.autoSplice = autoSplice
        settings.forecasts = forecasts
        settings.clientPort = clientPort.map { (port: $0.0, redirected: $0.1) }
        settings.clientContext.logKeys(to: keyLog)
        return ConnectionMachine(facts: facts, policy: try Policy.parse(policy, file: "p.toml"), settings: settings)
    }

    func origin(_ names: [SubjectAltName], expired: Bool = false, alpn: [String] = ["h2", "http/1.1"],
                minimum: TLSVersion = .tls12, maximum: TLSVersion? = nil) throws -> TLSSession {
        let (leaf, key) = expired
            ? try originPKI.leaf(names, notBefore: Date().addingTimeInterval(-86_400 * 9), notAfter: Date().addingTimeInterval(-86_400))
            : try originPKI.leaf(names)
        return try TLSSession.server(try TLSContext.server(minimum: minimum, maximum: maximum), chain: [leaf], key: key, alpn: alpn)
    }

    /// A machine with a bumped connection relaying: client and origin both offering `alpn`;
    /// `first` goes to the machine before the client's hello.
    func bumped(alpn: [String], first: [ConnectionMachine.Event] = [], policy: String = Playbook.policyText,
                clientPort: (UInt16, Bool)? = nil) throws -> (ConnectionMachine, client: TLSSession, origin: TLSSession) {
        let m = try machine(policy: policy, clientPort: clientPort)
        let origin = try origin([.dns("www.origin.test")], alpn: alpn)
        let client = try TLSSession.client(try TLSContext.client(trustBundle: loupeRootBundle), serverName: "www.origin.test", alpn: alpn)
        client.advanceHandshake()
        run(m, client: client, origin: origin, first: first)
        return (m, client, origin)
    }

    /// Delivers `first` and then carries bytes until nothing moves.
    func run(_ m: ConnectionMachine, client: TLSSession, origin: TLSSession, first: [ConnectionMachine.Event] = []) {
        var queue = first
        for _ in 0..<200 {
            if queue.isEmpty {
                let fromClient = client.takeOutput()
                let fromOrigin = origin.takeOutput()
                if !fromClient.isEmpty { queue.append(.clientData(ByteBuffer(bytes: fromClient))) }
                if !fromOrigin.isEmpty { queue.append(.upstreamData(ByteBuffer(bytes: fromOrigin))) }
                if queue.isEmpty { return }
            }
            let event = queue.removeFirst()
            for command in m.handle(event) {
                log.append(command)
                switch command {
                case .connectUpstream: queue.append(connectFails.map { .upstreamConnectFailed($0) } ?? .upstreamConnected)
                case .sendUpstream(let bytes): origin.receive([UInt8](buffer: bytes))
                case .sendClient(let bytes): client.receive([UInt8](buffer: bytes))
                case .probe(_, let name):
                    queue.append(probe(name))
                case .mintLeaf(let request):
                    do {
                        let leaf = try leaves[request] ?? minter.mint(request)
                        if reuseLeaves { leaves[request] = leaf }
                        queue.append(.leafReady(leaf))
                    } catch {
                        queue.append(.leafFailed("\(error)"))
                    }
                case .afterSending: queue.append(.sent)
                default: break
                }
            }
        }
    }

    /// The probe handshake, in memory, against what the destination serves.
    func probe(_ name: String) -> ConnectionMachine.Event {
        do {
            guard let probeOrigin else { return .probed(verified: false, reason: "no origin") }
            let server = try probeOrigin()
            let client = try TLSSession.client(try TLSContext.client(trustBundle: originPKI.bundle), serverName: name)
            client.advanceHandshake()
            for _ in 0..<20 {
                let a = client.takeOutput(), b = server.takeOutput()
                if a.isEmpty && b.isEmpty { break }
                server.receive(a)
                client.receive(b)
            }
            if case .failed(let why) = client.state { return .probed(verified: false, reason: why) }
            return .probed(verified: client.state == .established, reason: "verified")
        } catch {
            return .probed(verified: false, reason: "\(error)")
        }
    }

    var finishedReason: String? {
        for case .finished(let reason) in log { return reason }
        return nil
    }

    var decisions: [Decision] {
        log.compactMap {
            switch $0 {
            case .decided(let d), .decidedRequest(let d, _, _): d
            default: nil
            }
        }
    }
}

@Suite struct ConnectionMachineTests {
    /// The client leg's key is one the client can verify at the version it will speak: P-256
    /// when it can, else RSA, else (no RSA at all) P-384 or P-521 — or it fails where direct works.
    @Test func leafKeyFollowsWhatTheClientCanVerify() {
        func hello(_ suites: [UInt16], _ schemes: [UInt16], _ groups: [UInt16], versions: [UInt16] = [0x0304, 0x0303]) -> ClientHello {
            ClientHello(supportedVersions: versions, cipherSuites: suites, signatureAlgorithms: schemes, supportedGroups: groups)
        }
        #expect(ConnectionMachine.leafKey(for: hello([0x1301, 0xC02B], [0x0403, 0x0804], [0x001D]), at: 0x0304) == .ecdsaP256)
        #expect(ConnectionMachine.leafKey(for: hello([0x1301], [0x0804, 0x0503], [0x001D]), at: 0x0304) == .rsa2048)
        #expect(ConnectionMachine.leafKey(for: hello([0x1301], [0x0503], [0x001D]), at: 0x0304) == .ecdsaP384)
        #expect(ConnectionMachine.leafKey(for: hello([0x1301], [0x0603], [0x001D]), at: 0x0304) == .ecdsaP521)
        #expect(ConnectionMachine.leafKey(for: hello([0x1301], [0x0603, 0x0503], [0x001D]), at: 0x0304) == .ecdsaP384, "P-384 first")
        #expect(ConnectionMachine.leafKey(for: hello([0xC02C], [0x0603], [0x0019], versions: [0x0303]), at: 0x0303) == .ecdsaP521)
        #expect(ConnectionMachine.leafKey(for: hello([0x1301], [0x0807], [0x001D]), at: 0x0304) == .rsa2048, "no key of Loupe's fits (Ed25519 only): RSA as before")
        #expect(ConnectionMachine.leafKey(for: hello([0xC02C, 0x00FF], [0x0503], [0x0018], versions: [0x0303]), at: 0x0303) == .ecdsaP384)
        #expect(ConnectionMachine.leafKey(for: hello([0xC02C, 0xC030], [0x0503, 0x0401], [0x0018], versions: [0x0303]), at: 0x0303) == .rsa2048)
    }

    /// Idle while relaying: close_notify on both legs, then the end; before relaying the idle
    /// signal is ignored (the handshake deadline rules there).
    @Test func idleClosesBothLegsCleanly() throws {
        let p = try Playbook()
        let m = try p.machine()
        #expect(m.handle(.idle).isEmpty && m.phase == .peeking)
        let origin = try p.origin([.dns("www.origin.test")])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(m.phase == .relaying)
        // A quiet moment only gives buffers back: the relay goes on.
        p.run(m, client: client, origin: origin, first: [.quiet])
        let request = Array("GET /ping HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8)
        try client.write(request)
        p.run(m, client: client, origin: origin)
        #expect(origin.read() == request && m.phase == .relaying)
        p.log = []
        p.run(m, client: client, origin: origin, first: [.idle])
        #expect(p.finishedReason?.hasPrefix("idle") == true && m.phase == .closed)
        _ = client.read()
        _ = origin.read()
        #expect(client.state == .closed && origin.state == .closed, "both peers saw close_notify: \(client.state) \(origin.state)")
    }

    @Test func bumpRelaysPlaintextUnderAMirroredLeaf() throws {
        let p = try Playbook()
        let m = try p.machine()
        let origin = try p.origin([.dns("www.origin.test")], alpn: ["h2", "http/1.1"])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test", alpn: ["h2", "http/1.1"])
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(client.state == .established, "\(client.state) / \(p.finishedReason ?? "-")")
        #expect(m.phase == .relaying && m.mode == .bump)
        #expect(p.decisions.map(\.verdict) == [.bump])
        // The client sees Loupe's leaf, mirroring the origin's names, and the origin's ALPN.
        #expect(client.peerChain.first?.subjectAltNames == [.dns("www.origin.test")])
        #expect(client.peerChain.first?.issuer.contains("Loupe Root CA") == true)
        // The leaf alone: the client holds the root as its anchor and need not parse it again.
        #expect(client.peerChain.count == 1)
        #expect(client.alpn == "h2" && origin.alpn == "h2")
        #expect(m.tlsFields["upstream_verify"] as? String == "ok")
        // HTTP/2: the preface passes, SETTINGS with server push switched off; the origin's
        // frames come back whole.
        let opening = HTTP2RequestFilter.preface + HTTP2RequestFilter.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
        try client.write(opening)
        p.run(m, client: client, origin: origin)
        #expect(origin.read() == HTTP2RequestFilter.preface + HTTP2RequestFilter.frameHeader(length: 6, type: .settings, flags: 0, stream: 0) + [0, 2, 0, 0, 0, 0])
        let frames = (0..<4).flatMap { _ in HTTP2RequestFilter.frameHeader(length: 12_000, type: .data, flags: 0, stream: 1) + [UInt8](repeating: 0x42, count: 12_000) }
        try origin.write(frames)
        p.run(m, client: client, origin: origin)
        #expect(client.read() == frames)
        // Not HTTP/2 after agreeing on h2: the connection ends, nothing more goes upstream.
        try client.write(Array("GET / HTTP/1.1\r\n\r\n".utf8))
        p.run(m, client: client, origin: origin)
        #expect(p.finishedReason == nil, "still fine: a preface was already seen, these are just bytes of a frame")
    }

    /// A client offering only non-HTTP protocols keeps them: the origin's choice reaches the
    /// client and the bytes pass opaquely (no request stage: nothing there is HTTP). From a mixed
    /// list only the HTTP protocols Loupe inspects are offered.
    @Test func nonHTTPProtocolsAreOfferedAsTheyAreAndRelayedOpaquely() throws {
        for (offered, expected) in [(["imap"], "imap"), (["imap", "http/1.1"], "http/1.1")] {
            let p = try Playbook()
            let m = try p.machine()
            let origin = try p.origin([.dns("www.origin.test")], alpn: ["imap", "http/1.1"])
            let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test", alpn: offered)
            client.advanceHandshake()
            p.run(m, client: client, origin: origin)
            #expect(client.state == .established && client.alpn == expected && origin.alpn == expected, "\(offered): \(client.state) \(client.alpn ?? "-")")
            guard expected == "imap" else { continue }
            let command = Array("a1 LOGIN user pass\r\n".utf8)
            try client.write(command)
            p.run(m, client: client, origin: origin)
            #expect(origin.read() == command)
            try origin.write(Array("a1 OK\r\n".utf8))
            p.run(m, client: client, origin: origin)
            #expect(client.read() == Array("a1 OK\r\n".utf8) && p.finishedReason == nil)
        }
    }

    /// HTTP under other ALPN ids: "http/1.0" is read as HTTP/1 (its requests decided), and ids
    /// of HTTP Loupe cannot read (SPDY, h2c) are never offered upstream — an origin taking one
    /// would have had its requests relayed opaquely, past the request stage.
    @Test func httpUnderOtherALPNIdsIsDecidedOrNotOffered() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["http/1.0"])
        #expect(client.state == .established && client.alpn == "http/1.0" && origin.alpn == "http/1.0", "\(client.state)")
        try client.write(Array("POST /admin HTTP/1.0\r\nHost: www.origin.test\r\nContent-Length: 6\r\n\r\nsecret".utf8))
        p.run(m, client: client, origin: origin)
        #expect(String(decoding: client.read(), as: UTF8.self).hasPrefix("HTTP/1.1 403 Forbidden"))
        #expect(origin.read().isEmpty && p.decisions.last?.rule == "no-admin-post")

        for unreadable in ["spdy/3.1", "h2c"] {
            let q = try Playbook()
            let n = try q.machine()
            let origin = try q.origin([.dns("www.origin.test")], alpn: [unreadable, "http/1.1"])
            let client = try TLSSession.client(try TLSContext.client(trustBundle: q.loupeRootBundle), serverName: "www.origin.test", alpn: [unreadable])
            client.advanceHandshake()
            q.run(n, client: client, origin: origin)
            #expect(client.state == .established && origin.alpn == nil && client.alpn == nil, "\(unreadable): offered upstream (\(origin.alpn ?? "-"))")
            try client.write(Array("POST /admin HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 6\r\n\r\nsecret".utf8))
            q.run(n, client: client, origin: origin)
            #expect(origin.read().isEmpty && q.decisions.last?.rule == "no-admin-post", "\(unreadable): the request is decided")
        }
    }

    /// A malformed request — with ALPN http/1.1 or without ALPN, once the stream looks like HTTP —
    /// gets a 400 and ends the connection: relayed unread, the request after it would escape the
    /// request stage. A stream that never looked like HTTP is relayed as it is without ALPN, and
    /// ends the connection where http/1.1 was agreed.
    @Test func malformedHTTPIsRefusedWhateverTheALPN() throws {
        let cases: [(alpn: [String], bytes: String, relayed: Bool, reason: String?)] = [
            (["http/1.1"], "G(T / HTTP/1.1\r\n\r\nGET /admin HTTP/1.1\r\n\r\n", false, "request refused"),
            ([], "G(T / HTTP/1.1\r\n\r\nGET /admin HTTP/1.1\r\n\r\n", false, "request refused"),
            ([], "GET /ok HTTP/1.1\r\nHost: www.origin.test\r\n\r\nNOT HTTP\r\n\r\nGET /admin HTTP/1.1\r\n\r\n", false, "request refused"),
            ([], "\u{1}\u{2}binary protocol\r\n\r\n", true, nil),
            (["http/1.1"], "\u{1}\u{2}binary protocol\r\n\r\n", false, "not HTTP/1.1"),
            // Other protocols send no blank line: relayed (or refused) on their first line.
            ([], "a1 LOGIN user pass\r\n", true, nil),
            ([], "\u{10}\u{10}\u{0}\u{4}MQTT", true, nil),
            (["http/1.1"], "a1 LOGIN user pass\r\n", false, "not HTTP/1.1"),
        ]
        for c in cases {
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: c.alpn)
            try client.write(Array(c.bytes.utf8))
            p.run(m, client: client, origin: origin)
            let got = String(decoding: origin.read(), as: UTF8.self)
            if c.relayed {
                #expect(got == c.bytes && p.finishedReason == nil, "\(c): opaque relay")
                #expect(m.opaqueBecause == "the first line is not an HTTP/1 request line", "\(c): for the close line")
            } else {
                if got.hasPrefix("GET /ok ") {
                    // Its 400 waits for the answer to the request before it (pipelined).
                    #expect(p.finishedReason == nil, "\(c)")
                    try origin.write(Array("HTTP/1.1 204 No Content\r\n\r\n".utf8))
                    p.run(m, client: client, origin: origin)
                    #expect(String(decoding: client.read(), as: UTF8.self).hasPrefix("HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 400 Bad Request"), "\(c)")
                }
                #expect(!got.contains("/admin") && p.finishedReason?.contains(c.reason!) == true, "\(c): \(p.finishedReason ?? "-"), origin got \(got.debugDescription)")
            }
        }
    }

    /// The client gets no newer TLS than the upstream spoke: over a TLS 1.2 origin it sees
    /// TLS 1.2, and a client that insists on TLS 1.3 fails through Loupe as it fails direct.
    @Test func theClientLegNeverOutversionsTheUpstream() throws {
        for clientMinimum in [TLSVersion.tls12, .tls13] {
            let p = try Playbook()
            let m = try p.machine()
            let origin = try p.origin([.dns("www.origin.test")], maximum: .tls12)
            let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle, minimum: clientMinimum), serverName: "www.origin.test")
            client.advanceHandshake()
            p.run(m, client: client, origin: origin)
            if clientMinimum == .tls12 {
                #expect(client.state == .established && client.version == "TLSv1.2" && origin.version == "TLSv1.2", "\(client.state)")
            } else {
                #expect(client.state != .established && m.phase == .closed, "TLS 1.3 only, as direct: \(client.state) / \(p.finishedReason ?? "-")")
            }
        }
    }

    /// …nor the upstream leg newer than the client offered: a TLS 1.2 client gets TLS 1.2 on both
    /// legs, and fails against a TLS 1.3-only origin as it would directly.
    @Test func theUpstreamLegNeverOutversionsTheClient() throws {
        for originMinimum in [TLSVersion.tls12, .tls13] {
            let p = try Playbook()
            let m = try p.machine()
            let origin = try p.origin([.dns("www.origin.test")], minimum: originMinimum)
            let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle, maximum: .tls12), serverName: "www.origin.test")
            client.advanceHandshake()
            p.run(m, client: client, origin: origin)
            if originMinimum == .tls12 {
                #expect(client.state == .established && client.version == "TLSv1.2" && origin.version == "TLSv1.2", "\(client.state)")
            } else {
                #expect(client.state != .established && m.phase == .closed, "a TLS 1.3-only origin, as direct: \(client.state)")
                #expect(p.finishedReason?.contains("upstream TLS failed") == true, "\(p.finishedReason ?? "-")")
                // No chain arrived, so nothing was verified: the close line claims no verdict.
                #expect(m.tlsFields["upstream_verify"] == nil, "\(m.tlsFields)")
            }
        }
    }

    /// A client that offers nothing Loupe speaks is refused at its hello, before any upstream work.
    @Test func aClientOfferingOnlyOldTLSIsRefusedAtOnce() throws {
        let p = try Playbook()
        let m = try p.machine()
        var hello: [UInt8] = [0x03, 0x02] + [UInt8](repeating: 7, count: 32) + [0, 0, 2, 0xC0, 0x13, 1, 0]  // TLS 1.1, no extensions
        hello = [1, 0, 0, UInt8(hello.count)] + hello
        let commands = m.handle(.clientData(ByteBuffer(bytes: [0x16, 3, 1, 0, UInt8(hello.count)] + hello)))
        #expect(!commands.contains { if case .connectUpstream = $0 { true } else { false } }, "\(commands)")
        #expect(commands.contains { if case .finished(let why) = $0 { why.contains("TLS 1.1") } else { false } }, "\(commands)")
        #expect(m.phase == .closed)
    }

    /// An upgrade the origin ignores (200, not 101) keeps the connection HTTP: a request sent
    /// behind it is still decided — here refused — and never reaches the origin unread.
    @Test func aRequestBehindAnIgnoredUpgradeIsStillDecided() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
        try client.write(Array("GET /ws HTTP/1.1\r\nHost: www.origin.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nPOST /admin HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 0\r\n\r\n".utf8))
        p.run(m, client: client, origin: origin)
        #expect(String(decoding: origin.read(), as: UTF8.self).hasPrefix("GET /ws HTTP/1.1"), "only the upgrade request went up so far")
        try origin.write(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8))
        p.run(m, client: client, origin: origin)
        #expect(!String(decoding: origin.read(), as: UTF8.self).contains("/admin"), "the POST was decided, not relayed opaquely")
        #expect(p.decisions.contains { $0.rule == "no-admin-post" }, "\(p.decisions)")
        #expect(String(decoding: client.read(), as: UTF8.self).contains("403 Forbidden"))
    }

    /// A request may only name a host the upstream's verified certificate covers: a Host of
    /// another site (domain fronting, or one chosen to dodge a rule) is refused, never decided
    /// as if it were that site; a port in the Host is not part of the name.
    @Test func aRequestNamingAHostTheCertificateDoesNotCoverIsRefused() throws {
        for (host, refused) in [("elsewhere.test", true), ("www.origin.test:443", false), ("WWW.Origin.Test", false), ("www.origin.test.", false), ("", false)] {
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
            try client.write(Array("GET /x HTTP/1.1\r\nHost: \(host)\r\n\r\n".utf8))
            p.run(m, client: client, origin: origin)
            let upstream = String(decoding: origin.read(), as: UTF8.self)
            if refused {
                #expect(upstream.isEmpty && p.decisions.last?.rule == "misdirected", "\(host): \(p.decisions)")
                // 421: a client may send it again on a connection of its own to that host.
                #expect(String(decoding: client.read(), as: UTF8.self).hasPrefix("HTTP/1.1 421 Misdirected Request\r\n"))
            } else {
                #expect(upstream.hasPrefix("GET /x HTTP/1.1"), "\(host): \(p.decisions)")
                // An empty Host names no host: the URL rules see is the SNI's, as without one.
                #expect(m.facts.host?.isEmpty == false, "\(host.debugDescription): \(m.facts.url ?? "-")")
            }
        }
    }

    /// A request framed two ways (Content-Length and chunked) gets a 400 from Loupe and the
    /// connection ends: the origin never sees it, nor what its body would have smuggled.
    @Test func anAmbiguouslyFramedRequestIsAnswered400AndNeverForwarded() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
        try client.write(Array("POST /upload HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8))
        p.run(m, client: client, origin: origin)
        #expect(origin.read().isEmpty, "nothing reached the origin")
        #expect(String(decoding: client.read(), as: UTF8.self).hasPrefix("HTTP/1.1 400 Bad Request"))
        #expect(m.phase == .closed && p.finishedReason?.contains("request refused") == true, "\(p.finishedReason ?? "-")")
    }

    /// A client that shares no cipher suite with Loupe (3DES and RC4 only) is refused at its
    /// hello with handshake_failure, as an origin with nothing in common would refuse it.
    @Test func aClientSharingNoSuiteIsRefusedAtOnce() throws {
        let p = try Playbook()
        let m = try p.machine()
        var hello: [UInt8] = [0x03, 0x03] + [UInt8](repeating: 7, count: 32) + [0, 0, 4, 0x00, 0x0A, 0x00, 0x05, 1, 0]  // TLS 1.2, no extensions
        hello = [1, 0, 0, UInt8(hello.count)] + hello
        let commands = m.handle(.clientData(ByteBuffer(bytes: [0x16, 3, 1, 0, UInt8(hello.count)] + hello)))
        #expect(!commands.contains { if case .connectUpstream = $0 { true } else { false } }, "\(commands)")
        #expect(commands.contains { if case .finished(let why) = $0 { why.contains("no cipher suite") } else { false } }, "\(commands)")
        #expect(commands.contains { if case .sendClient(let alert) = $0 { [UInt8](buffer: alert).suffix(2) == [2, 40] } else { false } }, "a fatal handshake_failure alert: \(commands)")
    }

    /// The upstream leg offers only the client's suites: a client held to ECDHE-RSA gets no
    /// session through Loupe with an ECDSA origin (it would get none directly), where before
    /// Loupe's own offer let the origin pick ECDSA and the client got an RSA leaf.
    @Test func theUpstreamLegOffersOnlyTheClientsSuites() throws {
        let p = try Playbook()
        let m = try p.machine()
        let origin = try p.origin([.dns("www.origin.test")])
        var held = UpstreamOffer()
        held.cipherList = "ECDHE-RSA-AES128-GCM-SHA256"
        held.maximum = .tls12
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test", offer: held)
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(client.state != .established && m.phase == .closed, "\(client.state)")
        #expect(p.finishedReason?.contains("upstream TLS failed") == true, "\(p.finishedReason ?? "-")")
    }

    /// An absolute-form target names the host and path whatever the case of its scheme, and
    /// the URL is https whatever the scheme says (the request came over TLS): neither
    /// "HTTP://host/admin" nor "http://…" slips past a rule.
    @Test func absoluteFormTargetsAreDecidedAsTheOriginReadsThem() throws {
        #expect(ConnectionMachine.url(target: "/a?b", host: "h.test") == "https://h.test/a?b")
        for target in ["http://www.origin.test/admin/x", "HTTP://www.origin.test/admin/x", "HtTpS://www.origin.test/admin/x"] {
            #expect(ConnectionMachine.url(target: target, host: "ignored.test") == "https://www.origin.test/admin/x", "\(target)")
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
            try client.write(Array("POST \(target) HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 0\r\n\r\n".utf8))
            p.run(m, client: client, origin: origin)
            #expect(origin.read().isEmpty && p.decisions.last?.rule == "no-admin-post", "\(target): \(p.decisions)")
        }
    }

    /// An h2 request without a host (no :authority or Host, or empty ones) is decided on the
    /// SNI's host, as on HTTP/1.1: URL rules see the site.
    @Test func anH2RequestWithoutAHostTakesTheSNIs() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["h2"])
        var encoder = HTTP2RequestFilterTests.Client()
        let block = try encoder.block([(":method", "GET"), (":scheme", "https"), (":authority", ""), (":path", "/x")])
        typealias F = HTTP2RequestFilter
        try client.write(F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
                         + F.frameHeader(length: block.count, type: .headers, flags: 0x5, stream: 1) + block)
        try origin.write(F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0))
        p.run(m, client: client, origin: origin)
        #expect(m.facts.url == "https://www.origin.test/x", "\(m.facts.url ?? "-")")
    }

    /// On h2 too the flow log names the port a request was judged at: the decision's and the
    /// response's lines for a redirected connection to 8443 say https://host:8443/….
    @Test func h2RequestsAreLoggedAtTheConnectionsPort() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["h2"], clientPort: (8443, true))
        var encoder = HTTP2RequestFilterTests.Client(), upstreamEncoder = HTTP2RequestFilterTests.Client()
        let block = try encoder.block([(":method", "GET"), (":scheme", "https"), (":authority", "www.origin.test"), (":path", "/x")])
        typealias F = HTTP2RequestFilter
        try client.write(F.preface + F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0)
                         + F.frameHeader(length: block.count, type: .headers, flags: 0x5, stream: 1) + block)
        let status = try upstreamEncoder.block([(":status", "204")])
        try origin.write(F.frameHeader(length: 0, type: .settings, flags: 0, stream: 0) + F.frameHeader(length: status.count, type: .headers, flags: 0x5, stream: 1) + status)
        p.run(m, client: client, origin: origin)
        let decided = p.log.compactMap { if case .decidedRequest(_, _, let url) = $0 { url } else { nil } }
        let answered = p.log.compactMap { if case .answered(let exchange) = $0 { exchange.url } else { nil } }
        #expect(decided == ["https://www.origin.test:8443/x"] && answered == ["https://www.origin.test:8443/x"], "\(decided) \(answered)")
    }

    /// HTTP/1.1 bytes where h2 was agreed fail the connection instead of passing unread.
    @Test func h2WithoutItsPrefaceEndsTheConnection() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["h2"])
        try client.write(Array("GET / HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8))
        p.run(m, client: client, origin: origin)
        #expect(p.finishedReason?.contains("preface") == true, "\(p.finishedReason ?? "-")")
        #expect(origin.read().isEmpty)
    }

    /// An upstream that closes cleanly is closed cleanly for the client; one that is cut (TCP
    /// close or reset without close_notify) is cut for the client too — never "completed".
    @Test func truncationIsPassedOnNotLaundered() throws {
        for clean in [true, false] {
            let p = try Playbook()
            let m = try p.machine()
            let origin = try p.origin([.dns("www.origin.test")])
            let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test")
            client.advanceHandshake()
            p.run(m, client: client, origin: origin)
            try origin.write(Array("HTTP/1.0 200 OK\r\n\r\npartial body".utf8))
            if clean { origin.close() }
            p.run(m, client: client, origin: origin)
            p.run(m, client: client, origin: origin, first: [.upstreamClosed])  // then the TCP close
            #expect(String(decoding: client.read(), as: UTF8.self).hasSuffix("partial body"))
            #expect((client.state == .closed) == clean, "clean \(clean): the client must see close_notify only after a clean close (\(client.state))")
            if !clean { #expect(p.finishedReason?.contains("without close_notify") == true) }
        }
    }

    /// A client that ends with close_notify, then an upstream that closes without answering it
    /// (nginx does): the close line says the client ended first, not that a cut went to it.
    @Test func anUpstreamClosingAfterTheClientsCloseNotifyIsNoTruncation() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
        try client.write(Array("GET / HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8))
        p.run(m, client: client, origin: origin)
        try origin.write(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8))
        p.run(m, client: client, origin: origin)
        #expect(String(decoding: client.read(), as: UTF8.self).hasSuffix("ok"))
        client.close()
        p.run(m, client: client, origin: origin)
        p.run(m, client: client, origin: origin, first: [.clientClosed])  // then its TCP close
        _ = origin.read()
        #expect(origin.state == .closed, "the client's close_notify went upstream")
        p.run(m, client: client, origin: origin, first: [.upstreamClosed])  // a TCP close, no close_notify
        #expect(p.finishedReason == "upstream closed without close_notify, after the client's close_notify", "\(p.finishedReason ?? "-")")
    }

    /// Each HTTP/1.1 request on a bumped flow is decided before any of it goes upstream.
    @Test func requestStageBlocksWithA403AndForwardsNothing() throws {
        let p = try Playbook()
        let m = try p.machine()
        let origin = try p.origin([.dns("www.origin.test")], alpn: ["http/1.1"])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test", alpn: ["http/1.1"])
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(client.state == .established)
        try client.write(Array("POST /upload HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 5\r\n\r\nhello".utf8))
        p.run(m, client: client, origin: origin)
        #expect(String(decoding: origin.read(), as: UTF8.self).hasSuffix("\r\n\r\nhello"))
        try origin.write(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8))
        p.run(m, client: client, origin: origin)
        #expect(String(decoding: client.read(), as: UTF8.self).hasSuffix("\r\n\r\nok"))
        try client.write(Array("POST /admin/users HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 6\r\n\r\nsecret".utf8))
        p.run(m, client: client, origin: origin)
        let page = String(decoding: client.read(), as: UTF8.self)
        #expect(page.hasPrefix("HTTP/1.1 403 Forbidden") && page.contains("no-admin-post"), "\(page)")
        #expect(origin.read().isEmpty, "not one byte of a blocked request may reach the origin")
        #expect(p.decisions.map(\.stage) == [.hello, .request, .request])
        #expect(p.decisions.last?.verdict == .block)
        #expect(p.finishedReason == "request blocked by rule no-admin-post")
    }

    /// Pipelined: a blocked request's 403 waits for the answer to the request before it, so the
    /// client pairs each answer with its own request; nothing after it goes upstream. If the
    /// upstream closes before that answer is through, the connection ends without a 403.
    @Test func aPipelinedBlockIsAnsweredInOrder() throws {
        for closesFirst in [false, true] {
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
            try client.write(Array(("GET /a HTTP/1.1\r\nHost: www.origin.test\r\n\r\n"
                + "POST /admin/users HTTP/1.1\r\nHost: www.origin.test\r\nContent-Length: 6\r\n\r\nsecret"
                + "GET /after HTTP/1.1\r\nHost: www.origin.test\r\n\r\n").utf8))
            p.run(m, client: client, origin: origin)
            #expect(String(decoding: origin.read(), as: UTF8.self) == "GET /a HTTP/1.1\r\nHost: www.origin.test\r\n\r\n", "only what came before the block")
            #expect(client.read().isEmpty && p.finishedReason == nil, "the 403 waits for the answer to GET /a")
            try client.write(Array("GET /more HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8))
            p.run(m, client: client, origin: origin)
            #expect(origin.read().isEmpty, "nothing after the blocked request goes upstream")
            if closesFirst {
                try origin.write(Array("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf".utf8))
                origin.close()
            } else {
                try origin.write(Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8))
            }
            p.run(m, client: client, origin: origin)
            let got = String(decoding: client.read(), as: UTF8.self)
            if closesFirst {
                #expect(got.hasSuffix("half") && !got.contains("403"), "no 403 after a cut answer: \(got.debugDescription)")
            } else {
                #expect(got.hasPrefix("HTTP/1.1 200 OK") && got.contains("\r\n\r\nokHTTP/1.1 403 Forbidden"), "answer, then the 403: \(got.debugDescription)")
            }
            #expect(p.finishedReason == "request blocked by rule no-admin-post")
        }
    }

    /// An upstream that reads pipelined requests and never answers cannot make Loupe remember
    /// them without end: past `maximumUnanswered` outstanding, the next request is refused
    /// (400, after the answers before it), and nothing more goes upstream.
    @Test func unansweredPipelinesAreBounded() throws {
        let p = try Playbook()
        let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
        let limit = HTTPResponseTracker.maximumUnanswered
        let request = "GET /x HTTP/1.1\r\nHost: www.origin.test\r\n\r\n"
        try client.write(Array(String(repeating: request, count: limit + 5).utf8))
        p.run(m, client: client, origin: origin)
        #expect(origin.read().count == limit * request.utf8.count, "exactly the first \(limit) go upstream")
        #expect(client.read().isEmpty && p.finishedReason == nil, "the 400 waits for their answers")
        try origin.write(Array(String(repeating: "HTTP/1.1 204 No Content\r\n\r\n", count: limit).utf8))
        p.run(m, client: client, origin: origin)
        let got = String(decoding: client.read(), as: UTF8.self)
        #expect(got.components(separatedBy: "HTTP/1.1 204").count - 1 == limit && got.hasSuffix("pipelined without an answer\n"), "\(got.suffix(200))")
        #expect(p.finishedReason?.contains("requests pipelined without an answer") == true)
    }

    /// CONNECT over a bumped HTTP/1.1 flow is decided by its tunnel's far end, as on HTTP/2: a
    /// tunnel to a host the server's certificate does not cover is refused as misdirected (it
    /// would carry bytes no rule judged); one to the server itself waits for its answer.
    @Test func connectIsDecidedByItsTarget() throws {
        for (target, refused) in [("elsewhere.test:443", true), ("www.origin.test:443", false)] {
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: ["http/1.1"])
            try client.write(Array("CONNECT \(target) HTTP/1.1\r\nHost: www.origin.test\r\n\r\n".utf8))
            p.run(m, client: client, origin: origin)
            let upstream = String(decoding: origin.read(), as: UTF8.self)
            #expect(p.decisions.last?.rule == (refused ? "misdirected" : "default"), "\(target): \(p.decisions)")
            #expect(refused ? upstream.isEmpty : upstream.hasPrefix("CONNECT \(target)"), "\(target): \(upstream)")
            if refused { #expect(String(decoding: client.read(), as: UTF8.self).hasPrefix("HTTP/1.1 421 Misdirected Request")) }
        }
    }

    /// Servers route by name, not by the port a request names: "Host: host:8443" on a
    /// connection to 443 is served as the 443 site, so judged under its claimed port it passed
    /// URL rules on https://host/. A named port that is not the connection's is refused; none
    /// named on a redirected connection to another port means that port.
    @Test func requestsAreJudgedAtThePortTheyReallyGoTo() throws {
        let policy = TestPolicies.noAdminPost + "\n[[rule]]\nname = \"alt-admin\"\nstage = \"request\"\nurl = [\"https://www.origin.test:8443/admin\"]\naction = \"block\"\n"
        let cases: [(port: UInt16, redirected: Bool, host: String, rule: String, url: String)] = [
            (443, true, "www.origin.test:8443", "misdirected", "https://www.origin.test:8443/admin"),
            (443, true, "www.origin.test:443", "default", "https://www.origin.test:443/admin"),
            (443, true, "www.origin.test", "default", "https://www.origin.test/admin"),
            (8443, true, "www.origin.test", "alt-admin", "https://www.origin.test:8443/admin"),
            (8443, true, "www.origin.test:8443", "alt-admin", "https://www.origin.test:8443/admin"),
            (31001, false, "www.origin.test", "default", "https://www.origin.test/admin"),  // a listener's port (--to)
            (31001, false, "www.origin.test:31001", "default", "https://www.origin.test:31001/admin"),
            (31001, false, "www.origin.test:443", "default", "https://www.origin.test:443/admin"),  // the default, as if unnamed
            (31001, false, "www.origin.test:8443", "misdirected", "https://www.origin.test:8443/admin"),
        ]
        for c in cases {
            let p = try Playbook()
            let (m, client, origin) = try p.bumped(alpn: ["http/1.1"], policy: policy, clientPort: (c.port, c.redirected))
            try client.write(Array("GET /admin HTTP/1.1\r\nHost: \(c.host)\r\n\r\n".utf8))
            p.run(m, client: client, origin: origin)
            let logged = p.log.compactMap { if case .decidedRequest(let d, _, let url) = $0 { (d.rule, url) } else { nil } }.last
            #expect(logged?.0 == c.rule && logged?.1 == c.url, "\(c): \(String(describing: logged))")
            #expect(origin.read().isEmpty == (c.rule != "default"), "\(c)")
        }
    }

    @Test func spliceRelaysTheOriginalBytesUntouched() throws {
        let p = try Playbook()
        let m = try p.machine()
        let origin = try p.origin([.dns("online.bank.test")])
        p.probeOrigin = { try p.origin([.dns("online.bank.test")]) }
        // The client trusts the origin's own root: only an untouched relay can succeed.
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.originPKI.bundle), serverName: "online.bank.test")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(m.mode == .splice && p.decisions.first?.rule == "splice-bank")
        #expect(client.state == .established && client.peerChain.first?.issuer == "CN=Origin Test Root")
    }

    /// SNI spoofing must not buy a splice: the destination has to prove the name first.
    @Test func spoofedSNIIsNotSpliced() throws {
        let p = try Playbook()
        let m = try p.machine()
        // The client claims the bank, but the address serves someone else's certificate.
        let origin = try p.origin([.dns("evil.test")])
        p.probeOrigin = { try p.origin([.dns("evil.test")]) }
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "online.bank.test")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(p.log.contains { if case .probe(_, "online.bank.test") = $0 { true } else { false } })
        #expect(m.mode == .bump, "\(String(describing: m.mode))")
        #expect(p.decisions.last?.rule == "default" && p.decisions.last?.reason.contains("splice-bank not applied") == true, "\(p.decisions)")
        // Bumped, the upstream's certificate does not match the claimed name: the client fails.
        guard case .failed = client.state else { Issue.record("\(client.state)"); return }
        #expect(p.finishedReason?.contains("hostname mismatch") == true)
    }

    /// A client that refuses the masquerade (pinning; here: it trusts only the origin's root) teaches
    /// the host; its next connection is spliced — after the name is proved — and succeeds.
    @Test func aClientThatAbortsIsLearntIntoAutoSplice() throws {
        let p = try Playbook()
        let learnt = AutoSplice()
        // The request rule for corp hosts only: other hosts may be learnt.
        let learning = "\n[auto_splice]\nttl = 600\n"
        let everyHost = TestPolicies.noAdminPost + learning
        let policy = everyHost.replacingOccurrences(of: "stage = \"request\"\n", with: "stage = \"request\"\nsni = [\".corp.test\"]\n")
        p.probeOrigin = { try p.origin([.dns("pinned.test")]) }
        let pinned = { try TLSSession.client(try TLSContext.client(trustBundle: p.originPKI.bundle), serverName: "pinned.test") }

        let first = try p.machine(policy: policy, autoSplice: learnt)
        let client1 = try pinned()
        client1.advanceHandshake()
        p.run(first, client: client1, origin: try p.origin([.dns("pinned.test")]))
        guard case .failed = client1.state else { Issue.record("the pinned client must refuse Loupe's leaf: \(client1.state)"); return }
        #expect(p.log.contains { if case .learntSplice("pinned.test", _) = $0 { true } else { false } }, "\(p.log)")
        #expect(learnt.lookup("pinned.test") != nil)

        p.log = []
        let second = try p.machine(policy: policy, autoSplice: learnt)
        let client2 = try pinned()
        client2.advanceHandshake()
        p.run(second, client: client2, origin: try p.origin([.dns("pinned.test")]))
        #expect(second.mode == .splice && p.decisions.first?.rule == "auto_splice", "\(p.decisions)")
        #expect(p.log.contains { if case .probe(_, "pinned.test") = $0 { true } else { false } }, "a learnt name is proved first")
        #expect(client2.state == .established && client2.peerChain.first?.issuer == "CN=Origin Test Root")

        // A host a request-stage block may apply to is never learnt: any client could otherwise
        // opt out of that inspection by aborting one handshake. Nor is a learnt splice used
        // once a reload has put such a rule over it.
        p.log = []
        let corp = { try TLSSession.client(try TLSContext.client(trustBundle: p.originPKI.bundle), serverName: "app.corp.test") }
        let fourth = try p.machine(policy: policy, autoSplice: learnt)
        let client4 = try corp()
        client4.advanceHandshake()
        p.run(fourth, client: client4, origin: try p.origin([.dns("app.corp.test")]))
        #expect(learnt.lookup("app.corp.test") == nil && !p.log.contains { if case .learntSplice = $0 { true } else { false } })
        #expect(p.finishedReason?.contains("not learnt for splicing: request rule no-admin-post may apply") == true, "\(p.finishedReason ?? "-")")
        p.log = []
        let fifth = try p.machine(policy: everyHost, autoSplice: learnt)
        let client5 = try pinned()
        client5.advanceHandshake()
        p.run(fifth, client: client5, origin: try p.origin([.dns("pinned.test")]))
        #expect(fifth.mode == .bump && p.decisions.first?.rule == "default", "the learnt pinned.test is bumped under a rule for every host: \(p.decisions)")

        // Without [auto_splice] nothing is learnt.
        let quiet = AutoSplice()
        let third = try p.machine(autoSplice: quiet)
        let client3 = try pinned()
        client3.advanceHandshake()
        p.run(third, client: client3, origin: try p.origin([.dns("pinned.test")]))
        #expect(quiet.lookup("pinned.test") == nil)
    }

    @Test func learntHostsExpire() {
        let learnt = AutoSplice(capacity: 2)
        let t0 = Date()
        learnt.learn("a.test", reason: "r", ttl: 10, now: t0)
        #expect(learnt.lookup("A.TEST", now: t0.addingTimeInterval(9)) != nil)
        #expect(learnt.lookup("a.test", now: t0.addingTimeInterval(11)) == nil)
        learnt.learn("b.test", reason: "r", ttl: 10, now: t0)
        learnt.learn("c.test", reason: "r", ttl: 20, now: t0)
        learnt.learn("d.test", reason: "r", ttl: 30, now: t0)
        #expect(learnt.lookup("d.test", now: t0) != nil && learnt.lookup("b.test", now: t0) == nil, "bounded: the soonest to expire goes first")
    }

    /// Every SNI a client sends can make a probe answer: they are bounded like learnt hosts.
    @Test func probeAnswersAreBounded() throws {
        let probe = NameProbe(context: try TLSContext.client(), bypassMark: nil, capacity: 3)
        let dst = try #require(FlowFacts.Endpoint("192.0.2.10:443"))
        let t0 = Date()
        probe.remember(dst, "good.test", verified: true, reason: "verified", now: t0)      // 600 s
        for i in 0..<5 { probe.remember(dst, "spoof\(i).test", verified: false, reason: "no", now: t0) }  // 60 s each
        #expect(probe.cachedCount == 3)
        #expect(probe.cached(dst, "good.test", now: t0)?.0 == true, "the soonest to expire went first, not the proof that lasts")
        probe.remember(dst, "later.test", verified: false, reason: "no", now: t0.addingTimeInterval(61))
        #expect(probe.cachedCount == 2, "expired answers are dropped when full")
    }

    @Test func blockAtHelloSendsAnAlert() throws {
        let p = try Playbook()
        let m = try p.machine()
        let origin = try p.origin([.dns("bad.test")])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "bad.test")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        guard case .failed(let why) = client.state else { Issue.record("\(client.state)"); return }
        #expect(why.contains("access denied"), "\(why)")
        #expect(!p.log.contains { if case .connectUpstream = $0 { true } else { false } })
        #expect(p.finishedReason?.contains("block-bad") == true)
    }

    /// Never launder: a bad upstream certificate fails the client's handshake too, with an
    /// alert matching the reason, and no leaf is ever minted for it.
    @Test(arguments: ["expired", "wrong name", "untrusted root"])
    func upstreamVerificationFailureFailsTheClient(problem: String) throws {
        let p = try Playbook()
        let m = try p.machine()
        let stranger = try TestPKI(name: "Stranger Root")
        defer { TestEnv.remove(stranger.dir) }
        let origin: TLSSession
        switch problem {
        case "expired": origin = try p.origin([.dns("www.origin.test")], expired: true)
        case "wrong name": origin = try p.origin([.dns("elsewhere.test")])
        default:
            let (leaf, key) = try stranger.leaf([.dns("www.origin.test")])
            origin = try TLSSession.server(try TLSContext.server(), chain: [leaf], key: key)
        }
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        guard case .failed(let why) = client.state else { Issue.record("\(problem): \(client.state)"); return }
        let expectedAlert = ["expired": "certificate expired", "wrong name": "bad certificate", "untrusted root": "unknown ca"][problem]!
        #expect(why.contains(expectedAlert), "\(problem): \(why)")
        #expect(p.finishedReason?.hasPrefix("upstream TLS failed") == true, "\(problem): \(p.finishedReason ?? "-")")
        let verdict = m.tlsFields["upstream_verify"] as? String
        #expect(verdict != nil && verdict != "ok", "\(problem): the close line names the failure: \(verdict ?? "-")")
        #expect(!p.log.contains { if case .mintLeaf = $0 { true } else { false } })
    }

    @Test func helloWithoutSNIGetsTheDestinationIP() throws {
        let p = try Playbook()
        let m = try p.machine(dst: "192.0.2.10:443")
        let origin = try p.origin([.ip([192, 0, 2, 10]), .dns("origin.test")])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "192.0.2.10")
        client.advanceHandshake()
        p.run(m, client: client, origin: origin)
        #expect(client.state == .established, "\(client.state) / \(p.finishedReason ?? "-")")
        #expect(client.peerChain.first?.subjectAltNames == [.ip([192, 0, 2, 10]), .dns("origin.test")])
    }

    @Test func notTLSIsSplicedAsOpaqueBytes() throws {
        let p = try Playbook()
        let m = try p.machine()
        let commands = m.handle(.clientData(ByteBuffer(string: "GET / HTTP/1.1\r\n")))
        #expect(commands.count == 2 && commands.last == .connectUpstream(FlowFacts.Endpoint("192.0.2.10:443")!), "\(commands)")
        guard case .decided(let decision) = commands.first else { Issue.record("no hello decision: \(commands)"); return }
        #expect(decision.verdict == .splice && decision.reason.contains("not TLS"), "the default bump cannot apply: \(decision)")
        #expect(m.handle(.upstreamConnected) == [.sendUpstream(ByteBuffer(string: "GET / HTTP/1.1\r\n"))])
        #expect(m.handle(.upstreamData(ByteBuffer(bytes: [1, 2]))) == [.sendClient(ByteBuffer(bytes: [1, 2]))])
        #expect(m.handle(.clientClosed) == [.closeUpstream])
        #expect(m.handle(.upstreamClosed) == [.closeClient, .closeUpstream, .finished(reason: "both sides closed")])
        #expect(m.phase == .closed && m.handle(.clientData(ByteBuffer(bytes: [9]))) == [])
    }

    /// A hello rule on `tls = false` refuses what is not TLS: closed, nothing connected, no
    /// TLS alert (the client speaks no TLS) — and a server's greeting to a quiet client is not
    /// passed on.
    @Test func notTLSCanBeBlockedByPolicy() throws {
        let p = try Playbook()
        let policy = """
            [defaults]
            connect = "inspect"
            hello = "bump"
            request = "allow"
            [[rule]]
            name = "no-plaintext"
            stage = "hello"
            tls = false
            action = "block"
            """
        let m = try p.machine(policy: policy)
        let commands = m.handle(.clientData(ByteBuffer(string: "SSH-2.0-OpenSSH_9.2\r\n")))
        #expect(!commands.contains { if case .connectUpstream = $0 { true } else { false } }, "\(commands)")
        #expect(!commands.contains { if case .sendClient = $0 { true } else { false } }, "no alert to a client that speaks no TLS: \(commands)")
        #expect(commands.contains { if case .decided(let d) = $0 { d.rule == "no-plaintext" && d.verdict == .block } else { false } }, "\(commands)")
        #expect(m.phase == .closed)

        let greeted = try p.machine(dst: "192.0.2.10:25", policy: policy)
        _ = greeted.handle(.quiet) + greeted.handle(.upstreamConnected)
        let blocked = greeted.handle(.upstreamData(ByteBuffer(string: "220 mail.test ESMTP\r\n")))
        #expect(!blocked.contains { if case .sendClient = $0 { true } else { false } }, "\(blocked)")
        #expect(blocked.contains { if case .decided(let d) = $0 { d.rule == "no-plaintext" && d.verdict == .block } else { false } }, "\(blocked)")
        #expect(greeted.phase == .closed)
    }

    /// A client that says nothing — SMTP, FTP, POP3: the server greets first — gets its
    /// upstream once it has been quiet; the greeting shows the flow is not TLS: spliced, and
    /// passed on. A client that has sent anything is not taken for one.
    @Test func aServerThatSpeaksFirstIsSplicedOnceTheClientIsQuiet() throws {
        let p = try Playbook()
        let m = try p.machine(dst: "192.0.2.10:25")
        #expect(m.handle(.quiet) == [.connectUpstream(FlowFacts.Endpoint("192.0.2.10:25")!)])
        #expect(m.handle(.quiet).isEmpty, "one connection")
        #expect(m.handle(.upstreamConnected).isEmpty && m.phase == .peeking)
        let greeting = Array("220 mail.test ESMTP\r\n".utf8)
        let commands = m.handle(.upstreamData(ByteBuffer(bytes: greeting)))
        guard case .decided(let decision)? = commands.first else { Issue.record("no hello decision: \(commands)"); return }
        #expect(decision.verdict == .splice && decision.reason.contains("the server spoke first"), "\(decision)")
        #expect(commands.dropFirst() == [.sendClient(ByteBuffer(bytes: greeting))] && m.phase == .relaying, "\(commands)")
        #expect(m.handle(.clientData(ByteBuffer(string: "EHLO me\r\n"))) == [.sendUpstream(ByteBuffer(string: "EHLO me\r\n"))])

        let spoke = try p.machine()
        #expect(spoke.handle(.clientData(ByteBuffer(bytes: [0x16, 3, 1]))).isEmpty && spoke.handle(.quiet).isEmpty)
        let refused = try p.machine()
        _ = refused.handle(.quiet)
        #expect(refused.handle(.upstreamConnectFailed("refused")).last == .finished(reason: "upstream connect failed while the client was quiet: refused"))
    }

    /// A quiet client that then sends its hello is bumped over the connection it already got.
    @Test func aHelloAfterTheQuietUsesTheConnectionMade() throws {
        let p = try Playbook()
        let (m, client, _) = try p.bumped(alpn: ["http/1.1"], first: [.quiet])
        #expect(client.state == .established && m.phase == .relaying, "\(client.state) / \(p.finishedReason ?? "-")")
        #expect(p.log.filter { if case .connectUpstream = $0 { true } else { false } }.count == 1, "\(p.log)")
    }

    @Test func deadlinesAndEarlyCloses() throws {
        let p = try Playbook()
        let silent = try p.machine()
        #expect(silent.handle(.timeout) == [.closeClient, .closeUpstream, .finished(reason: "no ClientHello before the deadline")])
        let partial = try p.machine()
        #expect(partial.handle(.clientData(ByteBuffer(bytes: [0x16, 0x03, 0x01]))) == [])
        #expect(partial.handle(.clientClosed).last == .finished(reason: "client closed during peeking"))
        let unreachable = try p.machine()
        let origin = try p.origin([.dns("www.origin.test")])
        p.connectFails = "connection refused"
        let client = try TLSSession.client(try TLSContext.client(trustBundle: p.loupeRootBundle), serverName: "www.origin.test")
        client.advanceHandshake()
        p.run(unreachable, client: client, origin: origin)
        guard case .failed = client.state else { Issue.record("\(client.state)"); return }
        #expect(p.finishedReason == "upstream connect failed: connection refused")
    }
}
