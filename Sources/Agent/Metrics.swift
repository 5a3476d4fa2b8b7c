import Divert
import Foundation
import NIOCore
import NIOPosix
import Synchronization
import Wire

/// What the agent exposes to Prometheus, gathered at scrape time.
public struct MetricsSnapshot: Sendable {
    public var flows = FlowCounters()
    public var queues: [QueueCounters] = []
    public var leafHits = 0, leafMisses = 0, leafMints = 0, leafFailures = 0
    public var preparedUsed = 0, preparedDiscarded = 0
    /// Proxy connections by how they ended: (mode, reason class) → count.
    public var proxyEnds: [ProxyEnd: Int] = [:]
    /// Requests on bumped flows (HTTP/1.1 and HTTP/2) by request-stage verdict.
    public var requests: [String: Int] = [:]
    /// Flow-log lines lost because the log was not taking them.
    public var flowLogLost = 0
    public var verdictSeconds = 0.0
    public var verdictPackets = 0

    public struct ProxyEnd: Hashable, Sendable {
        public var mode: String
        public var reason: String
        public init(mode: String, reason: String) { self.mode = mode; self.reason = reason }
    }

    public init() {}

    /// Prometheus text exposition format 0.0.4. Pure.
    public var text: String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: String)]) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
            for s in samples { out += "\(name)\(s.labels.isEmpty ? "" : "{\(s.labels)}") \(s.value)\n" }
        }
        family("loupe_flows_total", "counter", "Flows decided at stage connect, by verdict.",
               flows.byVerdict.sorted { $0.key < $1.key }.map { ("verdict=\(Self.label($0.key))", "\($0.value)") })
        family("loupe_dns_answers_total", "counter", "DNS answers snooped for names.", [("", "\(flows.dnsAnswers)")])
        family("loupe_undecidable_packets_total", "counter", "Queued packets that were not a readable TCP/UDP first packet.", [("", "\(flows.undecidable)")])
        family("loupe_queue_dropped_total", "counter", "Packets the kernel dropped because a queue was full (fail-open accepts them instead).",
               queues.map { ("queue=\"\($0.queue)\"", "\($0.queueDropped)") })
        family("loupe_queue_user_dropped_total", "counter", "Packets lost because Loupe's socket buffer was full.",
               queues.map { ("queue=\"\($0.queue)\"", "\($0.userDropped)") })
        family("loupe_queue_waiting", "gauge", "Packets waiting for a verdict now.", queues.map { ("queue=\"\($0.queue)\"", "\($0.waiting)") })
        out += "# HELP loupe_verdict_seconds User-space time to decide queued packets.\n# TYPE loupe_verdict_seconds summary\n"
        out += "loupe_verdict_seconds_sum \(verdictSeconds)\nloupe_verdict_seconds_count \(verdictPackets)\n"
        family("loupe_leaf_cache_total", "counter", "Masquerade leaf cache lookups and mints.",
               [("result=\"hit\"", "\(leafHits)"), ("result=\"miss\"", "\(leafMisses)"), ("result=\"mint\"", "\(leafMints)"), ("result=\"failure\"", "\(leafFailures)")])
        family("loupe_prepared_handshakes_total", "counter",
               "Client-facing handshakes worked out while the upstream answered: sent as prepared, or dropped unsent (the upstream failed or chose otherwise).",
               [("result=\"used\"", "\(preparedUsed)"), ("result=\"discarded\"", "\(preparedDiscarded)")])
        family("loupe_proxy_connections_total", "counter", "Inspected connections by how they ended (handshake failures carry their reason).",
               proxyEnds.sorted { ($0.key.mode, $0.key.reason) < ($1.key.mode, $1.key.reason) }
                   .map { ("mode=\(Self.label($0.key.mode)),reason=\(Self.label($0.key.reason))", "\($0.value)") })
        family("loupe_requests_total", "counter", "Requests on bumped flows (HTTP/1.1 and HTTP/2), by request-stage verdict.",
               requests.sorted { $0.key < $1.key }.map { ("verdict=\(Self.label($0.key))", "\($0.value)") })
        family("loupe_flow_log_lost_lines_total", "counter",
               "Flow-log lines lost because the log's file or pipe was not taking them (each loss is also written to the log once it takes lines again).",
               [("", "\(flowLogLost)")])
        return out
    }

    public static func label(_ value: String) -> String {
        "\"" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"").replacingOccurrences(of: "\n", with: "\\n") + "\""
    }

    /// A reason's class: the text before its first colon ("upstream TLS failed: certificate
    /// verify failed: …" → "upstream TLS failed"), so labels stay few.
    public static func reasonClass(_ reason: String) -> String {
        String(reason.prefix { $0 != ":" }.prefix(60))
    }
}

/// The kernel's counters of one queue, from /proc/net/netfilter/nfnetlink_queue.
public struct QueueCounters: Sendable, Equatable {
    public var queue: Int, waiting: Int, queueDropped: Int, userDropped: Int, sequence: Int

    public init(queue: Int, waiting: Int, queueDropped: Int, userDropped: Int, sequence: Int) {
        (self.queue, self.waiting, self.queueDropped, self.userDropped, self.sequence) = (queue, waiting, queueDropped, userDropped, sequence)
    }

    /// Parses the proc file's lines: queue, peer portid, waiting, copy mode, copy range,
    /// queue dropped, user dropped, id sequence, 1.
    public static func parse(_ text: String) -> [QueueCounters] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ", omittingEmptySubsequences: true).compactMap { Int($0) }
            guard f.count >= 8 else { return nil }
            return QueueCounters(queue: f[0], waiting: f[2], queueDropped: f[5], userDropped: f[6], sequence: f[7])
        }
    }
}

/// Serves GET /metrics (any path) on a local address: a minimal HTTP/1.1 responder, one scrape
/// per connection.
public final class MetricsServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let snapshot: @Sendable () -> MetricsSnapshot

    public init(group: MultiThreadedEventLoopGroup, snapshot: @escaping @Sendable () -> MetricsSnapshot) {
        self.group = group
        self.snapshot = snapshot
    }

    public func start(_ address: String) async throws -> Channel {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw AgentError("metrics address must be HOST:PORT, found \"\(address)\"")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        let snapshot = self.snapshot
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(MetricsResponder(snapshot: snapshot)) }
            }
            .bind(host: host, port: port).get()
    }
}

final class MetricsResponder: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let snapshot: @Sendable () -> MetricsSnapshot
    var request: [UInt8] = []

    init(snapshot: @escaping @Sendable () -> MetricsSnapshot) { self.snapshot = snapshot }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        request += buffer.readBytes(length: buffer.readableBytes) ?? []
        // Answer once the request head is complete; anything else ends the connection.
        switch HTTPHead.parse(request[...], expectRequest: true) {
        case .needMore where request.count < 16_384: return
        case .head: break
        default: context.close(promise: nil); return
        }
        let body = snapshot().text
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: head + body))).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}
