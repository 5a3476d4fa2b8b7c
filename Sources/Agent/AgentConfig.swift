import Divert
import Foundation
import TOML

/// loupe.toml: the agent's settings. Every key is optional; flags of `loupe run` override them.
/// Relative paths are relative to the file's directory.
public struct AgentConfig: Sendable, Equatable {
    public enum FailMode: String, Sendable { case open, closed }

    public var stateDir = "/var/lib/loupe"
    public var policy: String?
    public var upstreamCA: String?
    public var fail: FailMode = .open
    public var gateway = false
    public var controlSocket = "/run/loupe/control.sock"
    /// A file, "-" for stdout, or nil for none.
    public var flowLog: String? = "-"
    /// HOST:PORT for Prometheus metrics, or nil.
    public var metrics: String?
    public var firstQueue: UInt16 = 0
    public var queueCount: UInt16 = 1
    public var dnsQueue: UInt16 = 100
    /// The bits of the packet and conntrack marks that are Loupe's (`[queue] mark_mask`).
    public var markMask: UInt32 = Marks.defaultMask
    public var proxyPort: UInt16 = 8443
    public var handshakeTimeout: Int = 10
    public var idleTimeout: Int = 600
    /// Failed upstream verification → a TLS alert (default) or a quarantine leaf.
    public var quarantineFailures = false
    /// NSS key log for both legs of inspected connections; nil (default) = none.
    public var keylog: String?

    public init() {}

    public static func load(path: String) throws(ConfigError) -> AgentConfig {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError(file: path, line: 0, message: "cannot read: \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigError) -> AgentConfig {
        let reader = try TOMLReader.parse(text, file: file)
        let base = URL(fileURLWithPath: file).deletingLastPathComponent().path
        func resolve(_ path: String?) -> String? {
            guard let path, !path.isEmpty else { return nil }
            return path.hasPrefix("/") || path == "-" ? path : "\(base)/\(path)"
        }
        var c = AgentConfig()
        try reader.onlyKeys(["state_dir", "policy", "upstream_ca", "fail", "gateway", "control_socket", "flow_log", "metrics", "queue", "proxy"])
        if let v = try reader.string("state_dir") { c.stateDir = resolve(v)! }
        c.policy = resolve(try reader.string("policy"))
        c.upstreamCA = resolve(try reader.string("upstream_ca"))
        if let v = try reader.string("fail") {
            guard let mode = FailMode(rawValue: v) else { throw reader.error("'fail' must be \"open\" or \"closed\", found \"\(v)\"", at: reader.table["fail"]) }
            c.fail = mode
        }
        c.gateway = try reader.bool("gateway") ?? false
        if let v = try reader.string("control_socket") { c.controlSocket = resolve(v)! }
        if let v = try reader.string("flow_log") { c.flowLog = v.isEmpty ? nil : resolve(v) }
        c.metrics = try reader.string("metrics").flatMap { $0.isEmpty ? nil : $0 }
        if let queue = try reader.table("queue") {
            try queue.onlyKeys(["first", "count", "dns", "mark_mask"])
            c.firstQueue = UInt16(try queue.integer("first", in: 0...65_000) ?? 0)
            c.queueCount = UInt16(try queue.integer("count", in: 1...64) ?? 1)
            c.dnsQueue = UInt16(try queue.integer("dns", in: 0...65_535) ?? 100)
            if let mask = try queue.integer("mark_mask", in: 1...0xFFFF_FFFF) {
                if let problem = Marks.problem(with: UInt32(mask)) { throw queue.error("'queue.mark_mask': \(problem)", at: queue.table["mark_mask"]) }
                c.markMask = UInt32(mask)
            }
            if (c.firstQueue..<(c.firstQueue + c.queueCount)).contains(c.dnsQueue) {
                throw queue.error("'queue.dns' (\(c.dnsQueue)) must not be one of the flow queues \(c.firstQueue)…\(c.firstQueue + c.queueCount - 1)", at: queue.table["dns"])
            }
        }
        if let proxy = try reader.table("proxy") {
            try proxy.onlyKeys(["port", "handshake_timeout", "idle_timeout", "keylog", "upstream_failure"])
            switch try proxy.string("upstream_failure") ?? "alert" {
            case "alert": c.quarantineFailures = false
            case "quarantine": c.quarantineFailures = true
            case let other: throw proxy.error("'proxy.upstream_failure' must be \"alert\" or \"quarantine\", found \"\(other)\"", at: proxy.table["upstream_failure"])
            }
            c.keylog = resolve(try proxy.string("keylog"))
            c.proxyPort = UInt16(try proxy.integer("port", in: 1...65_535) ?? 8443)
            c.handshakeTimeout = Int(try proxy.integer("handshake_timeout", in: 1...300) ?? 10)
            c.idleTimeout = Int(try proxy.integer("idle_timeout", in: 1...86_400) ?? 600)
        }
        return c
    }

    /// The diversion settings these options give (backend chosen separately, by probe).
    public func divertSettings(backend: QueueBackend) -> DivertSettings {
        var s = DivertSettings()
        s.queues = firstQueue...(firstQueue + queueCount - 1)
        s.dnsQueue = dnsQueue
        s.marks = Marks(mask: markMask)
        s.proxyPort = proxyPort
        s.failClosed = fail == .closed
        s.gateway = gateway
        s.backend = backend
        return s
    }
}
