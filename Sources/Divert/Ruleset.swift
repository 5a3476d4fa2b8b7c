/// Packet marks shared by the ruleset, the queue verdicts and Loupe's own sockets. One value per
/// meaning (not bits): the ruleset compares whole marks.
public struct Marks: Sendable, Equatable {
    /// Loupe's own sockets (proxy upstreams, probes): accepted before anything else.
    public var bypass: UInt32 = 0x4C55
    /// A new flow waiting for its connect verdict.
    public var queue: UInt32 = 0x4C51
    /// A DNS answer to snoop.
    public var dns: UInt32 = 0x4C44
    /// Verdicts, set by the queue and kept in the conntrack mark for the flow's life.
    public var allow: UInt32 = 0x4C41
    public var inspect: UInt32 = 0x4C49
    public var reject: UInt32 = 0x4C52

    public init() {}
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

    /// Replaces Loupe's table atomically (one transaction: create-if-missing, delete, define).
    public var nftScript: String {
        let s = settings, m = s.marks
        var out = """
        # Loupe's diversion ruleset (generated; replaced as a whole on every start and reload).
        table inet \(s.table)
        delete table inet \(s.table)
        table inet \(s.table) {

        """
        func classify(_ hook: String) -> String {
            var rules = """
                    meta mark \(hex(m.bypass)) accept comment "Loupe's own sockets"

            """
            if hook == "output" {
                rules += "        oif \"lo\" accept comment \"local traffic stays local\"\n"
            } else {
                rules += "        fib daddr type local accept comment \"only forwarded traffic\"\n"
            }
            rules += """
                    ct mark { \(hex(m.allow)), \(hex(m.inspect)) } accept comment "decided flows never revisit the queue"
                    ct state new meta l4proto { tcp, udp } meta mark set \(hex(m.queue))

            """
            return rules
        }
        let queueFlags = s.failClosed ? "" : "bypass"
        func queueRule(_ mark: UInt32, _ queues: ClosedRange<UInt16>) -> String {
            let numbers = queues.count == 1 ? "\(queues.lowerBound)" : "\(queues.lowerBound)-\(queues.upperBound)"
            let flags = [queueFlags, queues.count > 1 ? "fanout" : ""].filter { !$0.isEmpty }.joined(separator: ",")
            return "        meta mark \(hex(mark)) queue \(flags.isEmpty ? "" : "flags \(flags) ")to \(numbers)\n"
        }
        let verdict = """
                meta mark \(hex(m.queue)) meta mark set 0 comment "queue bypassed: no agent, fail open"
                meta mark \(hex(m.reject)) meta l4proto tcp reject with tcp reset
                meta mark \(hex(m.reject)) reject with icmpx admin-prohibited
                meta mark { \(hex(m.allow)), \(hex(m.inspect)) } ct mark set meta mark

        """
        let redirect = "        meta mark \(hex(m.inspect)) meta l4proto tcp redirect to :\(s.proxyPort)\n"

        out += "    chain output_classify {\n        type filter hook output priority -160; policy accept;\n" + classify("output") + "    }\n"
        if s.backend == .nft {
            out += "    chain output_queue {\n        type filter hook output priority -150; policy accept;\n" + queueRule(m.queue, s.queues) + "    }\n"
        }
        out += "    chain output_verdict {\n        type filter hook output priority -140; policy accept;\n" + verdict + "    }\n"
        out += "    chain output_nat {\n        type nat hook output priority -100; policy accept;\n" + redirect + "    }\n"
        // DNS answers to this host (and to its local resolver, over lo) are snooped for names.
        out += "    chain input_dns {\n        type filter hook input priority -160; policy accept;\n"
        out += "        udp sport 53 meta mark set \(hex(m.dns))\n    }\n"
        if s.backend == .nft {
            out += "    chain input_queue {\n        type filter hook input priority -150; policy accept;\n" + queueRule(m.dns, s.dnsQueue...s.dnsQueue) + "    }\n"
        }
        if s.gateway {
            out += "    chain prerouting_classify {\n        type filter hook prerouting priority -160; policy accept;\n" + classify("prerouting") + "    }\n"
            if s.backend == .nft {
                out += "    chain prerouting_queue {\n        type filter hook prerouting priority -150; policy accept;\n" + queueRule(m.queue, s.queues) + "    }\n"
            }
            // Reject is not allowed in prerouting: keep the mark there, reject in forward.
            out += "    chain prerouting_verdict {\n        type filter hook prerouting priority -140; policy accept;\n"
            out += "        meta mark \(hex(m.queue)) meta mark set 0\n"
            out += "        meta mark { \(hex(m.allow)), \(hex(m.inspect)) } ct mark set meta mark\n    }\n"
            out += "    chain forward_verdict {\n        type filter hook forward priority -140; policy accept;\n"
            out += "        meta mark \(hex(m.reject)) meta l4proto tcp reject with tcp reset\n"
            out += "        meta mark \(hex(m.reject)) reject with icmpx admin-prohibited\n    }\n"
            out += "    chain prerouting_nat {\n        type nat hook prerouting priority -100; policy accept;\n" + redirect + "    }\n"
        }
        out += "}\n"
        return out
    }

    /// What stays while the agent drains on its way out: Loupe's table with only its nat chains.
    /// New flows are no longer decided; the redirected connections still open keep being
    /// translated — the nat chains are never unregistered meanwhile (replacing the table would,
    /// and the kernel translates only while a nat chain is registered: those connections would
    /// be reset).
    public var nftDrainingScript: String {
        let s = settings
        var chains = ["output_classify", "output_verdict", "input_dns"]
        if s.backend == .nft { chains += ["output_queue", "input_queue"] }
        if s.gateway {
            chains += ["prerouting_classify", "prerouting_verdict", "forward_verdict"]
            if s.backend == .nft { chains.append("prerouting_queue") }
        }
        return chains.map { "delete chain inet \(s.table) \($0)\n" }.joined()
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
        out += "-A \(s.iptablesChain) -m mark --mark \(hex(m.queue)) -j NFQUEUE \(queues)\(bypass)\n"
        out += "-A \(s.iptablesChain) -m mark --mark \(hex(m.dns)) -j NFQUEUE --queue-num \(s.dnsQueue)\(bypass)\n"
        out += "-I OUTPUT 1 -j \(s.iptablesChain)\n-I INPUT 1 -j \(s.iptablesChain)\n"
        if s.gateway { out += "-I PREROUTING 1 -j \(s.iptablesChain)\n" }
        out += "COMMIT\n"
        return out
    }

    /// A throwaway table that loads only where the kernel has native nft `queue`.
    public static func nativeQueueProbe(table: String) -> String {
        "table inet \(table) {\n    chain probe {\n        type filter hook output priority 0; policy accept;\n        meta mark 0x1 queue flags bypass to 0\n    }\n}\n"
    }
}
