import COpenSSL

/// The keys that seal the session tickets Loupe gives its clients. A ticket carries its
/// session's secrets (in TLS 1.2 the master secret itself), so whoever later holds the key can
/// open every ticket it ever sealed — recorded traffic included. OpenSSL's default is one key
/// for the life of the process (weeks, for an agent); here a new key seals tickets every
/// `rotation`, the one before it still opens tickets (which the client then gets renewed), and
/// a key is forgotten and wiped once it is two rotations old — the sessions' own lifetime, so no
/// ticket a client could still use is refused. Pure: time comes in as an argument.
struct TicketKeyRing: Sendable {
    typealias Instant = ContinuousClock.Instant

    let rotation: Duration
    /// Newest first; at most two.
    private var keys: [TicketKey] = []

    init(rotation: Duration) { self.rotation = rotation }

    /// The key to seal a new ticket with at `now` (a fresh one once the newest is a rotation old).
    mutating func sealingKey(at now: Instant) throws(OpenSSLError) -> TicketKey {
        forgetExpired(at: now)
        if let newest = keys.first, now - newest.created < rotation { return newest }
        keys.insert(try TicketKey(created: now), at: 0)
        keys = Array(keys.prefix(2))
        return keys[0]
    }

    /// The key named `name`, if it may still open tickets at `now`; `renew` when the client
    /// should be given a ticket under the newest key.
    mutating func openingKey(named name: [UInt8], at now: Instant) -> (key: TicketKey, renew: Bool)? {
        forgetExpired(at: now)
        guard let index = keys.firstIndex(where: { $0.name == name }) else { return nil }
        let key = keys[index]
        return (key, index > 0 || now - key.created >= rotation)
    }

    private mutating func forgetExpired(at now: Instant) {
        keys.removeAll { now - $0.created >= rotation * 2 }
    }
}

/// One ticket key: a public 16-byte name (sent in each ticket) and 64 secret bytes, an AES-256
/// key and an HMAC-SHA256 key, wiped when the key is dropped.
final class TicketKey: @unchecked Sendable {
    let name: [UInt8]
    let created: ContinuousClock.Instant
    private let secret: UnsafeMutableRawBufferPointer

    init(created: ContinuousClock.Instant) throws(OpenSSLError) {
        self.created = created
        secret = .allocate(byteCount: 64, alignment: 16)
        var name = [UInt8](repeating: 0, count: 16)
        guard RAND_bytes(&name, 16) == 1, RAND_bytes(secret.baseAddress!.assumingMemoryBound(to: UInt8.self), 64) == 1 else {
            secret.deallocate()
            throw OpenSSLError.drain("RAND_bytes (ticket key)")
        }
        self.name = name
    }

    deinit {
        OPENSSL_cleanse(secret.baseAddress, 64)
        secret.deallocate()
    }

    var cipherKey: UnsafePointer<UInt8> { UnsafePointer(secret.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
    var macKey: UnsafePointer<UInt8> { cipherKey + 32 }
}

/// OpenSSL's ticket callback for client-facing contexts: seal (encrypt = 1) with the ring's
/// newest key, open (0) with the key the ticket names. Returns 1 (use it), 2 (use it and issue a
/// fresh ticket) or 0: when sealing, no ticket this time; when opening, a full handshake (unknown
/// or expired key). Never -1, which would fail the client's handshake over a ticket.
let ticketKeyCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>?, OpaquePointer?, OpaquePointer?, Int32) -> Int32 = { ssl, name, iv, cipher, mac, encrypt in
    guard let ssl, let name, let iv, let cipher, let mac, let raw = SSL_get_ex_data(ssl, 0) else { return 0 }
    let context = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue().context
    let now = context.ticketClock()
    if encrypt == 1 {
        guard let key = try? context.ticketKeys.withLock({ ring throws(OpenSSLError) in try ring.sealingKey(at: now) }),
              RAND_bytes(iv, 16) == 1 else { return 0 }
        name.update(from: key.name, count: 16)
        guard EVP_EncryptInit_ex(cipher, EVP_aes_256_cbc(), nil, key.cipherKey, iv) == 1,
              loupe_ticket_mac_init(mac, key.macKey, 32) == 1 else { return 0 }
        return 1
    }
    let named = Array(UnsafeBufferPointer(start: name, count: 16))
    guard let (key, renew) = context.ticketKeys.withLock({ $0.openingKey(named: named, at: now) }) else { return 0 }
    guard loupe_ticket_mac_init(mac, key.macKey, 32) == 1,
          EVP_DecryptInit_ex(cipher, EVP_aes_256_cbc(), nil, key.cipherKey, iv) == 1 else { return 0 }
    // TLS 1.3 tickets are single-use (RFC 8446 C.4): every resumption gets a fresh one, as
    // OpenSSL's own ticket keys give. TLS 1.2 clients keep theirs until its key is old.
    return renew || SSL_version(ssl) == TLS1_3_VERSION ? 2 : 1
}
