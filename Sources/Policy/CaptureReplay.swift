import Wire

/// Rebuilds flow facts from captured packets, as the live agent would know them: the first
/// packet of each flow, the DNS answers seen before it (UDP or TCP, honouring TTLs), and the ClientHello's
/// SNI and ALPN however TCP split it. Pure: packets in, flows out.
public struct ReplayedFlow: Sendable {
    public var facts: FlowFacts
    public var firstSeen: Double
    /// Whether a ClientHello was seen (stage hello applies).
    public var sawHello: Bool
    /// Why the first client bytes were not a usable ClientHello, if they were not.
    public var helloProblem: String?
}

public enum CaptureReplay {
    struct Key: Hashable {
        var proto: UInt8
        var a: [UInt8], aPort: UInt16, b: [UInt8], bPort: UInt16
    }

    struct TCPState {
        var nextSequence: UInt32?
        var pending: [UInt32: ArraySlice<UInt8>] = [:]
        var reader = ClientHelloReader()
    }

    public static func flows(_ packets: [CapturedPacket]) -> [ReplayedFlow] {
        var flows: [ReplayedFlow] = []
        var index: [Key: Int] = [:]
        var tcp: [Int: TCPState] = [:]
        var dns = NameCache()
        var dnsOverTCP = DNSStreams<Key>()
        func names(for address: [UInt8], at time: Double) -> [String] { dns.names(for: address, at: time) }

        for packet in packets {
            guard let ip = try? IPPacket.parse(packet.ip), !ip.isLaterFragment else { continue }
            switch ip.transport {
            case 17:
                guard let udp = try? UDPDatagram.parse(ip.payload) else { continue }
                if udp.sourcePort == 53, let message = try? DNSMessage.parse(udp.payload) {
                    dns.learn(message, at: packet.timestamp)
                }
                let forward = Key(proto: 17, a: ip.source, aPort: udp.sourcePort, b: ip.destination, bPort: udp.destinationPort)
                let reverse = Key(proto: 17, a: ip.destination, aPort: udp.destinationPort, b: ip.source, bPort: udp.sourcePort)
                if index[forward] == nil && index[reverse] == nil {
                    index[forward] = flows.count
                    flows.append(newFlow(.udp, ip, udp.sourcePort, udp.destinationPort, packet.timestamp, names(for: ip.destination, at: packet.timestamp)))
                }
            case 6:
                guard let segment = try? TCPSegment.parse(ip.payload) else { continue }
                // Answers over TCP, framed back together as the live agent does.
                if segment.isFromDNSServer {
                    let stream = Key(proto: 6, a: ip.source, aPort: 53, b: ip.destination, bPort: segment.destinationPort)
                    for bytes in dnsOverTCP.feed(segment, key: stream) {
                        if let message = try? DNSMessage.parse(bytes[...]) { dns.learn(message, at: packet.timestamp) }
                    }
                    continue
                }
                let forward = Key(proto: 6, a: ip.source, aPort: segment.sourcePort, b: ip.destination, bPort: segment.destinationPort)
                if segment.isSYN && !segment.isACK && index[forward] == nil {
                    index[forward] = flows.count
                    tcp[flows.count] = TCPState(nextSequence: segment.sequence &+ 1)
                    flows.append(newFlow(.tcp, ip, segment.sourcePort, segment.destinationPort, packet.timestamp, names(for: ip.destination, at: packet.timestamp)))
                    continue
                }
                // Client-to-server bytes of a known flow feed its ClientHello reader.
                guard let i = index[forward], var state = tcp[i], state.reader.result == .needMore, !segment.payload.isEmpty,
                      let expected = state.nextSequence else { continue }
                state.pending[segment.sequence] = segment.payload
                var next = expected
                while let data = state.pending.removeValue(forKey: next) {
                    _ = state.reader.feed(data)
                    next = next &+ UInt32(data.count)
                }
                // Retransmissions that overlap what was consumed are dropped.
                state.pending = state.pending.filter { Int32(bitPattern: $0.key &- next) > 0 }
                state.nextSequence = next
                switch state.reader.result {
                case .hello(let hello):
                    flows[i].sawHello = true
                    flows[i].facts.tls = true
                    flows[i].facts.sni = hello.serverName
                    flows[i].facts.alpn = hello.alpn
                case .notTLS:  // decided at hello like the proxy does, by rules on `tls`
                    flows[i].sawHello = true
                    flows[i].facts.tls = false
                    flows[i].helloProblem = "the first bytes are not TLS"
                case .malformed(let error): flows[i].helloProblem = "\(error)"
                case .needMore: break
                }
                tcp[i] = state
            default:
                continue
            }
        }
        return flows
    }

    static func newFlow(_ proto: FlowFacts.Proto, _ ip: IPPacket, _ sport: UInt16, _ dport: UInt16, _ time: Double, _ names: [String]) -> ReplayedFlow {
        var facts = FlowFacts()
        facts.proto = proto
        facts.src = FlowFacts.Endpoint(address: ip.source, port: sport)
        facts.dst = FlowFacts.Endpoint(address: ip.destination, port: dport)
        facts.names = names
        return ReplayedFlow(facts: facts, firstSeen: time, sawHello: false, helloProblem: nil)
    }

    /// A corpus that freezes today's decisions as tomorrow's expectations.
    public static func corpus(_ flows: [ReplayedFlow], policy: Policy, source: String) -> String {
        var out = "# Frozen from \(source) by `loupe verdict replay --emit-corpus`: today's decisions as expectations.\n"
        for flow in flows {
            let f = flow.facts
            let decisions = FlowOutcome.walk(f, policy: policy, through: flow.sawHello ? .hello : .connect)
            out += "\n[[flow]]\n"
            out += "name   = \(quoted(label(flow)))\n"
            out += "proto  = \(quoted(f.proto.rawValue))\n"
            if let src = f.src { out += "src    = \(quoted(src.description))\n" }
            if let dst = f.dst { out += "dst    = \(quoted(dst.description))\n" }
            if !f.names.isEmpty { out += "names  = [\(f.names.map(quoted).joined(separator: ", "))]\n" }
            if f.tls == false { out += "tls    = false\n" }
            if let sni = f.sni { out += "sni    = \(quoted(sni))\n" }
            if !f.alpn.isEmpty { out += "alpn   = [\(f.alpn.map(quoted).joined(separator: ", "))]\n" }
            out += "expect = { \(decisions.map { "\($0.stage.rawValue) = \(quoted($0.verdict.rawValue))" }.joined(separator: ", ")) }\n"
        }
        return out
    }

    public static func label(_ flow: ReplayedFlow) -> String {
        let f = flow.facts
        var text = "\(f.proto.rawValue) \(f.src?.description ?? "?") -> \(f.dst?.description ?? "?")"
        if let sni = f.sni { text += " sni \(sni)" } else if let name = f.names.first { text += " (\(name))" }
        return text
    }

    /// A TOML basic string.
    static func quoted(_ s: String) -> String { JSONLine.quoted(s) }
}
