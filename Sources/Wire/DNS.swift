/// A DNS message as far as Loupe needs it: which names the answers give which addresses.
public struct DNSMessage: Sendable, Equatable {
    public struct Record: Sendable, Equatable {
        public enum Data: Sendable, Equatable {
            case a([UInt8])
            case aaaa([UInt8])
            case cname(String)
            case other(type: UInt16)
        }
        public var name: String
        public var ttl: UInt32
        public var data: Data
    }

    public var id: UInt16
    public var isResponse: Bool
    public var rcode: UInt8
    public var questions: [String]
    public var answers: [Record]

    public static func parse(_ bytes: ArraySlice<UInt8>) throws(WireError) -> DNSMessage {
        var r = ByteReader(bytes)
        let id = try r.u16("DNS id")
        let flags = try r.u16("DNS flags")
        let qd = Int(try r.u16("QDCOUNT")), an = Int(try r.u16("ANCOUNT"))
        _ = try r.u16("NSCOUNT")
        _ = try r.u16("ARCOUNT")
        // Each question takes at least 5 bytes, each record 11: counts beyond that are lies.
        guard qd * 5 + an * 11 <= r.remaining else { throw .malformed("record counts exceed the message") }
        var questions: [String] = []
        for _ in 0..<qd {
            questions.append(try name(&r, message: bytes))
            try r.skip(4, "question type and class")
        }
        var answers: [Record] = []
        for _ in 0..<an {
            let owner = try name(&r, message: bytes)
            let type = try r.u16("record type")
            _ = try r.u16("record class")
            let ttl = try r.u32("TTL")
            let length = Int(try r.u16("RDLENGTH"))
            let rdataStart = r.position
            var rdata = try r.sub(length, "RDATA")
            let data: Record.Data
            switch type {
            case 1:
                guard length == 4 else { throw .malformed("A record of \(length) bytes") }
                data = .a(Array(rdata.rest()))
            case 28:
                guard length == 16 else { throw .malformed("AAAA record of \(length) bytes") }
                data = .aaaa(Array(rdata.rest()))
            case 5:
                // The target may point back into the message: read it with the whole message.
                var target = ByteReader(bytes[rdataStart...])
                data = .cname(try name(&target, message: bytes))
            default:
                data = .other(type: type)
            }
            answers.append(Record(name: owner, ttl: ttl, data: data))
        }
        return DNSMessage(id: id, isResponse: flags & 0x8000 != 0, rcode: UInt8(flags & 0x000F), questions: questions, answers: answers)
    }

    /// A (possibly compressed) domain name, lowercased, without the trailing dot.
    static func name(_ r: inout ByteReader, message: ArraySlice<UInt8>) throws(WireError) -> String {
        var labels: [String] = []
        var cursor = r
        var jumped = false
        var jumps = 0
        var total = 0
        while true {
            let length = try cursor.u8("label length")
            if length == 0 { break }
            if length & 0xC0 == 0xC0 {
                let offset = Int(length & 0x3F) << 8 | Int(try cursor.u8("compression pointer"))
                jumps += 1
                guard jumps <= 32, offset < message.count else { throw .malformed("compression pointer loop or out of range") }
                if !jumped { r = cursor; jumped = true }
                cursor = ByteReader(message[(message.startIndex + offset)...])
                continue
            }
            guard length & 0xC0 == 0 else { throw .malformed("label type \(length >> 6)") }
            let label = try cursor.take(Int(length), "label")
            total += Int(length) + 1
            guard total <= 255 else { throw .malformed("name longer than 255 bytes") }
            labels.append(String(decoding: label, as: UTF8.self).lowercased())
        }
        if !jumped { r = cursor }
        return labels.joined(separator: ".")
    }

    /// For each answered address, the names that lead to it: the owner of the A/AAAA record and
    /// every name whose CNAME chain ends there (so a policy on the asked-for name applies).
    public var namesByAddress: [(address: [UInt8], names: [String], ttl: UInt32)] {
        var aliasesOf: [String: [String]] = [:]  // target -> names pointing at it
        for record in answers { if case .cname(let target) = record.data { aliasesOf[target, default: []].append(record.name) } }
        var out: [(address: [UInt8], names: [String], ttl: UInt32)] = []
        for record in answers {
            let address: [UInt8]
            switch record.data {
            case .a(let a), .aaaa(let a): address = a
            default: continue
            }
            var names = [record.name]
            var frontier = [record.name]
            while let next = frontier.popLast(), names.count < 32 {
                for alias in aliasesOf[next] ?? [] where !names.contains(alias) {
                    names.append(alias)
                    frontier.append(alias)
                }
            }
            out.append((address, names, record.ttl))
        }
        return out
    }
}
