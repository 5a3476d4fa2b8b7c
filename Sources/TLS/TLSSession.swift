import COpenSSL
import NIOCore
import Synchronization
import Wire

/// TLS protocol versions as OpenSSL numbers them.
public enum TLSVersion: Int32, Sendable, Comparable, CustomStringConvertible {
    case tls10 = 0x0301, tls11 = 0x0302, tls12 = 0x0303, tls13 = 0x0304
    public static func < (a: TLSVersion, b: TLSVersion) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "TLS 1.\(rawValue - 0x0301)" }
}

/// Shared TLS settings (an SSL_CTX): one for all client-facing sessions, one for upstreams.
public final class TLSContext: @unchecked Sendable {
    let ctx: OpaquePointer
    public let isServer: Bool
    /// Client contexts: sessions to resume, by upstream (name, address, ALPN offer). Resuming
    /// skips the upstream's full handshake on repeat visits; its chain was verified when the
    /// session was made.
    let sessions = Mutex(SessionCache(capacity: 10_000))
    /// Client contexts: what their hellos can carry, to cut down to a client's own offer.
    public private(set) var offers = OfferCatalog(tls12: [], tls13: [])
    /// Where handshake secrets go, when a key log is configured (see KeyLog).
    let keyLogSink = Mutex<KeyLog?>(nil)
    /// Server contexts: the keys sealing the tickets clients resume with (see TicketKeyRing).
    let ticketKeys = Mutex(TicketKeyRing(rotation: TLSContext.ticketKeyRotation))
    /// What time it is for ticket keys (tests move it).
    var ticketClock: @Sendable () -> ContinuousClock.Instant = { .now }
    /// A new ticket key every hour; sessions (and so tickets) last two.
    static let ticketKeyRotation = Duration.seconds(3_600)
    /// Server contexts: sessions kept for resumption by session ID.
    static let serverSessionCacheSize = 4_096

    deinit { SSL_CTX_free(ctx) }

    private init(server: Bool, minimum: TLSVersion, maximum: TLSVersion?) throws(OpenSSLError) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()) else { throw OpenSSLError.drain("SSL_CTX_new") }
        self.ctx = ctx
        self.isServer = server
        try check("minimum TLS version", loupe_SSL_CTX_set_min_proto_version(ctx, minimum.rawValue) == 1)
        if let maximum { try check("maximum TLS version", loupe_SSL_CTX_set_max_proto_version(ctx, maximum.rawValue) == 1) }
        // Writes may complete in parts and their buffer move between retries (`write` loops);
        // idle connections give their record buffers back (memory per idle bumped pair).
        _ = loupe_SSL_CTX_set_mode(ctx, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS))
        if server {
            SSL_CTX_set_alpn_select_cb(ctx, alpnSelect, nil)
            // Finite-field DHE for TLS 1.2 clients that offer no ECDHE suite (the upstream leg
            // mirrors their suites, so the origin speaks DHE too): a group as strong as the
            // leaf's key, as OpenSSL's own servers choose it. Without one they failed through
            // Loupe where they worked direct.
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_DH_AUTO, 1, nil)
            // One TLS 1.3 ticket, not OpenSSL's two: a client resumes with one, and each ticket
            // costs both sides a sealed session on every handshake.
            SSL_CTX_set_num_tickets(ctx, 1)
            // Tickets sealed by keys that rotate (OpenSSL's own key would never change), valid as
            // long as the two keys that may open them.
            _ = SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketKeyCallback)
            _ = SSL_CTX_set_timeout(ctx, Int(TLSContext.ticketKeyRotation.components.seconds * 2))
            // TLS 1.2 clients without tickets resume from this cache (~0.7 KiB a session, kept
            // for those two hours): at most `serverSessionCacheSize`, the oldest going first —
            // OpenSSL's own 20,480 would be ~14 MiB for an endpoint agent.
            _ = SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_SIZE, TLSContext.serverSessionCacheSize, nil)
            // Called when a client asks for certificate status: the session's staple, if any.
            _ = loupe_SSL_CTX_set_tlsext_status_cb(ctx, stapleForClient)
        } else {
            // Called with the server's staple when this session asked for one.
            _ = loupe_SSL_CTX_set_tlsext_status_cb(ctx, readServerStaple)
        }
    }

    /// For the client-facing leg: certificates are set per session (each host its own leaf).
    public static func server(minimum: TLSVersion = .tls12, maximum: TLSVersion? = nil) throws(OpenSSLError) -> TLSContext {
        try TLSContext(server: true, minimum: minimum, maximum: maximum)
    }

    /// For upstream connections: peers are verified strictly against `trustBundle` (a PEM file)
    /// or, when nil, the system trust store.
    public static func client(trustBundle: String? = nil, minimum: TLSVersion = .tls12, maximum: TLSVersion? = nil) throws(OpenSSLError) -> TLSContext {
        let context = try TLSContext(server: false, minimum: minimum, maximum: maximum)
        if let trustBundle {
            try check("loading the trust bundle \(trustBundle)", SSL_CTX_load_verify_locations(context.ctx, trustBundle, nil) == 1)
        } else {
            try check("loading the system trust store", SSL_CTX_set_default_verify_paths(context.ctx) == 1)
        }
        SSL_CTX_set_verify(context.ctx, SSL_VERIFY_PEER, acceptAddressInCommonName)
        // AES-128-GCM first, as browsers order them: as strong for TLS, cheaper for Loupe and the
        // origin than OpenSSL's AES-256-first default (the server still chooses).
        try check("TLS 1.3 cipher suites", SSL_CTX_set_ciphersuites(context.ctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384") == 1)
        // And so for TLS 1.2 (OpenSSL's default puts every AES-256 suite first): the same suites.
        let tls12 = OfferCatalog.aes128First(context.configuredSuites().filter { !$0.isTLS13 }.map(\.name))
        try check("TLS 1.2 cipher list", SSL_CTX_set_cipher_list(context.ctx, tls12.joined(separator: ":")) == 1)
        // External cache only: OpenSSL hands each new session (TLS 1.3 tickets arrive after the
        // handshake) to `newSession`, which files a copy under the session's upstream key.
        _ = SSL_CTX_ctrl(context.ctx, SSL_CTRL_SET_SESS_CACHE_MODE, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE), nil)
        SSL_CTX_sess_set_new_cb(context.ctx, newSession)
        SSL_CTX_set_client_cert_cb(context.ctx, certificateRequested)
        context.offers = try context.catalog()
        return context
    }

    /// The suites this context is configured with, in its order.
    private func configuredSuites() -> [OfferCatalog.Suite] {
        SSL_CTX_get_ciphers(ctx).map(Self.suites) ?? []
    }

    /// A stack of suites as code points and OpenSSL names, in its order.
    private static func suites(_ ciphers: OpaquePointer) -> [OfferCatalog.Suite] {
        (0..<loupe_sk_SSL_CIPHER_num(ciphers)).compactMap { i in
            loupe_sk_SSL_CIPHER_value(ciphers, i).map { OfferCatalog.Suite(id: SSL_CIPHER_get_protocol_id($0), name: String(cString: SSL_CIPHER_get_name($0))) }
        }
    }

    /// The suites a client session of this context would offer (SSL_get1_supported_ciphers
    /// leaves out PSK and SRP suites, which need callbacks Loupe never sets).
    private func catalog() throws(OpenSSLError) -> OfferCatalog {
        ERR_clear_error()
        guard let ssl = SSL_new(ctx) else { throw OpenSSLError.drain("SSL_new") }
        defer { SSL_free(ssl) }
        SSL_set_connect_state(ssl)
        guard let ciphers = SSL_get1_supported_ciphers(ssl) else { throw OpenSSLError.drain("SSL_get1_supported_ciphers") }
        defer { loupe_sk_SSL_CIPHER_free(ciphers) }
        let all = Self.suites(ciphers)
        return OfferCatalog(tls12: all.filter { !$0.isTLS13 }, tls13: all.filter(\.isTLS13))
    }
}

/// Sessions to resume, by upstream key, oldest out first (an agent meets an unbounded number of
/// upstreams; each session holds the peer's certificate).
typealias SessionCache = BoundedMap<String, ResumableSession>

/// A client certificate (with its chain) and key, for upstreams that demand mutual TLS.
public struct ClientIdentity: Sendable {
    public var chain: [Certificate]
    public var key: PrivateKey
    public init(chain: [Certificate], key: PrivateKey) { self.chain = chain; self.key = key }
}

/// An SSL_SESSION owned by the resumption cache, with the verdict of the OCSP staple its full
/// handshake got (a resumption carries no certificate and no staple).
final class ResumableSession: @unchecked Sendable {
    let session: OpaquePointer
    /// A good staple's nextUpdate (seconds since 1970): until then a resumption of this
    /// session counts as stapled.
    let stapleGoodUntil: Int?
    init(_ session: OpaquePointer, stapleGoodUntil: Int? = nil) {
        self.session = session
        self.stapleGoodUntil = stapleGoodUntil
    }
    deinit { SSL_SESSION_free(session) }
}

private let newSession: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
    guard let ssl, let session, let raw = SSL_get_ex_data(ssl, 0) else { return 0 }
    let owner = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue()
    owner.fileForResumption(session)
    return 0
}

/// Client side: an address named only by a CN-only certificate's subject passes, as curl
/// takes it (see `Certificate.namesOnlyInCommonName`); every other verdict stands. The
/// masquerade leaf mirrors that CN without adding an IP SAN, so a client without the fallback
/// still refuses it.
private let acceptAddressInCommonName: @convention(c) (Int32, OpaquePointer?) -> Int32 = { ok, store in
    guard ok == 0, let store, X509_STORE_CTX_get_error(store) == X509_V_ERR_IP_ADDRESS_MISMATCH, X509_STORE_CTX_get_error_depth(store) == 0,
          let text = X509_VERIFY_PARAM_get1_ip_asc(X509_STORE_CTX_get0_param(store)) else { return ok }
    let expected = String(cString: text)
    CRYPTO_free(text, #fileID, #line)
    // The reference taken here is the Certificate's to drop.
    guard let address = IPAddress.parse(expected), let leaf = X509_STORE_CTX_get_current_cert(store), X509_up_ref(leaf) == 1,
          Certificate(taking: leaf).namesOnlyInCommonName(address: address) else { return ok }
    X509_STORE_CTX_set_error(store, X509_V_OK)  // or SSL_get_verify_result would still report the mismatch
    return 1
}

/// Client side: what the server stapled. A staple that verifies and says revoked fails the
/// handshake; an unusable one counts as none (as browsers treat it).
private let readServerStaple: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _ in
    guard let ssl, let raw = SSL_get_ex_data(ssl, 0) else { return 1 }
    let session = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue()
    var response: UnsafePointer<UInt8>?
    let length = loupe_SSL_get_tlsext_status_ocsp_resp(ssl, &response)
    guard length > 0, let response, let chain = SSL_get0_verified_chain(ssl), let store = SSL_CTX_get_cert_store(SSL_get_SSL_CTX(ssl)) else { return 1 }
    let (status, goodUntil) = OCSP.evaluate(UnsafeBufferPointer(start: response, count: Int(length)), chain: chain, store: store)
    session.stapledStatus = status
    session.stapleGoodUntil = goodUntil
    if case .revoked = status { return 0 }
    return 1
}

/// Server side: staple the session's OCSP response (the client asked for status).
private let stapleForClient: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _ in
    guard let ssl, let raw = SSL_get_ex_data(ssl, 0) else { return SSL_TLSEXT_ERR_NOACK }
    let session = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue()
    guard let staple = session.staple, !staple.isEmpty, let copy = loupe_OPENSSL_malloc(staple.count) else { return SSL_TLSEXT_ERR_NOACK }
    staple.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: staple.count) }
    _ = loupe_SSL_set_tlsext_status_ocsp_resp(ssl, copy.assumingMemoryBound(to: UInt8.self), staple.count)  // OpenSSL frees it
    return SSL_TLSEXT_ERR_OK
}

/// Client side: the server asked for a certificate and none is set on the session. Noted, then
/// the handshake goes on without one (the server decides whether that is fatal).
private let certificateRequested: @convention(c) (OpaquePointer?, UnsafeMutablePointer<OpaquePointer?>?, UnsafeMutablePointer<OpaquePointer?>?) -> Int32 = { ssl, _, _ in
    guard let ssl, let raw = SSL_get_ex_data(ssl, 0) else { return 0 }
    Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue().certificateRequested = true
    return 0
}

/// Server-side ALPN: pick the first protocol the client offered that this session allows
/// (on a bumped flow: exactly what the upstream chose). No overlap → no ALPN, not a guess.
private let alpnSelect: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?, UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?) -> Int32 = { ssl, out, outLength, input, inputLength, _ in
    guard let ssl, let out, let outLength, let input, let raw = SSL_get_ex_data(ssl, 0) else { return SSL_TLSEXT_ERR_NOACK }
    let session = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue()
    guard let allowed = session.allowedALPN else { return SSL_TLSEXT_ERR_NOACK }
    var i = 0
    let count = Int(inputLength)
    while i < count {
        let length = Int(input[i])
        guard length > 0, i + 1 + length <= count else { return SSL_TLSEXT_ERR_NOACK }
        let offered = Array(UnsafeBufferPointer(start: input + i + 1, count: length))
        if allowed.contains(offered) {
            out.pointee = input + i + 1
            outLength.pointee = UInt8(length)
            return SSL_TLSEXT_ERR_OK
        }
        i += 1 + length
    }
    return SSL_TLSEXT_ERR_NOACK
}

/// One TLS connection driven sans-IO over its own byte queues (SessionBIO): network bytes in with `receive`,
/// network bytes out with `takeOutput`, plaintext through `read` and `write`. The owner (a NIO
/// handler, or a test pumping two sessions together) moves the bytes; this type never does I/O.
public final class TLSSession: @unchecked Sendable {
    public enum State: Equatable, Sendable {
        case handshaking
        case established
        /// The peer sent close_notify.
        case closed
        case failed(String)
    }

    let ssl: OpaquePointer
    /// Peer bytes OpenSSL reads through SessionBIO (nil once all are read).
    var input: ByteBuffer?
    /// Records OpenSSL wrote through SessionBIO, for the owner to send (nil once taken).
    var output: ByteBuffer?
    public private(set) var state: State = .handshaking
    /// Server side: protocols this session may select (wire form, without length prefixes).
    var allowedALPN: [[UInt8]]?
    /// Client side: where new sessions are filed for resumption.
    let resumptionKey: String?
    /// Client side: the saved session offered for resumption (compared, never dereferenced:
    /// OpenSSL replaces the connection's session when a TLS 1.2 server renews its ticket).
    private var offeredSession: OpaquePointer?
    /// Client side: the server asked for a client certificate this session had none to give.
    public internal(set) var certificateRequested = false
    /// Client side: what the server's stapled OCSP response said (nil: none was asked or sent).
    /// On a resumption, the verdict the session's full handshake got, while it holds.
    public internal(set) var stapledStatus: StapledStatus?
    /// Client side: until when a good staple's verdict holds (its nextUpdate, seconds since
    /// 1970); nil unless it was good.
    var stapleGoodUntil: Int?
    /// Client side: that of the session offered for resumption.
    private var offeredStapleGoodUntil: Int?
    /// Server side: the OCSP response to staple when the client asks for status.
    var staple: [UInt8]?
    public let context: TLSContext

    deinit {
        // OpenSSL drops a server session from its cache when the connection ends without a
        // close_notify sent — TLS 1.0's rule; since TLS 1.1 such sessions may be resumed (RFC
        // 5246 7.2.1). Loupe sends the client its close_notify only after the upstream's, which
        // many servers (nginx) never send, so TLS 1.2 clients without tickets would hardly ever
        // resume by session ID. Marking it sent (no bytes move) keeps the session cached; a
        // fatal alert either way still removes it (OpenSSL does that when the alert passes).
        if context.isServer { SSL_set_shutdown(ssl, SSL_get_shutdown(ssl) | SSL_SENT_SHUTDOWN) }
        SSL_free(ssl)
    }

    private init(context: TLSContext, resumptionKey: String? = nil) throws(OpenSSLError) {
        ERR_clear_error()
        guard let ssl = SSL_new(context.ctx) else { throw OpenSSLError.drain("SSL_new") }
        self.ssl = ssl
        self.context = context
        self.resumptionKey = resumptionKey
        guard let bio = SessionBIO.make(for: self) else { throw OpenSSLError.drain("BIO_new") }  // deinit frees the SSL
        SSL_set_bio(ssl, bio, bio)  // one BIO both ways: the SSL holds its one reference
        SSL_set_ex_data(ssl, 0, Unmanaged.passUnretained(self).toOpaque())
    }

    /// A client session to `serverName` (SNI as given, the name verified without a trailing
    /// dot; an IP address is verified against IP SANs — or a CN-only subject, as curl takes it —
    /// and sent without SNI), offering `alpn`. With `resumptionKey` (the
    /// upstream's name and address), a session saved from an earlier visit is offered. No
    /// protocol version above `maximum` is offered, and with `offer` only its suites, schemes
    /// and groups (see `OfferCatalog.offer(mirroring:)`).
    public static func client(_ context: TLSContext, serverName: String?, alpn: [String] = [], resumptionKey: String? = nil,
                              identity: ClientIdentity? = nil, maximum: TLSVersion? = nil, offer: UpstreamOffer? = nil) throws(OpenSSLError) -> TLSSession {
        let session = try TLSSession(context: context, resumptionKey: resumptionKey)
        ERR_clear_error()
        if let maximum = [maximum, offer?.maximum].compactMap({ $0 }).min() {
            try check("maximum TLS version", loupe_SSL_set_max_proto_version(session.ssl, maximum.rawValue) == 1)
        }
        if let offer { try session.restrict(to: offer) }
        if let serverName {
            if IPAddress.parse(serverName) != nil {
                try check("verifying IP \(serverName)", X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(session.ssl), serverName) == 1)
            } else {
                try check("SNI \(serverName)", loupe_SSL_set_tlsext_host_name(session.ssl, serverName) == 1)
                // A fully qualified "example.com." names the same host, but OpenSSL matches it
                // against no certificate name: the upstream is verified without the dot (the
                // client then checks the mirrored names as it would the real ones).
                let host = serverName.hasSuffix(".") && serverName.count > 1 ? String(serverName.dropLast()) : serverName
                try check("verifying \(host)", SSL_set1_host(session.ssl, host) == 1)
            }
        }
        if !alpn.isEmpty {
            let wire = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
            try check("ALPN", SSL_set_alpn_protos(session.ssl, wire, UInt32(wire.count)) == 0)
        }
        if let identity, let leaf = identity.chain.first {
            // Offered only when the server asks (CertificateRequest); the chain follows the leaf.
            try check("SSL_use_certificate (client identity)", SSL_use_certificate(session.ssl, leaf.x509) == 1)
            try check("SSL_use_PrivateKey (client identity)", SSL_use_PrivateKey(session.ssl, identity.key.pkey) == 1)
            for extra in identity.chain.dropFirst() {
                try check("adding a client chain certificate", SSL_ctrl(session.ssl, SSL_CTRL_CHAIN_CERT, 1, UnsafeMutableRawPointer(extra.x509)) == 1)
            }
        }
        // A copy, for the reason `fileForResumption` files one (a TLS 1.2 server that resumes
        // without renewing sends nothing that would replace a spoilt entry).
        if let resumptionKey, let saved = context.sessions.withLock({ $0[resumptionKey] }), let copy = SSL_SESSION_dup(saved.session) {
            _ = SSL_set_session(session.ssl, copy)
            session.offeredSession = copy
            session.offeredStapleGoodUntil = saved.stapleGoodUntil
            SSL_SESSION_free(copy)  // the connection holds its own reference
        }
        SSL_set_connect_state(session.ssl)
        return session
    }

    /// Files a copy of `session` under this client session's resumption key. A copy: OpenSSL
    /// marks the connection's own session unresumable when the connection is freed without a
    /// close_notify, which would spoil the cached entry.
    func fileForResumption(_ session: OpaquePointer) {
        guard let key = resumptionKey, SSL_SESSION_is_resumable(session) == 1, let copy = SSL_SESSION_dup(session) else { return }
        context.sessions.withLock { $0.insert(ResumableSession(copy, stapleGoodUntil: stapleGoodUntil), for: key) }
    }

    /// Offers no more than `offer` allows (each part left nil keeps the context's default).
    private func restrict(to offer: UpstreamOffer) throws(OpenSSLError) {
        if let minimum = offer.minimum { try check("minimum TLS version", loupe_SSL_set_min_proto_version(ssl, minimum.rawValue) == 1) }
        if let list = offer.cipherList { try check("cipher list \(list)", SSL_set_cipher_list(ssl, list) == 1) }
        if let suites = offer.ciphersuites { try check("TLS 1.3 cipher suites \(suites)", SSL_set_ciphersuites(ssl, suites) == 1) }
        if let schemes = offer.signatureSchemes { try check("signature schemes \(schemes)", loupe_SSL_set1_sigalgs_list(ssl, schemes) == 1) }
        if let groups = offer.groups { try check("groups \(groups)", loupe_SSL_set1_groups_list(ssl, groups) == 1) }
        if offer.fallback { _ = loupe_SSL_set_mode(ssl, Int(SSL_MODE_SEND_FALLBACK_SCSV)) }
        if offer.statusRequest { _ = loupe_SSL_set_tlsext_status_type(ssl, TLSEXT_STATUSTYPE_ocsp) }
    }

    /// A server session presenting `chain[0]` (with the rest as its chain) and `key`; ALPN is
    /// selected only from `alpn`; no protocol version above `maximum`; `staple` (an OCSP
    /// response) goes to a client that asks for certificate status.
    public static func server(_ context: TLSContext, chain: [Certificate], key: PrivateKey, alpn: [String] = [], maximum: TLSVersion? = nil,
                              staple: [UInt8]? = nil) throws(OpenSSLError) -> TLSSession {
        let session = try TLSSession(context: context)
        session.staple = staple
        ERR_clear_error()
        if let maximum { try check("maximum TLS version", loupe_SSL_set_max_proto_version(session.ssl, maximum.rawValue) == 1) }
        guard let leaf = chain.first else { throw OpenSSLError(operation: "a server session needs a certificate", details: []) }
        try check("SSL_use_certificate", SSL_use_certificate(session.ssl, leaf.x509) == 1)
        try check("SSL_use_PrivateKey", SSL_use_PrivateKey(session.ssl, key.pkey) == 1)
        for extra in chain.dropFirst() {
            try check("adding a chain certificate", SSL_ctrl(session.ssl, SSL_CTRL_CHAIN_CERT, 1, UnsafeMutableRawPointer(extra.x509)) == 1)
        }
        session.allowedALPN = alpn.isEmpty ? nil : alpn.map { Array($0.utf8) }
        SSL_set_accept_state(session.ssl)
        return session
    }

    /// Bytes from the peer, as a socket read them: OpenSSL reads them from this buffer.
    public func receive(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        queueInput(buffer)
        advanceHandshake()
    }

    /// Bytes from the peer.
    public func receive(_ bytes: [UInt8]) {
        guard !bytes.isEmpty else { return }
        receive(ByteBuffer(bytes: bytes))
    }

    /// Records to send to the peer (handshake, application data, alerts) in the buffer OpenSSL
    /// wrote them into; nil when there are none.
    public func takeRecords() -> ByteBuffer? {
        defer { output = nil }
        return output
    }

    /// `takeRecords` as bytes.
    public func takeOutput() -> [UInt8] {
        takeRecords().map { Array($0.readableBytesView) } ?? []
    }

    /// Starts (client) or continues the handshake; call after `receive`.
    public func advanceHandshake() {
        guard state == .handshaking else { return }
        clearErrorQueue()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 {
            state = .established
            // Resumed: no staple came; the full handshake's good one stands until it expires,
            // as a fresh handshake would have got it (a client asking for status sees the same).
            if resumed, stapledStatus == nil, let until = offeredStapleGoodUntil, until + OCSP.leewaySeconds > time(nil) {
                stapledStatus = .good
                stapleGoodUntil = until
            }
            // OpenSSL hands over no session when a TLS 1.2 server renewed the ticket of a
            // resumed one: the renewed session (a new one, not the one offered) is filed here.
            if resumed, protocolVersion == .tls12, let current = SSL_get_session(ssl), current != offeredSession { fileForResumption(current) }
            return
        }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE: return
        default: state = .failed(failureReason())
        }
    }

    /// Decrypted application data received so far.
    public func read() -> [UInt8] {
        guard state == .established else { return [] }
        var out: [UInt8] = []
        while true {
            // Nothing received and nothing decrypted waiting: no call into OpenSSL at all (the
            // relay asks both legs after every event).
            let available = inputPending + Int(SSL_pending(ssl))
            guard available > 0 || SSL_has_pending(ssl) == 1 else { return out }
            clearErrorQueue()
            // Every record into one uninitialised array sized by what can be there (plaintext is
            // never longer than its records): no zeroed scratch buffer, no concatenation.
            var rc: Int32 = 1
            let room = min(max(available, 512), 1 << 20)
            let chunk = [UInt8](unsafeUninitializedCapacity: room) { buffer, count in
                while count < buffer.count {
                    var n = 0
                    rc = SSL_read_ex(ssl, buffer.baseAddress! + count, buffer.count - count, &n)
                    guard rc == 1 else { return }
                    count += n
                    // Every byte received is decrypted and taken: the next call could only fail
                    // wanting more (a BIO read, an error queued and cleared — per record).
                    if inputPending == 0, SSL_has_pending(ssl) == 0 { return }
                }
            }
            if out.isEmpty { out = chunk } else { out += chunk }
            if rc == 1 { continue }  // the array filled up, or all was taken (then nothing is available)
            switch SSL_get_error(ssl, rc) {
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                // Only a post-handshake message came (a session ticket): OpenSSL keeps its 16 KiB
                // record buffer after those, even with SSL_MODE_RELEASE_BUFFERS — give it back,
                // or every idle connection holds one.
                if out.isEmpty { _ = SSL_free_buffers(ssl) }
                return out
            case SSL_ERROR_ZERO_RETURN: state = .closed; return out
            default: state = .failed(failureReason()); return out
            }
        }
    }

    /// Encrypts `plaintext`; the records appear in `takeRecords()`.
    public func write(_ plaintext: [UInt8]) throws(OpenSSLError) {
        guard state == .established else { throw OpenSSLError(operation: "writing before the handshake completed", details: []) }
        // Room for the records up front (a record's header, nonce, tag and padding fit in 64
        // bytes with the suites Loupe speaks): no regrowth while they are appended.
        let room = plaintext.count + (plaintext.count / 16_384 + 1) * 64
        if output == nil { output = Self.allocator.buffer(capacity: room) } else { output!.reserveCapacity(minimumWritableBytes: room) }
        var offset = 0
        while offset < plaintext.count {
            clearErrorQueue()
            var n = 0
            let rc = plaintext.withUnsafeBytes { SSL_write_ex(ssl, $0.baseAddress! + offset, $0.count - offset, &n) }
            guard rc == 1 else { throw OpenSSLError.drain("SSL_write") }
            offset += n
        }
    }

    /// Gives back what a quiet connection need not hold: OpenSSL's record buffers (it frees
    /// them only when nothing is buffered in them). The byte queues are let go as they empty.
    public func releaseBuffers() {
        _ = SSL_free_buffers(ssl)
    }

    /// What the byte queues hold allocated now (nothing, once read and taken).
    var bufferedCapacity: Int { (input?.capacity ?? 0) + (output?.capacity ?? 0) }

    /// Sends close_notify.
    public func close() {
        clearErrorQueue()
        _ = SSL_shutdown(ssl)
        clearErrorQueue()
    }

    // MARK: what was negotiated

    public var alpn: String? {
        var data: UnsafePointer<UInt8>?
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    public var version: String { String(cString: SSL_get_version(ssl)) }
    /// The negotiated version (nil before the handshake settled one).
    public var protocolVersion: TLSVersion? { TLSVersion(rawValue: SSL_version(ssl)) }
    /// Whether the handshake resumed an earlier session.
    public var resumed: Bool { SSL_session_reused(ssl) == 1 }
    public var cipher: String? { SSL_get_current_cipher(ssl).map { String(cString: SSL_CIPHER_get_name($0)) } }

    /// The peer's certificate — also on a resumed session, where no chain was sent.
    public var peerCertificate: Certificate? {
        SSL_get1_peer_certificate(ssl).map { Certificate(taking: $0) }
    }

    /// The peer's certificate chain as sent (leaf first).
    public var peerChain: [Certificate] {
        guard let chain = SSL_get_peer_cert_chain(ssl) else { return [] }
        return (0..<loupe_sk_X509_num(chain)).compactMap { i in
            guard let x = loupe_sk_X509_value(chain, i), X509_up_ref(x) == 1 else { return nil }
            return Certificate(taking: x)
        }
    }

    /// OpenSSL's verdict on the peer's chain (client sessions): nil when it verified.
    public var verifyError: String? {
        let code = SSL_get_verify_result(ssl)
        return code == X509_V_OK ? nil : String(cString: X509_verify_cert_error_string(code))
    }

    /// The TLS alert description that tells a client what this (client) session's failure was,
    /// as a direct connection would have told it: from the verify result and OpenSSL's reason.
    public var failureAlert: UInt8 {
        if case .revoked = stapledStatus { return 44 }                   // certificate_revoked
        switch Int32(SSL_get_verify_result(ssl)) {
        case X509_V_OK: break
        case X509_V_ERR_CERT_HAS_EXPIRED: return 45                      // certificate_expired
        case X509_V_ERR_CERT_REVOKED: return 44                          // certificate_revoked
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
             X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
             X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: return 48       // unknown_ca
        default: return 42                                               // bad_certificate
        }
        switch failureReasonCode {
        case SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, SSL_R_NO_PROTOCOLS_AVAILABLE:
            return 70                                                    // protocol_version
        case SSL_R_TLSV1_ALERT_INAPPROPRIATE_FALLBACK:
            return 86                                                    // inappropriate_fallback
        default: return 40                                               // handshake_failure
        }
    }

    /// OpenSSL's reason code for the failure (ERR_GET_REASON of the first queued error).
    private var failureReasonCode: Int32 = 0

    private func failureReason() -> String {
        failureReasonCode = ERR_GET_REASON(ERR_peek_error())
        if let verifyError, !context.isServer { return "certificate verify failed: \(verifyError)" }
        if case .revoked(let reason)? = stapledStatus {
            ERR_clear_error()
            return "the server's stapled OCSP response says its certificate is revoked (\(reason))"
        }
        let error = OpenSSLError.drain("TLS handshake")
        return error.details.isEmpty ? "TLS handshake failed" : error.details.joined(separator: "; ")
    }
}
