/// Packet and conntrack marks shared by the ruleset, the queue verdicts and Loupe's own sockets.
/// Loupe owns only the bits of `mask`, a field of its own: rules compare `mark & mask`, and
/// setting a value keeps every other bit, so other tools' marks pass through intact
/// (Kubernetes' 0x4000 masquerade bit, Tailscale's 0xff0000 field, Cilium's 0x0f00). Before,
/// Loupe's whole-word values (0x4c41…) carried the 0x4000 bit: kube-proxy masqueraded every flow
/// Loupe had decided.
public struct Marks: Sendable, Equatable {
    /// Loupe's bits; at least three adjacent ones (six values).
    public let mask: UInt32
    /// Loupe's own sockets (proxy upstreams, probes): accepted before anything else.
    public let bypass: UInt32
    /// A new flow waiting for its connect verdict.
    public let queue: UInt32
    /// A DNS answer to snoop.
    public let dns: UInt32
    /// Verdicts, set by the queue and kept in the conntrack mark for the flow's life.
    public let allow: UInt32
    public let inspect: UInt32
    public let reject: UInt32

    public static let defaultMask: UInt32 = 0x0F00_0000

    /// `mask` must pass `problem(with:)`.
    public init(mask: UInt32 = Marks.defaultMask) {
        precondition(Self.problem(with: mask) == nil, "invalid mark mask")
        self.mask = mask
        let shift = UInt32(mask.trailingZeroBitCount)
        (allow, inspect, reject, queue, dns, bypass) = (1 << shift, 2 << shift, 3 << shift, 4 << shift, 5 << shift, 6 << shift)
    }

    /// Why `mask` cannot hold Loupe's marks, or nil if it can.
    public static func problem(with mask: UInt32) -> String? {
        guard mask != 0 else { return "the mark mask is empty" }
        let shift = mask.trailingZeroBitCount
        guard shift <= 29, (UInt32(0b111) << shift) & ~mask == 0 else {
            return "the mark mask needs at least three adjacent bits from its lowest one (Loupe has six marks)"
        }
        return nil
    }

    /// `mark` with Loupe's field set to `value` (0 clears it); other bits kept.
    public func setting(_ value: UInt32, in mark: UInt32) -> UInt32 { mark & ~mask | value }

    /// The mark a queue verdict gives a packet queued with `original`: Loupe's field set to
    /// `value`, other bits kept — except an allowed packet another tool marked (a socket's
    /// SO_MARK: WireGuard's 0xca6c, Istio's 0x539), which leaves with exactly its own mark: the
    /// kernel re-routes a queued packet whose mark changed, by the new mark, and rules matching
    /// the whole value would miss it. Its flow is then not kept in the conntrack mark: a TCP
    /// flow is past its first packet anyway; UDP packets before an answer come back, and the
    /// repeat table answers them.
    public func verdict(_ value: UInt32, forPacketMarked original: UInt32) -> UInt32 {
        setting(value == allow && original & ~mask != 0 ? 0 : value, in: original)
    }
}

/// How the queue rule reaches the kernel: native nft `queue`, or (kernels without nft_queue)
/// an iptables-nft chain of Loupe's own; everything else stays native either way.
public enum QueueBackend: String, Sendable {
    case nft
    case iptablesNFT = "iptables-nft"
}

/// What the diversion ruleset is built from.
public struct DivertSettings: Sendable, Equatable {
    public var table = "loupe"
    public var marks = Marks()
    /// Queues for first packets; more than one spreads flows over them (one thread each).
    public var queues: ClosedRange<UInt16> = 0...0
    /// Queue for DNS answers (snooping; always accepted).
    public var dnsQueue: UInt16 = 100
    /// Where the inspecting proxy listens (redirect target, IPv4 and IPv6).
    public var proxyPort: UInt16 = 8443
    /// Fail closed: no queue bypass, no kernel fail-open; a dead agent blocks new flows.
    public var failClosed = false
    /// Also decide forwarded traffic (prerouting), for a gateway.
    public var gateway = false
    public var backend: QueueBackend = .nft

    public init() {}

    /// The iptables chain name used by the iptables-nft backend.
    public var iptablesChain: String { "LOUPE-QUEUE" }
}

/// The ruleset, as text for `nft -f` (and `iptables-nft-restore`). Pure: settings in, text out.
///
/// Flow of a new outgoing flow: `classify` (priority -160) accepts Loupe's own mark, loopback and
/// decided flows (conntrack mark), and marks the first packet of a new TCP/UDP flow for the
/// queue; the queue (priority -150) answers with a verdict mark; `verdict` (-140) rejects,
/// or keeps the verdict in the conntrack mark so the flow never revisits the queue; the nat chain
/// (-100) redirects inspected TCP to the proxy.
public struct Ruleset: Sendable {
    public var settings: DivertSettings

    public init(_ settings: DivertSettings) { self.settings = settings }

    func hex(_ v: UInt32) -> String { "0x" + String(v, radix: 16) }

    /// Matches Loupe's field of the packet mark (`meta`) or conntrack mark (`ct`) against `values`.
    func field(_ source: String, _ values: UInt32...) -> String {
        let m = settings.marks
        return values.count == 1 ? "\(source) mark & \(hex(m.mask)) == \(hex(values[0]))"
            : "\(source) mark & \(hex(m.mask)) { \(values.map(hex).joined(separator: ", ")) }"
    }

    /// Sets Loupe's field of a mark to `value`, keeping the other bits.
    func set(_ source: String, _ value: UInt32) -> String {
        "\(source) mark set \(source) mark & \(hex(~settings.marks.mask))" + (value == 0 ? "" : " | \(hex(value))")
    }

    /// One base chain of Loupe's table: `rules` (each line indented, newline-ended) on `hook`.
    struct BaseChain {
        let name: String
        let type: String
        let text: String

        init(_ name: String, hook: String, priority: Int, type: String = "filter", _ rules: String) {
            self.name = name
            self.type = type
            text = "    chain \(name) {\n        type \(type) hook \(hook) priority \(priority); policy accept;\n" + rules + "    }\n"
        }
    }

    /// Replaces Loupe's table atomically (one transaction: create-if-missing, delete, define).
    public var nftScript: String {
        let s = settings
        return """
        # Loupe's diversion ruleset (generated; replaced as a whole on every start and reload).
        table inet \(s.table)
        delete table inet \(s.table)
        table inet \(s.table) {

        """ + baseChains.map(\.text).joined() + "}\n"
    }

    /// Every base chain of the table, in order: the same list defines and (draining) removes them.
    var baseChains: [BaseChain] {
        let s = settings, m = s.marks
        func classify(_ hook: String) -> String {
            var rules = """
                    \(field("meta", m.bypass)) accept comment "Loupe's own sockets"

            """
            if hook == "output" {
                rules += "        oif \"lo\" accept comment \"local traffic stays local\"\n"
            } else {
                rules += "        fib daddr type local accept comment \"only forwarded traffic\"\n"
            }
            rules += """
                    \(field("ct", m.allow, m.inspect)) accept comment "decided flows never revisit the queue"
                    ct state new meta l4proto { tcp, udp } \(set("meta", m.queue))

            """
            return rules
        }
        let queueFlags = s.failClosed ? "" : "bypass"
        func queueRule(_ mark: UInt32, _ queues: ClosedRange<UInt16>) -> String {
            let numbers = queues.count == 1 ? "\(queues.lowerBound)" : "\(queues.lowerBound)-\(queues.upperBound)"
            let flags = [queueFlags, queues.count > 1 ? "fanout" : ""].filter { !$0.isEmpty }.joined(separator: ",")
            return "        \(field("meta", mark)) queue \(flags.isEmpty ? "" : "flags \(flags) ")to \(numbers)\n"
        }
        // Allow and inspect are kept in the conntrack mark, so the flow never revisits the queue.
        let keepVerdict = "        \(field("meta", m.allow)) \(set("ct", m.allow))\n        \(field("meta", m.inspect)) \(set("ct", m.inspect))\n"
        let reject = "        \(field("meta", m.reject)) meta l4proto tcp reject with tcp reset\n        \(field("meta", m.reject)) reject with icmpx admin-prohibited\n"
        let verdict = "        \(field("meta", m.queue)) \(set("meta", 0)) comment \"queue bypassed: no agent, fail open\"\n" + reject + keepVerdict
        let redirect = "        \(field("meta", m.inspect)) meta l4proto tcp redirect to :\(s.proxyPort)\n"

        var chains = [BaseChain("output_classify", hook: "output", priority: -160, classify("output"))]
        if s.backend == .nft {
            chains.append(BaseChain("output_queue", hook: "output", priority: -150, queueRule(m.queue, s.queues)))
        }
        chains.append(BaseChain("output_verdict", hook: "output", priority: -140, verdict))
        chains.append(BaseChain("output_nat", hook: "output", priority: -100, type: "nat", redirect))
        // DNS answers to this host (and to its local resolver, over lo) are snooped for names;
        // on a gateway, also those it forwards to the hosts behind it.
        let markAnswers = "        udp sport 53 \(set("meta", m.dns))\n"
            + "        tcp sport 53 \(set("meta", m.dns)) comment \"answers over TCP, reassembled\"\n"
        let queueAnswers = queueRule(m.dns, s.dnsQueue...s.dnsQueue)
        chains.append(BaseChain("input_dns", hook: "input", priority: -160, markAnswers))
        if s.backend == .nft {
            chains.append(BaseChain("input_queue", hook: "input", priority: -150, queueAnswers))
        }
        if s.gateway {
            chains.append(BaseChain("prerouting_classify", hook: "prerouting", priority: -160, classify("prerouting")))
            if s.backend == .nft {
                chains.append(BaseChain("prerouting_queue", hook: "prerouting", priority: -150, queueRule(m.queue, s.queues)))
            }
            // Reject is not allowed in prerouting: keep the mark there, reject in forward.
            chains.append(BaseChain("prerouting_verdict", hook: "prerouting", priority: -140, "        \(field("meta", m.queue)) \(set("meta", 0))\n" + keepVerdict))
            chains.append(BaseChain("forward_verdict", hook: "forward", priority: -140, reject))
            chains.append(BaseChain("prerouting_nat", hook: "prerouting", priority: -100, type: "nat", redirect))
            chains.append(BaseChain("forward_dns", hook: "forward", priority: -160, markAnswers))
            if s.backend == .nft {
                chains.append(BaseChain("forward_queue", hook: "forward", priority: -150, queueAnswers))
            }
        }
        return chains
    }

    /// What stays while the agent drains on its way out: Loupe's table with only its nat chains.
    /// New flows are no longer decided; the redirected connections still open keep being
    /// translated — the nat chains are never unregistered meanwhile (replacing the table would,
    /// and the kernel translates only while a nat chain is registered: those connections would
    /// be reset).
    public var nftDrainingScript: String {
        baseChains.filter { $0.type != "nat" }.map { "delete chain inet \(settings.table) \($0.name)\n" }.joined()
    }

    /// Removes Loupe's table (create-if-missing first, so removing twice is not an error).
    public var nftRemoveScript: String { "table inet \(settings.table)\ndelete table inet \(settings.table)\n" }

    /// For the iptables-nft backend: Loupe's chain in the mangle table (priority -150, between
    /// classify and verdict) holding only the queue rules, for `iptables-nft-restore --noflush`
    /// and `ip6tables-nft-restore --noflush`.
    public var iptablesRestoreScript: String {
        let s = settings, m = s.marks
        let bypass = s.failClosed ? "" : " --queue-bypass"
        let queues = s.queues.count == 1 ? "--queue-num \(s.queues.lowerBound)" : "--queue-balance \(s.queues.lowerBound):\(s.queues.upperBound)"
        var out = "*mangle\n:\(s.iptablesChain) - [0:0]\n"
        out += "-A \(s.iptablesChain) -m mark --mark \(hex(m.queue))/\(hex(m.mask)) -j NFQUEUE \(queues)\(bypass)\n"
        out += "-A \(s.iptablesChain) -m mark --mark \(hex(m.dns))/\(hex(m.mask)) -j NFQUEUE --queue-num \(s.dnsQueue)\(bypass)\n"
        out += "-I OUTPUT 1 -j \(s.iptablesChain)\n-I INPUT 1 -j \(s.iptablesChain)\n"
        if s.gateway { out += "-I PREROUTING 1 -j \(s.iptablesChain)\n-I FORWARD 1 -j \(s.iptablesChain)\n" }
        out += "COMMIT\n"
        return out
    }

    /// A throwaway table that loads only where the kernel has native nft `queue`.
    public static func nativeQueueProbe(table: String) -> String {
        "table inet \(table) {\n    chain probe {\n        type filter hook output priority 0; policy accept;\n        meta mark 0x1 queue flags bypass to 0\n    }\n}\n"
    }
}
