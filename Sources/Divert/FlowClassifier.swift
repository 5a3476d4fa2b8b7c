import Policy
import Wire

/// What a queued packet is, read from its IP header: the first packet of a new flow, a DNS
/// answer to snoop, or something Loupe does not decide. Pure.
public enum QueuedPacketKind: Sendable, Equatable {
    case newFlow(FlowFacts)
    case dnsAnswer(DNSMessage)
    /// A segment from a DNS server over TCP (answers arrive in a stream; see DNSStreams).
    case dnsSegment(TCPSegment, from: FlowFacts.Endpoint, to: FlowFacts.Endpoint)
    case other(String)
}

public enum FlowClassifier {
    public static func classify(_ bytes: ArraySlice<UInt8>, uid: UInt32?, gid: UInt32?) -> QueuedPacketKind {
        let ip: IPPacket
        do { ip = try IPPacket.parse(bytes) } catch { return .other("not an IP packet: \(error)") }
        if ip.isLaterFragment { return .other("a later fragment") }
        var facts = FlowFacts()
        facts.uid = uid
        facts.gid = gid
        switch ip.transport {
        case 6:
            guard let tcp = try? TCPSegment.parse(ip.payload) else { return .other("truncated TCP header") }
            if tcp.isFromDNSServer {
                return .dnsSegment(tcp, from: FlowFacts.Endpoint(address: ip.source, port: tcp.sourcePort),
                                   to: FlowFacts.Endpoint(address: ip.destination, port: tcp.destinationPort))
            }
            facts.proto = .tcp
            facts.src = FlowFacts.Endpoint(address: ip.source, port: tcp.sourcePort)
            facts.dst = FlowFacts.Endpoint(address: ip.destination, port: tcp.destinationPort)
        case 17:
            guard let udp = try? UDPDatagram.parse(ip.payload) else { return .other("truncated UDP header") }
            if udp.sourcePort == 53, let message = try? DNSMessage.parse(udp.payload), message.isResponse {
                return .dnsAnswer(message)
            }
            facts.proto = .udp
            facts.src = FlowFacts.Endpoint(address: ip.source, port: udp.sourcePort)
            facts.dst = FlowFacts.Endpoint(address: ip.destination, port: udp.destinationPort)
        default:
            return .other("transport protocol \(ip.transport)")
        }
        return .newFlow(facts)
    }
}

/// The kernel-facing answer for one packet.
public struct PacketVerdict: Sendable, Equatable {
    public var accept: Bool
    /// Replaces the packet's mark when set.
    public var mark: UInt32?

    public static func accept(mark: UInt32?) -> PacketVerdict { PacketVerdict(accept: true, mark: mark) }
    public static let drop = PacketVerdict(accept: false, mark: nil)
}

/// Stage connect's decision turned into a packet verdict. Pure.
public struct ConnectOutcome: Sendable, Equatable {
    public var decision: Decision
    public var packet: PacketVerdict
    /// What Loupe did that the decision alone does not say (QUIC turned into a block).
    public var note: String?

    public static func of(_ decision: Decision, facts: FlowFacts, marks: Marks) -> ConnectOutcome {
        switch decision.verdict {
        case .inspect where facts.proto == .udp:
            // The proxy speaks TCP: QUIC to an inspected destination is refused so the client falls
            // back to TCP, where inspection applies; other UDP cannot be inspected and passes.
            if facts.dst?.port == 443 {
                var blocked = decision
                blocked.verdict = .block
                blocked.blockMode = .reject
                return ConnectOutcome(decision: blocked, packet: .accept(mark: marks.reject), note: "QUIC to an inspected destination is refused (TCP fallback)")
            }
            return ConnectOutcome(decision: decision, packet: .accept(mark: marks.allow), note: "UDP cannot be inspected; allowed")
        case .inspect:
            return ConnectOutcome(decision: decision, packet: .accept(mark: marks.inspect), note: nil)
        case .block:
            let packet: PacketVerdict = decision.blockMode == .drop ? .drop : .accept(mark: marks.reject)
            return ConnectOutcome(decision: decision, packet: packet, note: nil)
        default:
            return ConnectOutcome(decision: decision, packet: .accept(mark: marks.allow), note: nil)
        }
    }
}
