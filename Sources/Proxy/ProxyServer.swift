import CA
import Foundation
import NIOCore
import NIOPosix
import Platform
import Policy
import TLS
import Synchronization
import Wire

/// The I/O shell around `ConnectionMachine`: a NIO listener for diverted connections. Each
/// accepted socket learns its original destination (SO_ORIGINAL_DST after an nft redirect),
/// gets a machine, and this file only carries bytes, connects, timers and mints between the
/// sockets and the machine.
public final class ProxyServer: Sendable {
    public struct Configuration: Sendable {
        public var policy: Policy
        public var cache: LeafCache
        public var upstreamContext: TLSContext
        public var clientContext: TLSContext
        /// Set on upstream sockets so the diversion rules let Loupe's own traffic pass.
        public var bypassMark: UInt32?
        /// For tests without a redirect: the destination to use when the socket has none.
        public var fixedDestination: FlowFacts.Endpoint?
        /// Deadline for the ClientHello and for each handshake.
        public var handshakeTimeout: TimeAmount = .seconds(10)
        /// A relaying connection with nothing moved either way for this long is closed.
        public var idleTimeout: TimeAmount = .seconds(600)
        public var flowLog: (@Sendable (String) -> Void)?
        /// Proves names before name-based splices; made from `upstreamContext` when nil.
        public var nameProbe: NameProbe?
        /// The agent's live state, read per connection: the policy after reloads, the leaf cache
        /// after a root rotation, and what stage connect knew of the flow (uid, process, names).
        public var livePolicy: (@Sendable () -> Policy)?
        public var liveCache: (@Sendable () -> LeafCache)?
        public var connectFacts: (@Sendable (FlowFacts) -> FlowFacts)?
        /// The store's client identities after reloads (`clientIdentities` when nil).
        public var liveClientIdentities: (@Sendable () -> [String: ClientIdentity])?
        /// The quarantine issuer's leaves, when failed upstreams get a quarantine certificate
        /// instead of an alert (`--upstream-failure quarantine`); nil: alerts.
        public var quarantine: LeafCache?
        /// Client identities from the store (label → certificate and key) for mTLS upstreams.
        public var clientIdentities: [String: ClientIdentity] = [:]
        /// Hosts learnt for splicing (`[auto_splice]` in the policy); shared by all connections.
        public var autoSplice = AutoSplice()
        /// Each upstream's last client-facing handshake, so the next is worked out while the
        /// upstream answers; shared by all connections.
        public var forecasts = HandshakeForecasts()
        /// Told how each connection ended (mode: bump, splice, block or none), for metrics.
        public var onFinished: (@Sendable (_ mode: String, _ reason: String) -> Void)?
        /// Told each request-stage verdict (allow, block), for metrics.
        public var onRequest: (@Sendable (_ verdict: String) -> Void)?

        public init(policy: Policy, cache: LeafCache, upstreamContext: TLSContext, clientContext: TLSContext) {
            self.policy = policy
            self.cache = cache
            self.upstreamContext = upstreamContext
            self.clientContext = clientContext
        }
    }

    let configuration: Configuration
    let group: MultiThreadedEventLoopGroup
    let open: OpenConnections

    /// What every connection of a server shares, held by reference: a copy of the configuration
    /// in each connection's handler was ~400 bytes an idle pair.
    final class Shared: Sendable {
        let configuration: Configuration
        let trimmer: HeapTrimmer
        init(configuration: Configuration, trimmer: HeapTrimmer) {
            self.configuration = configuration
            self.trimmer = trimmer
        }
    }

    /// Client connections currently held (for draining on shutdown).
    final class OpenConnections: Sendable {
        let count = Atomic<Int>(0)
    }

    /// Returns the heap's free pages to the kernel a moment after connections went quiet or
    /// ended — at most once per `interval`, whatever the number of connections asking.
    final class HeapTrimmer: Sendable {
        let interval: TimeAmount
        private let pending = Atomic<Bool>(false)

        init(interval: TimeAmount = .seconds(1)) { self.interval = interval }

        func request(on loop: EventLoop) {
            guard MemoryTrim.isAvailable, pending.compareExchange(expected: false, desired: true, ordering: .relaxed).exchanged else { return }
            loop.scheduleTask(in: interval) { [self] in
                pending.store(false, ordering: .relaxed)
                MemoryTrim.releaseFreePages()
            }
        }
    }
    let trimmer = HeapTrimmer()

    public var openConnections: Int { open.count.load(ordering: .relaxed) }

    /// Event loops, each with a listener of its own once started.
    public var eventLoops: Int { loops.count }
    let loops: [EventLoop]

    /// Client-facing handshakes prepared ahead so far, used and dropped.
    public var preparedHandshakes: HandshakeForecasts.Statistics { configuration.forecasts.statistics }

    public init(configuration: Configuration, threads: Int = System.coreCount) {
        OpenFileLimit.raiseToHardLimit()
        // Relay buffers come and go on every read; the trimmer gives the pages back once quiet.
        MemoryTrim.holdFreedPages(upTo: 4 << 20)
        var configuration = configuration
        if configuration.nameProbe == nil {
            configuration.nameProbe = NameProbe(context: configuration.upstreamContext, bypassMark: configuration.bypassMark)
        }
        self.configuration = configuration
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        self.loops = Array(group.makeIterator())
        self.open = OpenConnections()
    }

    /// Binds and serves; the returned channel's closeFuture ends with the server (closing it
    /// closes every listener). One listener per event loop, sharing the port (SO_REUSEPORT),
    /// each keeping its connections on its own loop: a connection accepted on one loop and
    /// handed to another waited for two cross-thread wake-ups (~0.3 ms of its set-up here).
    public func start(host: String, port: Int) async throws -> Channel {
        if port != 0, let address = IPAddress.parse(host), ListeningSockets.inUse(port: port, address: address) {
            throw ProxyServerError.portInUse("\(host):\(port) is already served by another socket (another loupe?)")
        }
        let shared = Shared(configuration: configuration, trimmer: trimmer)
        let first = try await listener(on: loops[0], shared: shared).bind(host: host, port: port).get()
        var others: [Channel] = []
        do {
            // Port 0 picks a port: the others join the one the first was given.
            let bound = first.localAddress?.port ?? port
            for loop in loops.dropFirst() {
                others.append(try await listener(on: loop, shared: shared).bind(host: host, port: bound).get())
            }
        } catch {
            for channel in [first] + others { try? await channel.close() }
            throw error
        }
        let rest = others
        first.closeFuture.whenComplete { _ in rest.forEach { $0.close(promise: nil) } }
        return first
    }

    private func listener(on loop: EventLoop, shared: Shared) -> ServerBootstrap {
        let open = self.open
        return ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.socketOption(.init(rawValue: SO_REUSEPORT)), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try PairSocketOptions.apply(to: channel, mark: nil)
                    try channel.pipeline.syncOperations.addHandler(ClientSide(shared))
                    open.count.add(1, ordering: .relaxed)
                    channel.closeFuture.whenComplete { _ in
                        open.count.subtract(1, ordering: .relaxed)
                        shared.trimmer.request(on: channel.eventLoop)
                    }
                }
            }
    }

    /// Waits until every client connection has ended, or `timeout` passed; returns how many were
    /// still open. (Close the listener first, so no new ones arrive.)
    public func drain(timeout: Duration) async -> Int {
        let clock = ContinuousClock()
        let deadline = clock.now.advanced(by: timeout)
        while openConnections > 0, clock.now < deadline { try? await Task.sleep(for: .milliseconds(50)) }
        return openConnections
    }

    public func shutdown() async throws { try await group.shutdownGracefully() }
}

public enum ProxyServerError: Error, CustomStringConvertible {
    case portInUse(String)
    public var description: String {
        switch self {
        case .portInUse(let why): why
        }
    }
}

/// Keeps a socket's receive buffer from outliving the read that needed it. NIO keeps the buffer
/// it last read into for the next read, at the largest size it ever grew to: after one 64 KiB
/// read (any download), an idle connection held 64 KiB for good — 116 KiB a bumped pair that had
/// moved 2 MiB, against 42 fresh. Holding on to the socket's first buffer makes NIO's pool find
/// it shared, so with one buffer per wakeup each read gets a buffer of the size the adaptive
/// allocator predicts, freed once the bytes are copied out. That first buffer is made tiny (its
/// read takes the first 16 bytes of a hello): held for the connection's life, a 1 KiB one cost
/// 2 KiB a pair.
struct ReceiveBuffers {
    static let allocator = FirstReadSmall()
    /// One read per readiness event: the pool then never stores a second buffer (epoll is level
    /// triggered, so more data waiting only means the next wait returns at once).
    static let readsPerWakeup: UInt = 1
    private var first: ByteBuffer?

    mutating func sawRead(_ buffer: ByteBuffer) {
        if first == nil { first = buffer }
    }

    /// NIO's adaptive sizes (1 KiB to start, up to 64 KiB), after a first buffer of 16 bytes.
    struct FirstReadSmall: RecvByteBufferAllocator {
        static let firstSize = 16
        private var adaptive = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 1024, maximum: 65_536)
        private var first = true

        func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
            first ? allocator.buffer(capacity: Self.firstSize) : adaptive.buffer(allocator: allocator)
        }

        func nextBufferSize() -> Int? { first ? Self.firstSize : adaptive.nextBufferSize() }

        mutating func record(actualReadBytes: Int) -> Bool {
            guard !first else {
                first = false
                return true
            }
            return adaptive.record(actualReadBytes: actualReadBytes)
        }
    }
}

/// Backpressure's bounds on a socket's pending writes (past `high`, the other socket of the
/// pair stops reading). One full read (64 KiB) re-encrypted is a little over 64 KiB, NIO's
/// default high mark: every such write turned the channel unwritable and writable again
/// (reads off and on: two epoll_ctl and two pipeline events a read) though the socket took it
/// all at once.
enum WriteBuffers {
    static let waterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 64 * 1024, high: 128 * 1024)
}

/// The options both sockets of a pair carry, set in their channel initializers: through the
/// bootstraps' option lists each option was a future and its callbacks, for every socket.
enum PairSocketOptions {
    static func apply(to channel: Channel, mark: UInt32?) throws {
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        try options.setOption(.allowRemoteHalfClosure, value: true)
        try options.setOption(.recvAllocator, value: ReceiveBuffers.allocator)
        try options.setOption(.maxMessagesPerRead, value: ReceiveBuffers.readsPerWakeup)
        try options.setOption(.writeBufferWaterMark, value: WriteBuffers.waterMark)
        try setBypassMark(mark, on: channel)
    }

    /// SO_MARK (36): the diversion rules accept marked packets before redirecting.
    static func setBypassMark(_ mark: UInt32?, on channel: Channel) throws {
        guard let mark else { return }
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        try options.setOption(.socketOption(.init(rawValue: 36)), value: SocketOptionValue(mark))
    }
}

/// Reads the original destination of a redirected socket.
enum OriginalDestination {
    static func of(_ channel: Channel) -> EventLoopFuture<FlowFacts.Endpoint?> {
        guard let provider = channel as? SocketOptionProvider, let local = channel.localAddress else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        // SO_ORIGINAL_DST (80) for IPv4, IP6T_SO_ORIGINAL_DST (80) for IPv6; Glibc exports neither.
        // A dual-stack listener sees IPv4 clients on an IPv6 socket: try IPv6, then IPv4.
        let v4: @Sendable () -> EventLoopFuture<FlowFacts.Endpoint?> = {
            let future: EventLoopFuture<sockaddr_in> = provider.unsafeGetSocketOption(level: SocketOptionLevel(0), name: SocketOptionName(80))
            return future.map { FlowFacts.Endpoint(SocketAddress($0, host: "")) }.recover { _ in nil }
        }
        guard local.protocol == .inet6 else { return v4() }
        let future: EventLoopFuture<sockaddr_in6> = provider.unsafeGetSocketOption(level: SocketOptionLevel(41), name: SocketOptionName(80))
        return future.map { FlowFacts.Endpoint(SocketAddress($0, host: "")) }.recover { _ in nil }.flatMap { found in found.map { channel.eventLoop.makeSucceededFuture($0) } ?? v4() }
    }
}

/// The client's socket: owns the machine and executes its commands.
final class ClientSide: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let shared: ProxyServer.Shared
    var configuration: ProxyServer.Configuration { shared.configuration }
    var machine: ConnectionMachine?
    var cache: LeafCache?
    var context: ChannelHandlerContext?
    var upstream: Channel?
    var pending: [ConnectionMachine.Event] = []
    /// The connection's own flow-log fields, once rendered (`connectionFields`).
    private var renderedConnectionFields: String?
    let started = Date()
    var bytesFromClient = 0
    var bytesFromUpstream = 0
    var receiveBuffers = ReceiveBuffers()
    /// Reads and writes on the client socket both count: every byte either way passes through
    /// it. Two quiet seconds: buffers are given back; `idleTimeout`: the connection is closed.
    var activity: ActivityClock
    var activityCheck: Scheduled<Void>?
    static let quietAfter = TimeAmount.seconds(2)

    init(_ shared: ProxyServer.Shared) {
        self.shared = shared
        // Made with the accepted socket, just before it turns active: the deadline counts from here.
        let now = NIODeadline.now().uptimeNanoseconds
        activity = ActivityClock(quiet: UInt64(Self.quietAfter.nanoseconds), idle: UInt64(shared.configuration.idleTimeout.nanoseconds), now: now)
        activity.expect(by: now + UInt64(shared.configuration.handshakeTimeout.nanoseconds))
    }

    func channelActive(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        checkActivity()
        OriginalDestination.of(channel).whenComplete { [self] result in
            let ownAddress = channel.localAddress.flatMap(FlowFacts.Endpoint.init)
            // No redirect (the socket's own address came back) → the configured destination.
            var destination = (try? result.get()) ?? nil
            let redirected = destination != nil && destination != ownAddress
            if !redirected { destination = configuration.fixedDestination }
            var facts = FlowFacts()
            facts.proto = .tcp
            facts.dst = destination
            facts.src = channel.remoteAddress.flatMap(FlowFacts.Endpoint.init)
            guard destination != nil else {
                log(["event": "refused", "reason": "no original destination (not redirected and no fixed destination)"])
                channel.close(promise: nil)
                return
            }
            if let known = configuration.connectFacts { facts = known(facts) }
            cache = configuration.liveCache?() ?? configuration.cache
            var settings = ConnectionMachine.Settings(upstreamContext: configuration.upstreamContext, clientContext: configuration.clientContext)
            settings.autoSplice = configuration.autoSplice
            settings.forecasts = configuration.forecasts
            settings.clientIdentities = configuration.liveClientIdentities?() ?? configuration.clientIdentities
            settings.quarantineFailures = configuration.quarantine != nil
            // The port the client asked for: the original destination's, or this listener's.
            if let port = redirected ? destination?.port : ownAddress?.port { settings.clientPort = (port, redirected) }
            machine = ConnectionMachine(facts: facts, policy: configuration.livePolicy?() ?? configuration.policy, settings: settings)
            let queued = pending
            pending = []
            for event in queued { handle(event) }
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        receiveBuffers.sawRead(buffer)
        activity.moved(at: NIODeadline.now().uptimeNanoseconds)
        bytesFromClient += buffer.readableBytes
        handle(.clientData(buffer))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { handle(.clientClosed) }
        context.fireUserInboundEventTriggered(event)
    }

    /// Tells the machine what the activity clock says is due, and asks again when it says.
    func checkActivity() {
        guard let loop = context?.eventLoop else { return }
        let (due, next) = activity.check(at: NIODeadline.now().uptimeNanoseconds)
        switch due {
        case .deadline?: if machine?.phase != .relaying { handle(.timeout) }
        case .idle?: handle(.idle)
        case .quiet?:
            handle(.quiet)
            // The quiet connection gave its buffers back; the pages follow once others did too.
            shared.trimmer.request(on: loop)
        case nil: break
        }
        guard machine?.phase != .closed else { return }
        activityCheck = loop.scheduleTask(deadline: .uptimeNanoseconds(next)) { [self] in checkActivity() }
    }

    /// Backpressure: while the client cannot take more, stop reading the upstream (and so
    /// stop its sender); nothing is buffered beyond the channel's high-water mark.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        try? upstream?.syncOptions?.setOption(.autoRead, value: context.channel.isWritable)  // same event loop
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if machine?.phase != .closed { handle(.clientClosed) }
        upstream?.close(promise: nil)
        activityCheck?.cancel()
    }

    /// The channel is gone: drop what points back at it. The context (which holds this handler)
    /// and the upstream channel (whose handler holds this one) would otherwise keep every
    /// ended connection — its sessions, machine and both channels — alive for good.
    func handlerRemoved(context: ChannelHandlerContext) {
        activityCheck?.cancel()
        activityCheck = nil
        upstream?.close(promise: nil)
        upstream = nil
        self.context = nil
        pending = []
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    /// Runs one event through the machine and carries out its commands (on the event loop).
    func handle(_ event: ConnectionMachine.Event) {
        guard let machine else { pending.append(event); return }
        for command in machine.handle(event) { execute(command) }
        // Handshakes done: the idle timeout rules from here.
        if machine.phase == .relaying, activity.deadline != nil { activity.expect(by: nil) }
    }

    func execute(_ command: ConnectionMachine.Command) {
        guard let context else { return }
        switch command {
        case .connectUpstream(let destination):
            connect(to: destination, on: context.eventLoop)
        case .sendClient(let bytes):
            activity.moved(at: NIODeadline.now().uptimeNanoseconds)
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .sendUpstream(let bytes):
            guard let upstream else { return }
            upstream.writeAndFlush(bytes, promise: nil)
        case .mintQuarantineLeaf(let request):
            mint(request, from: configuration.quarantine, on: context.eventLoop)
        case .mintLeaf(let request):
            mint(request, from: cache, on: context.eventLoop)
        case .probe(let destination, let name):
            let this = NIOLoopBound(self, eventLoop: context.eventLoop)
            let loop = context.eventLoop
            configuration.nameProbe?.probe(destination, name, on: loop) { verified, reason in
                loop.execute { this.value.handle(.probed(verified: verified, reason: reason)) }
            }
        case .afterSending:
            // As a task: a write made while the connect completes is only flushed once the
            // connect's callbacks return.
            let this = NIOLoopBound(self, eventLoop: context.eventLoop)
            context.eventLoop.execute { this.value.handle(.sent) }
        case .learntSplice(let host, let reason):
            log(["event": "auto_splice", "host": host, "reason": reason])
        case .answered(let exchange):
            // Per-request lines are built field by field, keys in order: no dictionaries.
            log { line in
                line.add("bytes", exchange.bytes)
                line.add("event", "response")
                line.add("method", exchange.method)
                line.add("status", exchange.status)
                line.add("url", exchange.url)
            }
        case .decidedRequest(let decision, let method, let url):
            configuration.onRequest?(decision.verdict.rawValue)
            log { line in
                line.add("event", "decision")
                line.add("method", method)
                line.add("reason", decision.reason)
                line.add("rule", decision.rule)
                line.add("stage", decision.stage.rawValue)
                line.add("url", url)
                line.add("verdict", decision.verdict.rawValue)
            }
        case .decided(let decision):
            log(Self.fields(of: decision))
        case .closeClient:
            if machine?.phase == .closed { return }
            context.close(mode: .output, promise: nil)
        case .closeUpstream:
            if machine?.phase == .closed { return }
            upstream?.close(mode: .output, promise: nil)
        case .finished(let reason):
            configuration.onFinished?(machine?.mode?.rawValue ?? "none", reason)
            // The close line reads certificates and fingerprints: only when someone logs.
            if configuration.flowLog != nil {
                var fields: [String: Any] = ["event": "closed", "reason": reason, "mode": machine?.mode?.rawValue ?? "none",
                                             "sni": machine?.facts.sni ?? "", "duration_ms": Int(Date().timeIntervalSince(started) * 1000),
                                             "bytes_up": bytesFromClient, "bytes_down": bytesFromUpstream]
                fields["alpn_offered"] = machine.map { $0.facts.alpn.isEmpty ? nil : $0.facts.alpn } ?? nil
                fields["not_http"] = machine?.opaqueBecause
                fields.merge(machine?.tlsFields ?? [:]) { a, _ in a }
                log(fields)
            }
            // Let queued writes (an alert, a 403) leave before closing.
            let channel = context.channel
            channel.writeAndFlush(channel.allocator.buffer(capacity: 0)).whenComplete { _ in
                channel.close(promise: nil)
            }
            upstream?.close(promise: nil)
        }
    }

    static func fields(of decision: Decision) -> [String: Any] {
        ["event": "decision", "stage": decision.stage.rawValue, "verdict": decision.verdict.rawValue, "rule": decision.rule, "reason": decision.reason]
    }

    /// A cache hit answers at once; a miss mints off the event loop and comes back to it.
    func mint(_ request: LeafRequest, from cache: LeafCache?, on loop: EventLoop) {
        guard let cache else { return handle(.leafFailed("no issuer for this leaf")) }
        if let leaf = cache.cached(request) { return handle(.leafReady(leaf)) }
        let this = NIOLoopBound(self, eventLoop: loop)
        Task {
            do {
                let leaf = try await cache.leaf(for: request)
                loop.execute { this.value.handle(.leafReady(leaf)) }
            } catch {
                let reason = "\(error)"
                loop.execute { this.value.handle(.leafFailed(reason)) }
            }
        }
    }

    func connect(to destination: FlowFacts.Endpoint, on loop: EventLoop) {
        guard let address = destination.socketAddress else {
            handle(.upstreamConnectFailed("no IP address: \(destination.address.count) bytes"))
            return
        }
        let this = NIOLoopBound(self, eventLoop: loop)
        let mark = configuration.bypassMark
        ClientBootstrap(group: loop)
            .connectTimeout(configuration.handshakeTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try PairSocketOptions.apply(to: channel, mark: mark)
                    try channel.pipeline.syncOperations.addHandler(UpstreamSide(client: this))
                }
            }
            .connect(to: address).whenComplete { result in
            switch result {
            case .success(let channel):
                // The client left while this connect was under way: nobody will use it.
                guard this.value.context != nil, this.value.machine?.phase != .closed else { return channel.close(promise: nil) }
                this.value.upstream = channel
                this.value.handle(.upstreamConnected)
            case .failure(let error):
                this.value.handle(.upstreamConnectFailed("\(error)"))
            }
        }
    }

    /// One flow-log line: the time, the connection's fields, then `fill`'s. Nothing is built
    /// when nothing is logged.
    func log(_ fill: (inout JSONLine) -> Void) {
        guard let sink = configuration.flowLog else { return }
        var line = JSONLine(time: Date())
        line.add(fields: connectionFields())
        fill(&line)
        sink(line.line)
    }

    /// One flow-log line from `fields`, in the order of their keys.
    func log(_ fields: @autoclosure () -> [String: Any]) {
        log { $0.add(sorted: fields()) }
    }

    /// Who connected where, rendered once: every line of the connection carries it, and it
    /// is known before the machine starts (its facts' source, destination and process).
    private func connectionFields() -> String {
        if let rendered = renderedConnectionFields { return rendered }
        guard let facts = machine?.facts else { return "" }
        var line = JSONLine()
        line.add("src", facts.src?.description)
        line.add("dst", facts.dst?.description)
        line.add("uid", facts.uid)
        line.add("user", facts.user)
        line.add("exe", facts.exe)
        renderedConnectionFields = line.fields
        return line.fields
    }
}

/// The upstream socket: feeds bytes and closes back into the client side's machine.
final class UpstreamSide: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let client: NIOLoopBound<ClientSide>
    var receiveBuffers = ReceiveBuffers()

    init(client: NIOLoopBound<ClientSide>) { self.client = client }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        receiveBuffers.sawRead(buffer)
        let side = client.value  // each `value` checks the thread
        side.bytesFromUpstream += buffer.readableBytes
        side.handle(.upstreamData(buffer))
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed { client.value.handle(.upstreamClosed) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if client.value.machine?.phase != .closed { client.value.handle(.upstreamClosed) }
    }

    /// Backpressure the other way: a slow upstream stops reads from the client.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        try? client.value.context?.channel.syncOptions?.setOption(.autoRead, value: writable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
