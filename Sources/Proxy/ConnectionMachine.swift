import CA
import NIOCore
import Policy
import TLS
import Wire

/// The life of one diverted TCP connection, sans-IO (as mitmproxy's proxy layers): events in,
/// commands out. The NIO handler that will own the sockets only moves bytes and timers; every
/// decision — peek, splice, bump, block, what the client sees when upstream verification
/// fails — is made here and tested as a script of events.
///
///   peeking ──hello──▶ policy(hello) ─┬─ splice ─▶ connecting ─▶ relaying (opaque bytes)
///      │ not TLS ─▶ splice (opaque)    ├─ block ──▶ TLS alert, closed
///      │ timeout ─▶ closed             └─ bump ───▶ connecting ─▶ upstream TLS handshake
///      │                                             ─▶ mint leaf ─▶ client TLS handshake ─▶ relaying (plaintext)
///      └ client quiet ─▶ connect upstream; the server speaks first ─▶ not TLS ─▶ splice (opaque)
public final class ConnectionMachine {
    /// Bytes travel as the channels' own buffers: a splice hands what it read to the other
    /// side as it is, with no copy in and out of an array.
    public enum Event: Sendable {
        case clientData(ByteBuffer)
        case clientClosed
        case upstreamConnected
        case upstreamConnectFailed(String)
        case upstreamData(ByteBuffer)
        case upstreamClosed
        case leafReady(Leaf)
        case leafFailed(String)
        /// The answer to `.probe`: whether the destination proved the name with a valid certificate.
        case probed(verified: Bool, reason: String)
        /// The current stage's deadline passed (peek, connect or handshake).
        case timeout
        /// Nothing moved either way for the idle timeout (while relaying).
        case idle
        /// The client has been quiet for a moment: a chance to give buffers back.
        case quiet
        /// The commands before `.afterSending` are carried out.
        case sent
    }

    public enum Command: Equatable, Sendable {
        case connectUpstream(FlowFacts.Endpoint)
        case sendClient(ByteBuffer)
        case sendUpstream(ByteBuffer)
        case mintLeaf(LeafRequest)
        /// Prove that `destination` serves a valid certificate for `name` (own handshake, cached).
        case probe(FlowFacts.Endpoint, name: String)
        case decided(Decision)
        /// A request-stage decision, with the request it was about (method, absolute URL).
        case decidedRequest(Decision, method: String, url: String)
        /// A request's response ended: its status and body bytes, for the flow log.
        case answered(HTTPExchange)
        case closeClient
        case closeUpstream
        /// The connection is over; `reason` goes to the flow log.
        case finished(reason: String)
        /// A leaf from the quarantine issuer (upstream verification failed; see Settings).
        case mintQuarantineLeaf(LeafRequest)
        /// The host was learnt into the auto-splice set (for the log).
        case learntSplice(host: String, reason: String)
        /// Hand the machine `.sent` once the commands before this one are carried out: for work
        /// that must not hold them up (the upstream's hello leaves first).
        case afterSending
    }

    public enum Phase: Equatable, Sendable {
        case peeking, probing, connecting, upstreamHandshake, minting, clientHandshake, relaying, closed
    }

    public struct Settings: Sendable {
        /// Trust for upstream verification (system store, or `--upstream-ca`).
        public var upstreamContext: TLSContext
        public var clientContext: TLSContext
        /// ALPN protocols Loupe can inspect on a bumped flow (others are relayed opaquely).
        public var relayableALPN: [String] = ["h2", "http/1.1", "http/1.0"]
        /// Hosts learnt for splicing (read at hello, taught when a client aborts our handshake);
        /// used only when the policy has `[auto_splice]`.
        public var autoSplice: AutoSplice?
        /// On a failed upstream verification, serve a leaf from the untrusted quarantine issuer
        /// (so a browser shows its own error page) instead of failing the handshake with an alert.
        public var quarantineFailures = false
        /// Client identities by store label, for hello rules that name one (`identity`).
        public var clientIdentities: [String: ClientIdentity] = [:]
        /// With these, a client-facing handshake like the last one to the same upstream is
        /// worked out while the upstream answers (see `prepareClientHandshake`).
        public var forecasts: HandshakeForecasts?
        /// The port the client connected to, and whether it came redirected (so that port is
        /// the origin's, not a proxy listener's): a request's URL is judged with the port its
        /// bytes really go to. nil: unknown (requests are judged by the port they name).
        public var clientPort: (port: UInt16, redirected: Bool)?
        public init(upstreamContext: TLSContext, clientContext: TLSContext) {
            self.upstreamContext = upstreamContext
            self.clientContext = clientContext
        }
    }

    public private(set) var phase: Phase = .peeking
    public private(set) var facts: FlowFacts
    public private(set) var mode: Verdict?
    private let policy: Policy
    private let settings: Settings
    private var upstreamTLS: TLSSession?
    private var clientTLS: TLSSession?
    /// Present on bumped HTTP/1.1 flows: each request head is decided before it goes upstream.
    private var requests: HTTPRequestTracker?
    /// …and the responses, so each request's line gets a status and size.
    private var responses: HTTPResponseTracker?
    /// Present on bumped HTTP/2 flows: each request's header block likewise.
    private var http2: HTTP2Box?
    /// The HTTP/2 filter behind a reference: held inline, its ~600 bytes (HPACK state) sat in
    /// every connection's machine, HTTP/1.1 and spliced ones too.
    private final class HTTP2Box {
        var filter = HTTP2RequestFilter()
    }
    private var clientClosed = false
    private var upstreamClosed = false
    /// The upstream connection, which a quiet client gets before it has said anything (to hear
    /// a server that speaks first) and everyone else once the hello is decided.
    private var link = Link.none
    private enum Link { case none, connecting, connected }
    /// Whether any application data came from the upstream.
    private var upstreamSentPlaintext = false
    private var leaf: Certificate?
    /// The upstream's verified certificate: every request must name a host it covers.
    private var upstreamCertificate: Certificate?
    /// The last host found covered (keep-alive requests name the same one again and again).
    private var coveredHost: String?
    /// Why the upstream failed, when the client is being served a quarantine leaf.
    private var quarantined: String?
    /// What only the set-up needs, behind a reference that goes once the connection relays or
    /// ends: held inline it was ~350 bytes of every idle connection's machine.
    private var setup: Setup? = Setup()
    private final class Setup {
        var hello = ClientHelloReader()
        /// A name-based splice waiting for its probe.
        var pendingSplice: Decision?
        /// The leaf key the client's hello can verify under TLS 1.3 and under 1.2 (the version
        /// depends on the upstream; see `leafKeyType`).
        var leafKeys = (upToTLS13: LeafKeyType.ecdsaP256, atTLS12: LeafKeyType.ecdsaP256)
        /// The newest TLS version the client offered: the upstream leg offers no newer, so an
        /// origin that refuses it (TLS 1.3 only) refuses it through Loupe too.
        var clientMaximum: TLSVersion?
        /// The client's hello, until the upstream leg's offer is made from it.
        var clientHello: ClientHello?
        /// The upstream leg offers only the client's suites, schemes and groups, so an origin
        /// the client could not have negotiated with refuses it through Loupe too.
        var upstreamOffer: UpstreamOffer?
        var helloDecision: Decision?
        /// The upstream leg's resumption key, under which its handshake forecast is filed.
        var forecastKey: String?
        /// The forecast found under that key, until its handshake is prepared.
        var forecast: HandshakeForecasts.Forecast?
        /// The client-facing handshake worked out from a forecast, its flight held back.
        var prepared: PreparedClientHandshake?
    }
    private struct PreparedClientHandshake {
        let session: TLSSession
        let flight: [UInt8]
        let forecast: HandshakeForecasts.Forecast
    }
    /// A blocked request's 403 and the reason to log, held while the requests pipelined before
    /// it are still being answered: sent after their answers, so the client pairs each answer
    /// with its own request. Nothing more of the client's goes upstream meanwhile.
    private var heldRefusal: (page: [UInt8], reason: String)?
    /// Why a bumped flow without ALPN is relayed unread (what it carries is not HTTP/1), for
    /// the flow log's close line.
    public private(set) var opaqueBecause: String?
    /// The flow log's TLS fields (DESIGN.md "Flow log") as far as the connection got: versions,
    /// ciphers and ALPN of both legs, the upstream certificate and its verification, the leaf.
    public var tlsFields: [String: Any] {
        var out: [String: Any] = [:]
        func negotiated(_ session: TLSSession) -> Bool { session.state == .established || session.state == .closed }
        if let c = clientTLS, negotiated(c) {
            out["client_tls"] = c.version
            out["client_cipher"] = c.cipher
            out["client_alpn"] = c.alpn
        }
        if let u = upstreamTLS {
            if negotiated(u) {
                out["upstream_tls"] = u.version
                out["upstream_cipher"] = u.cipher
                out["upstream_alpn"] = u.alpn
                out["upstream_resumed"] = u.resumed
            }
            if let cert = u.peerCertificate {
                out["upstream_subject"] = cert.subject
                out["upstream_issuer"] = cert.issuer
                out["upstream_sha256"] = cert.sha256Fingerprint
            }
            // A handshake that failed before a chain arrived (no shared version, an oversized
            // message) has no verification verdict to report.
            if let error = u.verifyError {
                out["upstream_verify"] = error
            } else if u.state != .handshaking, u.peerCertificate != nil {
                out["upstream_verify"] = "ok"
            }
            if let staple = u.stapledStatus { out["upstream_ocsp"] = staple.description }
        }
        out["leaf_sha256"] = leaf?.sha256Fingerprint
        return out
    }

    /// `facts` are the connect-stage facts (original destination from the socket).
    public init(facts: FlowFacts, policy: Policy, settings: Settings) {
        self.facts = facts
        self.policy = policy
        self.settings = settings
    }

    public func handle(_ event: Event) -> [Command] {
        switch (phase, event) {
        case (.closed, _):
            return []
        case (.peeking, .clientData(let bytes)):
            guard let setup else { return [] }
            switch setup.hello.feed([UInt8](buffer: bytes)) {
            case .needMore: return []
            case .hello(let h): return decide(h)
            case .notTLS: return decideNotTLS()
            case .malformed(let error): return finish("malformed ClientHello: \(error)", alert: 50)  // decode_error
            }
        case (.peeking, .timeout):
            return finish("no ClientHello before the deadline")
        case (.peeking, .quiet):
            // Nothing from the client for a while: a TLS client sends its hello at once, one of
            // a protocol whose server speaks first (SMTP, FTP, POP3, IMAP) waits for a greeting.
            guard link == .none, setup?.hello.bytes.isEmpty == true, let dst = facts.dst else { return [] }
            link = .connecting
            return [.connectUpstream(dst)]
        case (.peeking, .upstreamConnected), (.probing, .upstreamConnected):
            link = .connected
            return []
        case (.peeking, .upstreamData(let bytes)):
            return serverSpokeFirst(bytes)
        case (.peeking, .upstreamConnectFailed(let why)):
            return finish("upstream connect failed while the client was quiet: \(why)")
        case (.peeking, .upstreamClosed):
            return finish("the upstream closed before either side spoke")
        case (.probing, .upstreamData):
            return finish("the upstream spoke before the client's hello was answered", alert: 40)
        case (.probing, .upstreamConnectFailed(let why)):
            return finish("upstream connect failed: \(why)", alert: 40)
        case (_, .clientClosed) where phase != .relaying:
            return finish("client closed during \(phase)")
        case (.connecting, .upstreamConnected):
            link = .connected
            return upstreamReady()
        case (.connecting, .upstreamConnectFailed(let why)):
            return finish("upstream connect failed: \(why)", alert: mode == .bump ? 40 : nil)
        case (.upstreamHandshake, .sent):
            prepareClientHandshake()
            return []
        case (.upstreamHandshake, .upstreamData(let bytes)):
            guard let upstream = upstreamTLS else { return [] }
            upstream.receive(bytes)
            var out = send(upstream: upstream.takeRecords())
            switch upstream.state {
            case .handshaking: return out
            case .failed(let why):
                // Never launder: the client's handshake fails too — with an alert, or (quarantine)
                // under a certificate nobody trusts, so a browser shows its own error page.
                if let demand = failedForWantOfACertificate("upstream TLS failed: \(why)") { return out + demand }
                guard settings.quarantineFailures else { return out + finish("upstream TLS failed: \(why)", alert: upstream.failureAlert) }
                quarantined = "upstream TLS failed: \(why)"
                phase = .minting
                var request: LeafRequest
                if let cert = upstream.peerCertificate {
                    request = .mirroring(cert, extraNames: facts.sni == nil ? facts.dst.map { [.ip($0.address)] } ?? [] : [])
                } else {
                    request = .forNames([facts.sni ?? facts.dst.map { IPAddress.format($0.address) } ?? "unknown"])
                }
                request.keyType = leafKeyType(upstream)
                return out + [.mintQuarantineLeaf(request), .closeUpstream]
            case .established, .closed:
                guard let leafCert = upstream.peerCertificate else { return out + finish("upstream sent no certificate", alert: 42) }
                upstreamCertificate = leafCert
                // Without SNI the upstream was verified against the destination address, so the
                // mirrored names already carry it (an IP SAN, or a CN-only subject — where adding
                // the SAN would pass clients that refuse a CN-named address).
                phase = .minting
                var request = LeafRequest.mirroring(leafCert, keyType: leafKeyType(upstream))
                // The real server stapled a good response to a client that asked: so does Loupe.
                request.stapled = upstream.stapledStatus == .good
                out.append(.mintLeaf(request))
                return out
            }
        case (.probing, .probed(let verified, let reason)):
            guard let decision = setup?.pendingSplice else { return [] }
            setup?.pendingSplice = nil
            if verified { return act(decision) }
            // SNI spoofing must not buy a splice: decide again without the name-based splices.
            let nameRules = Set(policy.rules.filter { $0.stage == .hello && $0.action == .splice && $0.matchesOnSNI }.map(\.name))
            var second = policy.decide(.hello, facts, excluding: nameRules)
            second.reason += " (rule \(decision.rule) not applied: \(reason))"
            return act(second)
        case (.minting, .leafReady(let leaf)):
            return startClientTLS(leaf)
        case (.minting, .leafFailed(let why)):
            return finish("minting the masquerade leaf failed: \(why)", alert: 80)
        case (.clientHandshake, .clientData(let bytes)):
            return pumpClientHandshake([UInt8](buffer: bytes))
        case (.clientHandshake, .clientClosed):
            return clientAborted("the client closed the connection")
        case (.clientHandshake, .upstreamData(let bytes)), (.minting, .upstreamData(let bytes)):
            // Early upstream data (a TLS 1.3 ticket) waits inside the upstream session.
            upstreamTLS?.receive(bytes)
            return []
        case (.relaying, .idle):
            // As a server closing an idle keep-alive connection: close_notify on both legs of a
            // bumped flow (nothing is cut mid-message: nothing was moving), FIN on a splice.
            if mode != .splice, let client = clientTLS, let upstream = upstreamTLS {
                client.close()
                upstream.close()
                return send(client: client.takeRecords()) + send(upstream: upstream.takeRecords()) + finish("idle: nothing moved for the idle timeout")
            }
            return finish("idle: nothing moved for the idle timeout")
        case (.relaying, .quiet):
            clientTLS?.releaseBuffers()
            upstreamTLS?.releaseBuffers()
            return []
        case (_, .idle), (_, .quiet):
            return []  // before relaying, the handshake deadline rules
        case (.relaying, let event):
            return relay(event)
        case (_, .timeout):
            return finish("deadline passed during \(phase)", alert: phase == .clientHandshake ? nil : 40)
        case (_, .upstreamClosed) where quarantined != nil:
            return []   // the failed upstream is gone on purpose; the client still gets its page
        case (_, .upstreamClosed):
            // TLS 1.3: a server refusing the empty client certificate says so after the handshake.
            return failedForWantOfACertificate("upstream closed during \(phase)") ?? finish("upstream closed during \(phase)", alert: 40)
        default:
            return []
        }
    }

    // MARK: stages

    /// Not TLS on an inspected flow: hello rules on `tls = false` may block it; anything else
    /// is relayed opaquely (the policy turns a bump into a splice), the decision logged either way.
    private func decideNotTLS(because why: String? = nil) -> [Command] {
        facts.tls = false
        var decision = policy.decide(.hello, facts)
        if let why { decision.reason += " (\(why))" }
        mode = decision.verdict
        setup?.helloDecision = decision
        if decision.verdict == .block {
            return [.decided(decision)] + finish("blocked at hello by rule \(decision.rule): not TLS")  // no alert: the client speaks no TLS
        }
        return [.decided(decision)] + startSplice()
    }

    /// The upstream sent the first bytes of the flow: no TLS client waits for its server, so
    /// the flow is not TLS — decided as such, and the greeting passed on once it is spliced.
    private func serverSpokeFirst(_ greeting: ByteBuffer) -> [Command] {
        let commands = decideNotTLS(because: "the server spoke first")
        guard phase == .relaying else { return commands }
        return commands + [.sendClient(greeting)]
    }

    private func decide(_ h: ClientHello) -> [Command] {
        facts.tls = true
        facts.sni = h.serverName
        facts.alpn = h.alpn
        setup?.leafKeys = (Self.leafKey(for: h, at: 0x0304), Self.leafKey(for: h, at: 0x0303))
        setup?.clientMaximum = h.newestVersion.flatMap { TLSVersion(rawValue: Int32($0)) }
        setup?.clientHello = h
        var decision = policy.decide(.hello, facts)
        if policy.autoSpliceTTL != nil, decision.verdict == .bump, let key = autoSpliceKey, let learnt = settings.autoSplice?.lookup(key),
           policy.requestBlock(couldApplyTo: facts) == nil {  // learnt before a reload added one
            decision = Decision(stage: .hello, verdict: .splice, rule: "auto_splice",
                                reason: "learnt: a client aborted Loupe's handshake (\(learnt.reason)); spliced until \(learnt.expires.formatted(.iso8601))")
        }
        // A splice chosen by the client's name (an `sni` rule, or a learnt name) waits for proof.
        let byName = decision.rule == "auto_splice" || policy.rule(named: decision.rule)?.matchesOnSNI == true
        if decision.verdict == .splice, let sni = facts.sni, let dst = facts.dst, byName {
            setup?.pendingSplice = decision
            phase = .probing
            return [.probe(dst, name: sni)]
        }
        return act(decision)
    }

    private func act(_ decision: Decision) -> [Command] {
        mode = decision.verdict
        setup?.helloDecision = decision
        defer { setup?.clientHello = nil }
        switch decision.verdict {
        case .block:
            return [.decided(decision)] + finish("blocked at hello by rule \(decision.rule)", alert: 49)  // access_denied
        case .splice:
            return [.decided(decision)] + startSplice()
        default:
            if let maximum = setup?.clientMaximum, maximum < .tls12 {  // refused before any upstream work
                return [.decided(decision)] + finish("the client offers nothing newer than \(maximum) (Loupe speaks TLS 1.2 and 1.3)", alert: 70)  // protocol_version
            }
            if let h = setup?.clientHello {
                do {
                    setup?.upstreamOffer = try settings.upstreamContext.offers.offer(mirroring: h)
                } catch {
                    return [.decided(decision)] + finish(error.reason, alert: 40)  // handshake_failure, as from an origin with nothing in common
                }
            }
            return [.decided(decision)] + useUpstream()
        }
    }

    private func startSplice() -> [Command] {
        mode = .splice
        return useUpstream()
    }

    /// The decided flow's upstream: the connection a quiet client already got, or a new one.
    private func useUpstream() -> [Command] {
        phase = .connecting
        switch link {
        case .connected: return upstreamReady()
        case .connecting: return []  // `.upstreamConnected` carries on
        case .none:
            guard let dst = facts.dst else { return finish("no original destination") }
            link = .connecting
            return [.connectUpstream(dst)]
        }
    }

    /// Connected and decided: a splice replays what the client sent, a bump starts its handshake.
    private func upstreamReady() -> [Command] {
        guard mode == .splice else { return startUpstreamTLS() }
        phase = .relaying
        defer { setup = nil }  // the hello is replayed once; an idle flow keeps no copy
        guard let sent = setup?.hello.bytes, !sent.isEmpty else { return [] }
        return [.sendUpstream(ByteBuffer(bytes: sent))]
    }

    private func startUpstreamTLS() -> [Command] {
        // HTTP protocols Loupe inspects are kept from a mixed list; a client offering only
        // others (imap, xmpp-client, dot, mqtt) has them offered as they are and, if the origin
        // takes one, relayed opaquely — as a flow without ALPN that is not HTTP — instead of
        // losing the protocol it asked for.
        var offered = facts.alpn.filter { settings.relayableALPN.contains($0) }
        // HTTP in a form Loupe cannot read (SPDY, h2c, HTTP/0.9, HTTP/3's ids) is never
        // offered: an origin taking it would have requests relayed past the request stage.
        if offered.isEmpty { offered = facts.alpn.filter { !Self.unreadableHTTP($0) } }
        let name = facts.sni ?? facts.dst.map { IPAddress.format($0.address) }
        var identity: ClientIdentity?
        let label = setup?.helloDecision.flatMap { policy.rule(named: $0.rule)?.identity }
        if let label {
            guard let found = settings.clientIdentities[label] else {
                return finish("rule \(setup?.helloDecision?.rule ?? "?") names client identity '\(label)', which is not in the store (loupe store import-p12 --label \(label))", alert: 80)
            }
            identity = found
        }
        do {
            // Sessions are resumed per upstream name, address, ALPN offer, client identity,
            // version ceiling and mirrored offer.
            let key = "\(name ?? "")|\(facts.dst?.description ?? "")|\(offered.joined(separator: ","))|\(label ?? "")|\(setup?.clientMaximum?.rawValue ?? 0)|\(setup?.upstreamOffer?.fingerprint ?? "")"
            let upstream = try TLSSession.client(settings.upstreamContext, serverName: name, alpn: offered, resumptionKey: key,
                                                 identity: identity, maximum: setup?.clientMaximum, offer: setup?.upstreamOffer)
            upstreamTLS = upstream
            setup?.upstreamOffer = nil  // in the session now; an idle flow keeps no copy
            setup?.forecastKey = key
            phase = .upstreamHandshake
            upstream.advanceHandshake()
            let hello = send(upstream: upstream.takeRecords())
            // With a forecast, the client-facing handshake is prepared once the hello has left
            // (`prepareClientHandshake`). Not with a key log: a discarded handshake's secrets
            // would be filed under the client's random too.
            guard let forecasts = settings.forecasts, !settings.clientContext.logsKeys,
                  let forecast = forecasts.forecast(for: key) else { return hello }
            setup?.forecast = forecast
            return hello + [.afterSending]
        } catch {
            return finish("cannot start the upstream TLS session: \(error)", alert: 80)
        }
    }

    private func startClientTLS(_ leaf: Leaf) -> [Command] {
        // Present exactly the protocol the upstream chose, or none.
        let alpn = upstreamTLS?.alpn.map { [$0] } ?? []
        // …and no newer TLS than the upstream spoke: a client that would refuse the real
        // server's TLS 1.2 must refuse Loupe's too.
        let maximum = upstreamTLS?.protocolVersion
        if let ready = setup?.prepared {
            setup?.prepared = nil
            let same = quarantined == nil && ready.forecast.leaf.certificate === leaf.certificate
                && ready.forecast.alpn == alpn && ready.forecast.maximum == maximum
            settings.forecasts?.count(used: same)
            if same {
                clientTLS = ready.session
                self.leaf = leaf.certificate
                phase = .clientHandshake
                setup = nil  // set-up is over: an idle flow keeps none of it
                return send(client: ready.flight) + pumpClientHandshake([])
            }
        }
        // What this handshake is made with forecasts the next one (a dropped forecast is replaced).
        if quarantined == nil, let key = setup?.forecastKey {
            settings.forecasts?.record(leaf: leaf, alpn: alpn, maximum: maximum, for: key)
        }
        do {
            let client = try clientSession(leaf, alpn: alpn, maximum: maximum)
            clientTLS = client
            self.leaf = leaf.certificate
            phase = .clientHandshake
            defer { setup = nil }  // the hello is replayed once; set-up is over
            return pumpClientHandshake(setup?.hello.bytes ?? [])
        } catch {
            return finish("cannot start the client TLS session: \(error)", alert: 80)
        }
    }

    /// The client-facing session under `leaf`. The leaf alone: its issuer is the anchor the
    /// client already holds, and every extra certificate costs the client a parse (hundreds of
    /// µs with OpenSSL 3). With a staple the root goes along: a client checking the OCSP
    /// response looks for its issuer among the certificates the server sent (curl
    /// --cert-status does).
    private func clientSession(_ leaf: Leaf, alpn: [String], maximum: TLSVersion?) throws(OpenSSLError) -> TLSSession {
        let chain = leaf.staple == nil ? [leaf.certificate] : [leaf.certificate] + leaf.chain
        return try TLSSession.server(settings.clientContext, chain: chain, key: leaf.key, alpn: alpn, maximum: maximum, staple: leaf.staple)
    }

    /// While the upstream answers, the client-facing handshake the forecast expects is worked
    /// out — its key share, signature and flight — and held: nothing reaches the client before
    /// the upstream is verified and has chosen the forecast's ALPN and version, and the leaf
    /// minted for it is the forecast's, staple and all (`startClientTLS`); otherwise it is thrown
    /// away unsent and the handshake made afresh from the same hello.
    private func prepareClientHandshake() {
        guard let setup, let forecast = setup.forecast else { return }
        setup.forecast = nil
        guard let session = try? clientSession(forecast.leaf, alpn: forecast.alpn, maximum: forecast.maximum) else { return }
        session.receive(setup.hello.bytes)
        guard session.state == .handshaking else {
            settings.forecasts?.count(used: false)  // the hello fails it: the fresh one will too
            return
        }
        setup.prepared = PreparedClientHandshake(session: session, flight: session.takeOutput(), forecast: forecast)
    }

    private func discardPrepared() {
        guard setup?.prepared != nil else { return }
        setup?.prepared = nil
        settings.forecasts?.count(used: false)
    }

    /// P-256 ECDSA unless the client's hello rules it out at the version the client leg will
    /// speak (at most the upstream's; a failed upstream handshake leaves it open).
    private func leafKeyType(_ upstream: TLSSession) -> LeafKeyType {
        let ceiling = upstream.protocolVersion ?? .tls13
        let keys = setup?.leafKeys ?? (.ecdsaP256, .ecdsaP256)
        return ceiling >= .tls13 ? keys.upToTLS13 : keys.atTLS12
    }

    /// P-256 for every client that verifies it; otherwise RSA, unless the client plainly takes
    /// no RSA but ECDSA on P-384 or P-521 (a key it cannot use fails a handshake that works direct).
    static func leafKey(for hello: ClientHello, at version: UInt16) -> LeafKeyType {
        if hello.acceptsP256ECDSA(at: version) { return .ecdsaP256 }
        if hello.refusesRSA(at: version) {
            if hello.acceptsECDSA(curve: ClientHello.p384, at: version) { return .ecdsaP384 }
            if hello.acceptsECDSA(curve: ClientHello.p521, at: version) { return .ecdsaP521 }
        }
        return .rsa2048
    }

    /// ALPN ids of HTTP that the request stage cannot read.
    static func unreadableHTTP(_ id: String) -> Bool {
        let id = id.lowercased()
        return ["http/0.9", "h2c", "h3"].contains(id) || id.hasPrefix("spdy/") || id.hasPrefix("h3-") || id.hasPrefix("hq")
    }

    /// Where a learnt splice is filed: the SNI, or the destination address without one.
    private var autoSpliceKey: String? { facts.sni ?? facts.dst.map { IPAddress.format($0.address) } }

    /// The client refused our masquerade (pinning, mTLS, a root it does not trust): with
    /// `[auto_splice]`, the host is learnt so its next connections are spliced.
    private func clientAborted(_ why: String) -> [Command] {
        let (learnt, note) = learnSplice(because: "the client aborted Loupe's handshake (\(why))")
        return learnt + finish("client aborted our handshake: \(why)\(note)")
    }

    /// With `[auto_splice]`: the host goes into the learnt set, its next connections spliced —
    /// unless a request-stage block could apply to it: any client could then opt out of the
    /// inspection the policy asks for by aborting one handshake. The note says so, for the log.
    private func learnSplice(because why: String) -> (commands: [Command], note: String) {
        guard let ttl = policy.autoSpliceTTL, let key = autoSpliceKey, let learning = settings.autoSplice else { return ([], "") }
        if let block = policy.requestBlock(couldApplyTo: facts) {
            return ([], "; not learnt for splicing: \(block) may apply to its requests")
        }
        learning.learn(key, reason: why, ttl: ttl)
        return ([.learntSplice(host: key, reason: "spliced for \(Int(ttl)) s: \(why)")], "")
    }

    /// An upstream that asked for a client certificate Loupe had none for, and then ended the
    /// connection before sending anything: it demands one. Only a splice lets the client's own
    /// certificate through, so the host is learnt (with `[auto_splice]`) and the reason says so.
    private func failedForWantOfACertificate(_ why: String) -> [Command]? {
        guard upstreamTLS?.certificateRequested == true, !upstreamSentPlaintext else { return nil }
        let reason = "the upstream demands a client certificate and no hello rule names an identity for it"
        let (learnt, note) = learnSplice(because: reason)
        return learnt + finish("\(why): \(reason)\(note)", alert: phase == .relaying ? nil : 40)
    }

    private func pumpClientHandshake(_ bytes: [UInt8]) -> [Command] {
        guard let client = clientTLS else { return [] }
        client.receive(bytes)
        var out = send(client: client.takeRecords())
        switch client.state {
        case .handshaking: return out
        case .failed(let why): return out + clientAborted(why)
        case .established, .closed:
            phase = .relaying
            // The request may have come with the handshake's last flight.
            if let why = quarantined { return out + answerQuarantined(.clientData(ByteBuffer()), why) }
            if client.alpn == nil || client.alpn == "http/1.1" || client.alpn == "http/1.0" {
                requests = HTTPRequestTracker()
                responses = HTTPResponseTracker()
            }
            if client.alpn == "h2" {
                http2 = HTTP2Box()
                http2?.filter.defaultAuthority = facts.sni ?? ""  // a request naming no host is for the SNI's
            }
            // Anything either side already sent past the handshake flows now; the handshake's
            // buffers go.
            out += forwardPlaintext()
            client.releaseBuffers()
            upstreamTLS?.releaseBuffers()
            return out
        }
    }

    private func relay(_ event: Event) -> [Command] {
        if let why = quarantined { return answerQuarantined(event, why) }
        switch (mode, event) {
        case (.splice?, .clientData(let bytes)): return [.sendUpstream(bytes)]
        case (.splice?, .upstreamData(let bytes)): return [.sendClient(bytes)]
        // Spliced: TCP half-closes pass straight through.
        case (.splice?, .clientClosed):
            clientClosed = true
            return upstreamClosed ? finish("both sides closed") : [.closeUpstream]
        case (.splice?, .upstreamClosed):
            upstreamClosed = true
            return clientClosed ? finish("both sides closed") : [.closeClient]
        case (_, .clientData(let bytes)):
            clientTLS?.receive(bytes)
            return forwardPlaintext()
        case (_, .upstreamData(let bytes)):
            upstreamTLS?.receive(bytes)
            return forwardPlaintext()
        // TCP closed under a bumped flow. After a close_notify (already passed on) this is the
        // end of a clean close; without one the stream was cut, and the other side must see a
        // cut too — a close_notify now would turn a truncated body into a complete one.
        case (_, .clientClosed):
            if clientClosed { return upstreamClosed ? finish("both sides closed") : [] }
            return finish("client closed without close_notify")
        case (_, .upstreamClosed):
            if upstreamClosed { return clientClosed ? finish("both sides closed") : [] }
            // After the client's own close_notify, closing without answering it is how many
            // servers end (nginx among them): the same cut is passed on, but the log says the
            // client ended first rather than reading as a truncation mid-exchange.
            if clientClosed { return finish("upstream closed without close_notify, after the client's close_notify") }
            return failedForWantOfACertificate("upstream closed") ?? finish("upstream closed without close_notify: the cut is passed on to the client")
        default:
            return []
        }
    }

    /// Decrypt on one leg, encrypt on the other, both directions.
    private func forwardPlaintext() -> [Command] {
        guard let client = clientTLS, let upstream = upstreamTLS else { return [] }
        var out: [Command] = []
        let up = client.read()
        if !up.isEmpty, let http2 {
            let filtered = http2.filter.fromClient(up) { method, url in
                facts.method = method
                facts.url = url
                defer { url = facts.url ?? url }  // as judged: with the connection's port
                return decideRequest()
            }
            out += filtered.decisions.map { .decidedRequest($0.decision, method: $0.method, url: $0.url) }
            if let failure = filtered.failure { return out + finish(failure) }
            try? upstream.write(filtered.upstream)
            if !filtered.client.isEmpty { try? client.write(filtered.client) }
        } else if !up.isEmpty {
            if heldRefusal != nil {
                // Behind a blocked request: dropped, the connection ends with its 403.
            } else if requests == nil {
                try? upstream.write(up)
            } else if let end = relayRequests(requests!.feed(up), client, upstream, into: &out) {
                return out + end
            }
        }
        let down = upstream.read()
        if !down.isEmpty {
            upstreamSentPlaintext = true
            out += (responses?.feed(down) ?? []).map(Command.answered)
            // The answer to an upgrade or CONNECT (the last request sent) decides what the held
            // client bytes are.
            if requests?.awaitingSwitch == true, let switched = responses?.switchedProtocols,
               let end = relayRequests(requests!.upstreamAnswered(switched: switched), client, upstream, into: &out) {
                return out + end
            }
            if let http2 {
                let seen = http2.filter.fromUpstream(down)
                out += seen.answered.map(Command.answered)
                if let failure = seen.failure { return out + finish(failure) }
                try? client.write(down)
                if !seen.client.isEmpty { try? client.write(seen.client) }
            } else {
                try? client.write(down)
                if let held = heldRefusal, responses?.allAnswered != false {
                    // The answers before the blocked request are through: its 403 follows. If
                    // they can no longer be told apart (nil), it ends without one, which might
                    // land inside an answer.
                    return out + end(client, upstream, page: responses?.allAnswered == true ? held.page : nil, reason: held.reason)
                }
            }
        }
        // A close_notify on one leg is passed on as a close_notify on the other, then a half-close.
        var halfClose: [Command] = []
        if upstream.state == .closed, !upstreamClosed {
            upstreamClosed = true
            out += (responses?.closed() ?? []).map(Command.answered)
            if let held = heldRefusal {
                // Closed before the answers were through: no 403 after an answer the close cut
                // (or ended: a 403 would read as its body).
                return out + end(client, upstream, page: nil, reason: held.reason)
            }
            client.close()
            halfClose.append(.closeClient)
        }
        if client.state == .closed, !clientClosed {
            clientClosed = true
            upstream.close()
            halfClose.append(.closeUpstream)
        }
        // Appended in place: this runs for every read of a bumped flow, and each `+` is an array.
        if let records = upstream.takeRecords() { out.append(.sendUpstream(records)) }
        if let records = client.takeRecords() { out.append(.sendClient(records)) }
        if clientClosed && upstreamClosed { out += finish("both sides closed") } else { out += halfClose }
        return out
    }

    /// Carries the client's HTTP/1.1 pieces upstream, deciding each request head; returns the
    /// commands that end the connection when a piece must end it (a refusal, a block).
    private func relayRequests(_ pieces: [HTTPRequestTracker.Piece], _ client: TLSSession, _ upstream: TLSSession, into out: inout [Command]) -> [Command]? {
        for piece in pieces {
            switch piece {
            case .bytes(let bytes): try? upstream.write(bytes)
            case .gaveUp(let why):
                // A client that agreed on http/1.1 and then stops speaking it would slip its
                // later requests past the request stage: the connection ends. Without ALPN the
                // protocol was never promised: relayed as opaque bytes.
                if client.alpn == "http/1.1" || client.alpn == "http/1.0" {
                    return finish("not HTTP/1.1 after agreeing on http/1.1 (\(why)): the request stage cannot see it")
                }
                requests = nil
                responses = nil
                opaqueBecause = why
            case .refused(let why):
                // Framed one way here and perhaps another by the origin: a request could ride in
                // its body past the request stage. Nothing of it goes upstream.
                if let end = refuse(with: Self.badRequest(why), reason: "request refused: \(why)", client, upstream) { return end }
                return nil
            case .head(let head, let raw):
                guard case .request(let method, let target) = head.kind else { continue }
                if let responses, responses.unanswered >= HTTPResponseTracker.maximumUnanswered {
                    let why = "more than \(HTTPResponseTracker.maximumUnanswered) requests pipelined without an answer"
                    if let end = refuse(with: Self.badRequest(why), reason: "request refused: \(why)", client, upstream) { return end }
                    return nil
                }
                facts.method = method
                // An empty Host names no host (RFC 9110 7.2): the SNI does, as for none at all.
                let host = head.header("host").flatMap { $0.isEmpty ? nil : $0 }
                // CONNECT names its tunnel's far end (authority form), as :authority does on h2:
                // that host is what rules judge and what the certificate must cover.
                facts.url = method == "CONNECT" && !target.hasPrefix("/") && HTTPHead.absoluteFormScheme(target) == nil
                    ? "https://" + target : Self.url(target: target, host: host ?? facts.sni ?? "")
                let decision = decideRequest()
                out.append(.decidedRequest(decision, method: method, url: facts.url ?? ""))
                if decision.verdict == .block {
                    if let end = refuse(with: Self.forbidden(decision), reason: "request blocked by rule \(decision.rule)", client, upstream) { return end }
                    return nil
                }
                try? upstream.write(raw)
                responses?.requestSent(method: method, url: facts.url ?? "")
            }
        }
        return nil
    }

    /// Answers a refused request with `page` and ends the connection — or, while the requests
    /// pipelined before it are still being answered, holds the page for after their answers
    /// (nil: the pieces after it are dropped, the connection goes on until then).
    private func refuse(with page: [UInt8], reason: String, _ client: TLSSession, _ upstream: TLSSession) -> [Command]? {
        if responses?.allAnswered == false {
            heldRefusal = (page, reason)
            return nil
        }
        return end(client, upstream, page: page, reason: reason)
    }

    /// Ends a bumped HTTP/1.1 connection: `page` (if any) and close_notify to the client, what
    /// both legs still have to send, and the reason for the log.
    private func end(_ client: TLSSession, _ upstream: TLSSession, page: [UInt8]?, reason: String) -> [Command] {
        if let page { try? client.write(page) }
        client.close()
        return send(upstream: upstream.takeRecords()) + send(client: client.takeRecords()) + finish(reason)
    }

    /// The request stage for `facts`. First, the request must name a host the upstream's verified
    /// certificate covers (as a browser reusing a connection requires): one that names another
    /// — domain fronting, or a Host chosen to dodge a rule on the real one — is refused, since
    /// rules would judge a site other than the one the bytes go to.
    private func decideRequest() -> Decision {
        // The port: servers route by name, so "Host: example.com:8443" on a connection to 443 is
        // served as example.com — judged under its claimed port, it would pass a rule on
        // https://example.com/. A port named that is not the connection's is refused; none named
        // on a redirected connection to another port means that port. (A CONNECT's port is its
        // tunnel's far end.)
        if let client = settings.clientPort, facts.method != "CONNECT", let url = facts.url {
            let named = facts.port
            if let named, named != client.port {
                return Decision(stage: .request, verdict: .block, rule: Decision.misdirectedRule,
                                reason: "the request names port \(named), but the connection is to port \(client.port)")
            }
            if named == nil, client.redirected, client.port != 443 {
                let (origin, rest) = URLPath.split(url)
                facts.url = "\(origin):\(client.port)\(rest)"
            }
        }
        // `facts.host` is canonical: a fully qualified "example.com." is "example.com", as the
        // upstream was verified.
        if let host = facts.host, !host.isEmpty, host != coveredHost, let certificate = upstreamCertificate {
            guard certificate.covers(host: host) else {
                return Decision(stage: .request, verdict: .block, rule: Decision.misdirectedRule,
                                reason: "the request names \(host), which the server's verified certificate does not cover")
            }
            coveredHost = host
        }
        return policy.decide(.request, facts)
    }

    /// The absolute URL of a request: origin-form targets get the Host header's authority.
    static func url(target: String, host: String) -> String {
        // An absolute-form target (its scheme in any case: servers take "HTTP://h/x" too) names
        // the host and path; the scheme is https whatever it says — the request came over TLS,
        // and "http://" must not slip past a rule on "https://".
        if target.utf8.first != UInt8(ascii: "/"), let scheme = HTTPHead.absoluteFormScheme(target) {  // origin-form skips this
            return "https://" + target.dropFirst(scheme)
        }
        // Built by appending into one allocation (interpolation grows its buffer step by step).
        var url = "https://"
        url.reserveCapacity(url.utf8.count + host.utf8.count + target.utf8.count + 1)
        url += host
        if !target.hasPrefix("/") { url += "/" }
        return url + target
    }

    /// Under a quarantine leaf: whatever the client asks gets a 502 naming the failure, then a
    /// clean close. Nothing reaches the (failed) upstream.
    private func answerQuarantined(_ event: Event, _ why: String) -> [Command] {
        guard let client = clientTLS else { return finish(why) }
        switch event {
        case .clientData(let bytes):
            client.receive(bytes)
            guard !client.read().isEmpty else { return send(client: client.takeRecords()) }
            let body = "Loupe did not connect you: the real server failed verification.\n\(why)\n"
            try? client.write(Array("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8))
            client.close()
            return send(client: client.takeRecords()) + finish("\(why) (quarantine certificate served)")
        case .clientClosed:
            return finish("\(why) (quarantine certificate served; the client left)")
        default:
            return []
        }
    }

    /// The page a blocked request gets inside the (trusted) bumped session.
    static func forbidden(_ decision: Decision) -> [UInt8] {
        let body = forbiddenBody(decision)
        let status = refusalStatus(decision)
        return Array("HTTP/1.1 \(status.code) \(status.text)\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
    }

    /// 403 for a request the policy blocks; 421 Misdirected Request (RFC 9110 15.5.20) for one
    /// this connection cannot carry — a host its verified certificate does not cover, another
    /// port — which clients may send again on a connection of its own, judged there as itself;
    /// 400 for a malformed one. (No policy rule may take those built-in names.)
    static func refusalStatus(_ decision: Decision) -> (code: Int, text: String) {
        switch decision.rule {
        case Decision.misdirectedRule: (421, "Misdirected Request")
        case Decision.malformedRule: (400, "Bad Request")
        default: (403, "Forbidden")
        }
    }

    /// The answer to a request whose body framing is ambiguous.
    static func badRequest(_ why: String) -> [UInt8] {
        let body = "Loupe refused this request: \(why)\n"
        return Array("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
    }

    static func forbiddenBody(_ decision: Decision) -> [UInt8] {
        Array("Blocked by Loupe policy (rule \(decision.rule)): \(decision.reason)\n".utf8)
    }

    private func send(upstream records: ByteBuffer?) -> [Command] { records.map { [.sendUpstream($0)] } ?? [] }
    private func send(client records: ByteBuffer?) -> [Command] { records.map { [.sendClient($0)] } ?? [] }
    private func send(client bytes: [UInt8]) -> [Command] { bytes.isEmpty ? [] : [.sendClient(ByteBuffer(bytes: bytes))] }

    /// Ends the connection; with `alert`, first sends the client a fatal TLS alert record.
    private func finish(_ reason: String, alert: UInt8? = nil) -> [Command] {
        phase = .closed
        discardPrepared()
        setup = nil
        var out: [Command] = []
        if let alert { out.append(.sendClient(ByteBuffer(bytes: [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, alert]))) }
        return out + [.closeClient, .closeUpstream, .finished(reason: reason)]
    }
}
