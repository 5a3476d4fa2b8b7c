import CA
import Divert
import Foundation
import NIOCore
import NIOPosix
import Platform
import Policy
import Proxy
import Store
import Synchronization
import TLS

/// The running agent: composes the sealed store and CA, the proxy, the queue workers, the
/// ruleset and the control socket, and owns their order of start, reload and stop.
public final class Agent: Sendable {
    public struct Options: Sendable {
        public var config: AgentConfig
        public var profile: CAProfile
        public var storeOptions: StoreOptions

        public init(config: AgentConfig, profile: CAProfile, storeOptions: StoreOptions) {
            self.config = config
            self.profile = profile
            self.storeOptions = storeOptions
        }
    }

    struct Live {
        var store: SealedStore
        var policy: Policy
        var cache: LeafCache
        var rootFingerprint: String
        /// mTLS identities from the store, by label (re-read on reload, like the root).
        var identities: [String: ClientIdentity]
    }

    /// Shared by the agent and the closures it hands to the proxy and queue handler.
    final class LiveState: Sendable {
        let value: Mutex<Live>
        init(_ live: Live) { value = Mutex(live) }
        func withLock<R: Sendable>(_ body: (inout Live) -> R) -> R { value.withLock { body(&$0) } }
    }

    let options: Options
    let settings: DivertSettings
    let live: LiveState
    let feed: FlowFeed
    let handler: FlowHandler
    let proxy: ProxyServer
    let workers: [QueueWorker]
    let controlGroup = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let channels = Mutex<[Channel]>([])
    let started = Date()
    let stopped = Mutex(false)
    let observed: Observed

    /// Counters the queue threads and the proxy add to, for metrics.
    final class Observed: Sendable {
        let verdictTime = Mutex((seconds: 0.0, packets: 0))
        let proxyEnds = Mutex([MetricsSnapshot.ProxyEnd: Int]())
        let requests = Mutex([String: Int]())
    }

    /// Starts everything; on any failure what was started is undone and the error says why.
    public static func start(_ options: Options) async throws -> Agent {
        let config = options.config
        guard let policyPath = config.policy else { throw AgentError("no policy: set 'policy' in loupe.toml or pass --policy") }
        let policy = try Policy.load(path: policyPath)
        let store = try SealedStore.open(stateDirectory: config.stateDir, options: options.storeOptions)
        let (cache, fingerprint) = try makeCache(store: store, profile: options.profile)
        let settings = config.divertSettings(backend: NetfilterTables.probeBackend())
        let feed = FlowFeed(writer: try config.flowLog.map { try LineWriter(path: $0) })
        let agent = try Agent(options: options, store: store, settings: settings, feed: feed,
                              live: Live(store: store, policy: policy, cache: cache, rootFingerprint: fingerprint,
                                         identities: try store.clientIdentities()))
        do {
            try await agent.startServices()
        } catch {
            await agent.stop()
            throw error
        }
        return agent
    }

    static func makeCache(store: SealedStore, profile: CAProfile) throws -> (LeafCache, String) {
        guard let root = try RootAuthority(store: store, profile: profile).root() else {
            throw AgentError("no root CA in the store; run 'loupe ca init' first")
        }
        return (LeafCache(minter: try LeafMinter(root: root, profile: profile)), root.certificate.sha256Fingerprint)
    }

    init(options: Options, store: SealedStore, settings: DivertSettings, feed: FlowFeed, live: Live) throws {
        self.options = options
        self.settings = settings
        self.feed = feed
        let liveState = LiveState(live)
        self.live = liveState
        let handler = FlowHandler(marks: settings.marks, failClosed: settings.failClosed, attribution: ProcessAttribution(),
                                  policy: { liveState.withLock { $0.policy } }, record: { record in feed.append(rendering: { record.json }) })
        self.handler = handler

        var proxyConfig = ProxyServer.Configuration(
            policy: live.policy, cache: live.cache,
            upstreamContext: try TLSContext.client(trustBundle: options.config.upstreamCA), clientContext: try TLSContext.server())
        proxyConfig.bypassMark = settings.marks.bypass
        proxyConfig.clientIdentities = live.identities
        if options.config.quarantineFailures {
            proxyConfig.quarantine = LeafCache(minter: try LeafMinter(root: try RootAuthority.quarantineRoot(), profile: options.profile))
        }
        if let path = options.config.keylog {
            let log = try KeyLog(path: path)
            proxyConfig.upstreamContext.logKeys(to: log)
            proxyConfig.clientContext.logKeys(to: log)
            SystemLog.warning("TLS secrets of every inspected connection are written to \(path) (keylog)")
        }
        proxyConfig.handshakeTimeout = .seconds(Int64(options.config.handshakeTimeout))
        proxyConfig.idleTimeout = .seconds(Int64(options.config.idleTimeout))
        proxyConfig.flowLog = { feed.append($0) }
        let observed = Observed()
        self.observed = observed
        proxyConfig.onRequest = { verdict in observed.requests.withLock { $0[verdict, default: 0] += 1 } }
        proxyConfig.onFinished = { mode, reason in
            observed.proxyEnds.withLock { $0[MetricsSnapshot.ProxyEnd(mode: mode, reason: MetricsSnapshot.reasonClass(reason)), default: 0] += 1 }
        }
        proxyConfig.livePolicy = { liveState.withLock { $0.policy } }
        proxyConfig.liveCache = { liveState.withLock { $0.cache } }
        proxyConfig.liveClientIdentities = { liveState.withLock { $0.identities } }
        proxyConfig.connectFacts = { facts in
            guard let src = facts.src, let dst = facts.dst, let known = handler.connectRecord(src: src, dst: dst) else { return facts }
            var merged = known.facts
            merged.src = facts.src
            merged.dst = facts.dst
            return merged
        }
        self.proxy = ProxyServer(configuration: proxyConfig)

        // Bound before the ruleset exists, so no flow is ever queued to nobody.
        var workers: [QueueWorker] = []
        let failOpen = !settings.failClosed
        let onError: @Sendable (String) -> Void = { SystemLog.error($0) }
        let timed: @Sendable ([QueuedPacket]) -> [PacketVerdict] = { packets in
            let start = DispatchTime.now().uptimeNanoseconds
            let verdicts = handler.handle(packets)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            observed.verdictTime.withLock { $0.seconds += seconds; $0.packets += packets.count }
            return verdicts
        }
        for queue in settings.queues {
            let socket = try QueueSocket(queue: queue, copyRange: 128, failOpen: failOpen, maxLength: 65_536)
            workers.append(QueueWorker(socket: socket, onError: onError, handle: timed))
        }
        let dns = try QueueSocket(queue: settings.dnsQueue, copyRange: 0xFFFF, failOpen: failOpen)
        workers.append(QueueWorker(socket: dns, onError: onError, handle: timed))
        self.workers = workers
    }

    func startServices() async throws {
        let proxyChannel = try await proxy.start(host: "::", port: Int(settings.proxyPort))
        channels.withLock { $0.append(proxyChannel) }
        for worker in workers { worker.start() }
        try NetfilterTables.install(Ruleset(settings))
        SystemLog.info("ruleset installed (table inet \(settings.table), queue via \(settings.backend.rawValue), fail \(settings.failClosed ? "closed" : "open"))")
        let control = ControlServer(path: options.config.controlSocket, group: controlGroup) { [self] request, peer in
            await self.answer(request, from: peer)
        }
        let controlChannel = try await control.start()
        channels.withLock { $0.append(controlChannel) }
        if let address = options.config.metrics {
            let metrics = try await MetricsServer(group: controlGroup) { [self] in metricsSnapshot }.start(address)
            channels.withLock { $0.append(metrics) }
            SystemLog.info("metrics on http://\(address)/metrics")
        }
        SystemLog.info("control socket \(options.config.controlSocket); proxy on port \(settings.proxyPort); queues \(settings.queues.lowerBound)…\(settings.queues.upperBound), dns \(settings.dnsQueue)")
    }

    /// Removes the ruleset first (new flows go direct again), stops accepting, lets inspected
    /// connections already open finish (up to `drainTimeout`), then stops the rest.
    public func stop(drainTimeout: Duration = .seconds(10)) async {
        guard stopped.withLock({ let was = $0; $0 = true; return !was }) else { return }
        let draining = proxy.openConnections > 0
        do {
            if draining { try NetfilterTables.drain(settings) } else { try NetfilterTables.remove(settings) }
        } catch { SystemLog.error("removing the ruleset: \(error)") }
        for worker in workers { worker.stop() }
        for channel in channels.withLock({ $0 }) { try? await channel.close() }
        if draining {
            SystemLog.info("draining \(proxy.openConnections) inspected connection(s)")
            let left = await proxy.drain(timeout: drainTimeout)
            if left > 0 { SystemLog.warning("\(left) inspected connection(s) still open after the drain; closing them") }
            do { try NetfilterTables.remove(settings) } catch { SystemLog.error("removing the ruleset: \(error)") }
        }
        try? await proxy.shutdown()
        try? await controlGroup.shutdownGracefully()
        try? FileManager.default.removeItem(atPath: options.config.controlSocket)
        feed.flush(seconds: 2)
        SystemLog.info("stopped; ruleset removed")
    }

    /// Re-reads the policy and the store's current root (after `loupe ca rotate`) and replaces
    /// the ruleset; a bad policy or an unreadable root keeps what is running.
    public func reload() -> Result<String, AgentError> {
        // The flow log's file is opened again (logrotate moved it away), whatever the policy does.
        do { try feed.reopen() } catch { SystemLog.error("the flow log stays where it was: \(error)") }
        guard let path = options.config.policy else { return .failure(AgentError("no policy file to reload")) }
        let policy: Policy
        let cache: LeafCache, fingerprint: String, store: SealedStore, identities: [String: ClientIdentity]
        do {
            policy = try Policy.load(path: path)
            // A fresh handle: `loupe ca rotate` and `loupe store import-p12` may have changed the
            // store since it was opened.
            store = try SealedStore.open(stateDirectory: options.config.stateDir, options: options.storeOptions)
            (cache, fingerprint) = try Self.makeCache(store: store, profile: options.profile)
            identities = try store.clientIdentities()
        } catch {
            SystemLog.error("reload refused, the running policy and root stay: \(error)")
            return .failure(AgentError("reload refused, the running policy and root stay: \(error)"))
        }
        do { try NetfilterTables.install(Ruleset(settings)) } catch {
            return .failure(AgentError("ruleset: \(error)"))
        }
        let rootChanged = live.withLock { live -> Bool in
            live.policy = policy
            live.store = store
            live.identities = identities
            guard live.rootFingerprint != fingerprint else { return false }
            (live.cache, live.rootFingerprint) = (cache, fingerprint)
            return true
        }
        let message = "reloaded \(path): \(policy.rules.count) rules, \(identities.count) client identities" + (rootChanged ? "; new root \(fingerprint.prefix(16))…" : "")
        SystemLog.info(message)
        return .success(message)
    }

    public var metricsSnapshot: MetricsSnapshot {
        var m = MetricsSnapshot()
        m.flows = handler.snapshot
        m.queues = QueueCounters.parse((try? PrivateFiles.read("/proc/net/netfilter/nfnetlink_queue")).map { String(decoding: $0, as: UTF8.self) } ?? "")
        let stats = live.withLock { $0.cache }.statistics
        (m.leafHits, m.leafMisses, m.leafMints, m.leafFailures) = (stats.hits, stats.misses, stats.mints, stats.failures)
        let prepared = proxy.preparedHandshakes
        (m.preparedUsed, m.preparedDiscarded) = (prepared.used, prepared.discarded)
        m.proxyEnds = observed.proxyEnds.withLock { $0 }
        m.requests = observed.requests.withLock { $0 }
        (m.verdictSeconds, m.verdictPackets) = observed.verdictTime.withLock { ($0.seconds, $0.packets) }
        m.flowLogLost = feed.lostLines
        return m
    }

    public var statusObject: [String: Any] {
        let counters = handler.snapshot
        let (policy, cache, fingerprint) = live.withLock { ($0.policy, $0.cache, $0.rootFingerprint) }
        let stats = cache.statistics
        return [
            "pid": Int(getpid()),
            "uptime_seconds": Int(Date().timeIntervalSince(started)),
            "ruleset": ["table": "inet \(settings.table)", "installed": NetfilterTables.isInstalled(table: settings.table),
                        "queue_backend": settings.backend.rawValue, "fail": settings.failClosed ? "closed" : "open",
                        "gateway": settings.gateway, "queues": "\(settings.queues.lowerBound)-\(settings.queues.upperBound)",
                        "dns_queue": Int(settings.dnsQueue), "proxy_port": Int(settings.proxyPort),
                        "mark_mask": "0x" + String(settings.marks.mask, radix: 16)] as [String: Any],
            "policy": ["file": options.config.policy ?? "", "rules": policy.rules.count],
            "root_sha256": fingerprint,
            "flows": counters.byVerdict,
            "dns_answers": counters.dnsAnswers,
            "dns_addresses": handler.knownAddresses,
            "undecidable_packets": counters.undecidable,
            "leaf_cache": ["hits": stats.hits, "misses": stats.misses, "mints": stats.mints, "failures": stats.failures],
            "flow_log_lost_lines": feed.lostLines,
        ]
    }

    func answer(_ request: ControlRequest, from peer: ControlPeer) async -> ControlReply {
        SystemLog.info("control: \(request.command.rawValue) from uid \(peer.uid) pid \(peer.pid)")
        switch request.command {
        case .status:
            return .lines([Self.json(statusObject)])
        case .flows:
            let recent = feed.recent(request.limit)
            guard request.follow else { return .lines(recent) }
            let feed = self.feed
            return .stream(initial: recent, start: { feed.follow($0) }, stop: { feed.unfollow($0) })
        case .caExport:
            do {
                guard let format = ExportFormat(rawValue: request.format) else { throw AgentError("unknown format \"\(request.format)\"") }
                let store = live.withLock { $0.store }
                guard let root = try RootAuthority(store: store, profile: options.profile).root() else { throw AgentError("no root") }
                var template: String?
                if format == .mobileconfig, let dir = CAFiles.directory() {
                    template = try String(contentsOfFile: "\(dir)/apple-root.mobileconfig", encoding: .utf8)
                }
                let bytes = try RootExport.render(root.certificate, as: format, template: template)
                return .lines([Self.json(["format": format.rawValue, "base64": Data(bytes).base64EncodedString()])])
            } catch {
                return .lines([Self.json(["error": "\(error)"])])
            }
        case .reload:
            switch reload() {
            case .success(let message): return .lines([Self.json(["message": message])])
            case .failure(let error): return .lines([Self.json(["error": error.description])])
            }
        }
    }

    static func json(_ object: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}
