import Foundation
import Synchronization
import TestSupport
import Testing
@testable import TLS

/// The keys sealing client-facing session tickets rotate; old ones open tickets for a while,
/// then are gone.
@Suite struct TicketKeyTests {
    @Test func ringRotatesRenewsAndForgets() throws {
        let start = ContinuousClock.now
        var ring = TicketKeyRing(rotation: .seconds(3_600))
        let first = try ring.sealingKey(at: start)
        #expect(try ring.sealingKey(at: start + .seconds(3_599)) === first, "one key seals for a whole rotation")
        #expect(ring.openingKey(named: first.name, at: start + .seconds(10))?.renew == false)
        let second = try ring.sealingKey(at: start + .seconds(3_600))
        #expect(second !== first && second.name != first.name)
        // The key before still opens its tickets, and says to renew them.
        #expect(ring.openingKey(named: first.name, at: start + .seconds(3_700))?.key === first)
        #expect(ring.openingKey(named: first.name, at: start + .seconds(3_700))?.renew == true)
        #expect(ring.openingKey(named: second.name, at: start + .seconds(3_700))?.renew == false)
        // Two rotations old: forgotten, whether or not anything was sealed since.
        #expect(ring.openingKey(named: first.name, at: start + .seconds(7_200)) == nil)
        #expect(ring.openingKey(named: second.name, at: start + .seconds(7_300))?.renew == true, "not sealing for a while makes the newest key old too")
        #expect(ring.openingKey(named: second.name, at: start + .seconds(10_800)) == nil)
        #expect(ring.openingKey(named: [UInt8](repeating: 0, count: 16), at: start) == nil)
        let third = try ring.sealingKey(at: start + .seconds(10_800))
        #expect(third !== second)
    }

    /// Real OpenSSL sessions over memory: a client resumes on a ticket sealed an hour ago (and
    /// gets a fresh one), and not on one whose key is two rotations old.
    @Test(arguments: [TLSVersion.tls13, .tls12]) func clientsResumeAcrossARotation(version: TLSVersion) throws {
        let pki = try TestPKI()
        defer { TestEnv.remove(pki.dir) }
        let (leaf, key) = try pki.leaf([.dns("origin.test")])
        let serverContext = try TLSContext.server(maximum: version)
        let now = Mutex(ContinuousClock.now)
        serverContext.ticketClock = { now.withLock { $0 } }
        let clientContext = try TLSContext.client(trustBundle: pki.bundle)
        func visit() throws -> Bool {
            let server = try TLSSession.server(serverContext, chain: [leaf], key: key)
            let client = try TLSSession.client(clientContext, serverName: "origin.test", resumptionKey: "origin.test|192.0.2.1:443")
            client.advanceHandshake()
            pump(client, server)
            _ = client.read()  // TLS 1.3 tickets arrive after the handshake
            #expect(client.state == .established && client.protocolVersion == version)
            return client.resumed
        }
        func wait(_ seconds: Int64) { now.withLock { $0 += .seconds(seconds) } }
        #expect(try visit() == false)
        #expect(try visit() == true)
        wait(3_600 + 60)
        #expect(try visit() == true, "the key before the newest still opens tickets")
        wait(3_600)
        #expect(try visit() == true, "…and the ticket was renewed under the newer key")
        wait(2 * 3_600)
        #expect(try visit() == false, "a ticket whose key is two rotations old is refused: a full handshake")
        #expect(try visit() == true)
    }
}
