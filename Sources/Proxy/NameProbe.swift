import Foundation
import NIOCore
import NIOPosix
import Policy
import Synchronization
import TLS
import Wire

/// Proves that an address really serves a valid certificate for a name before a name-based
/// rule may splice (a client choosing its SNI must not choose its way out of inspection).
/// Results are cached per address and name: successes for 10 minutes, failures for 1.
public final class NameProbe: Sendable {
    struct Result: Expiring { var verified: Bool; var reason: String; var expires: Date }
    /// Every name a client puts in its SNI can make an answer: bounded.
    private let cache: Mutex<ExpiringEntries<Result>>
    let context: TLSContext
    let bypassMark: UInt32?
    let timeout: TimeAmount

    public init(context: TLSContext, bypassMark: UInt32?, timeout: TimeAmount = .seconds(5), capacity: Int = 10_000) {
        self.context = context
        self.bypassMark = bypassMark
        self.timeout = timeout
        cache = Mutex(ExpiringEntries(capacity: capacity))
    }

    /// Files an answer: successes for 10 minutes, failures for 1.
    func remember(_ destination: FlowFacts.Endpoint, _ name: String, verified: Bool, reason: String, now: Date = Date()) {
        let answer = Result(verified: verified, reason: reason, expires: now.addingTimeInterval(verified ? 600 : 60))
        cache.withLock { $0.insert(answer, for: "\(destination)|\(name)", now: now) }
    }

    var cachedCount: Int { cache.withLock { $0.count } }

    func cached(_ destination: FlowFacts.Endpoint, _ name: String, now: Date = Date()) -> (Bool, String)? {
        cache.withLock { $0.live("\(destination)|\(name)", now: now).map { ($0.verified, $0.reason) } }
    }

    /// Runs the probe handshake on `loop` and reports the (cached) answer there.
    func probe(_ destination: FlowFacts.Endpoint, _ name: String, on loop: EventLoop, _ done: @escaping @Sendable (Bool, String) -> Void) {
        if let (verified, reason) = cached(destination, name) { return done(verified, reason) }
        let finish: @Sendable (Bool, String) -> Void = { verified, reason in
            self.remember(destination, name, verified: verified, reason: reason)
            done(verified, reason)
        }
        let session: TLSSession
        do { session = try TLSSession.client(context, serverName: name) } catch { return finish(false, "\(error)") }
        guard let address = destination.socketAddress else { return finish(false, "no IP address: \(destination.address.count) bytes") }
        let handler = ProbeHandler(session: session, finish: finish)
        let mark = bypassMark
        ClientBootstrap(group: loop).connectTimeout(timeout).channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try PairSocketOptions.setBypassMark(mark, on: channel)
                try channel.pipeline.syncOperations.addHandler(handler)
            }
        }
        .connect(to: address).whenComplete { result in
            switch result {
            case .success(let channel):
                channel.eventLoop.scheduleTask(in: self.timeout) { handler.settle(false, "no answer within the probe deadline", channel) }
            case .failure(let error): finish(false, "probe connect failed: \(error)")
            }
        }
    }
}

/// Drives one probe handshake over a channel.
final class ProbeHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let session: TLSSession
    let finish: @Sendable (Bool, String) -> Void
    var settled = false

    init(session: TLSSession, finish: @escaping @Sendable (Bool, String) -> Void) {
        self.session = session
        self.finish = finish
    }

    func channelActive(context: ChannelHandlerContext) {
        session.advanceHandshake()
        flush(context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        session.receive(unwrapInboundIn(data))
        flush(context.channel)
        switch session.state {
        case .established, .closed: settle(true, "verified", context.channel)
        case .failed(let why):
            // A server that demands a client certificate ends the handshake after proving its
            // own (verified chain, signed key exchange): proof enough of the name.
            let proved = session.certificateRequested && session.verifyError == nil && session.peerCertificate != nil
            settle(proved, proved ? "verified (then the server demanded a client certificate)" : why, context.channel)
        case .handshaking: break
        }
    }

    func channelInactive(context: ChannelHandlerContext) { settle(false, "closed during the probe", context.channel) }
    func errorCaught(context: ChannelHandlerContext, error: Error) { settle(false, "\(error)", context.channel) }

    func flush(_ channel: Channel) {
        if let records = session.takeRecords() { channel.writeAndFlush(records, promise: nil) }
    }

    func settle(_ verified: Bool, _ reason: String, _ channel: Channel) {
        guard !settled else { return }
        settled = true
        finish(verified, reason)
        channel.close(promise: nil)
    }
}
