import Foundation
import TOML
import Wire

/// A loaded policy: per-stage defaults, named host lists and ordered rules. Pure: the same
/// engine decides live and in `loupe verdict test`, so a passing corpus proves production.
public struct Policy: Sendable {
    public let defaults: [Stage: Verdict]
    public var defaultBlockMode: BlockMode
    public var lists: [String: HostSet]
    public private(set) var rules: [Rule] = []
    /// `[auto_splice] ttl`: hosts whose clients abort Loupe's handshake (pinning, mTLS) are
    /// spliced for this many seconds. nil: never learn.
    public var autoSpliceTTL: Double?
    /// Whether any rule looks at the executable: the agent resolves processes only then, as
    /// that costs a /proc scan per new socket. Known at load, not per packet.
    public let usesExecutable: Bool
    /// By `Stage.ordinal`.
    private var rulesByStage: [[Rule]] = []
    private var indexByStage: [PortIndex] = []
    private var defaultDecisions: [Decision?] = []
    private var ruleByName: [String: Rule] = [:]

    public init(defaults: [Stage: Verdict], defaultBlockMode: BlockMode = .reject, lists: [String: HostSet] = [:], rules: [Rule]) {
        self.defaults = defaults
        self.defaultBlockMode = defaultBlockMode
        self.lists = lists
        self.rules = rules
        usesExecutable = rules.contains { $0.conditions.contains { if case .exe = $0 { true } else { false } } }
        // The first rule of a name wins, as a linear search would find it.
        ruleByName = Dictionary(rules.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for stage in Stage.allCases {
            let staged = rules.filter { $0.stage == stage }
            rulesByStage.append(staged)
            indexByStage.append(PortIndex(staged))
            defaultDecisions.append(defaults[stage].map { verdict in
                Decision(stage: stage, verdict: verdict, rule: Decision.defaultRule, reason: "no rule matched; the \(stage.rawValue) default",
                         blockMode: verdict == .block ? defaultBlockMode : nil)
            })
        }
    }

    /// First matching rule of `stage`, in file order; otherwise the stage's default. Rules named
    /// in `excluding` are passed over (a name-based splice whose name did not prove true).
    public func decide(_ stage: Stage, _ facts: FlowFacts, excluding: Set<String> = []) -> Decision {
        Self.opaqueIfNotTLS(firstMatch(stage, facts, excluding: excluding) ?? defaultDecisions[stage.ordinal]!, facts)
    }

    private func firstMatch(_ stage: Stage, _ facts: FlowFacts, excluding: Set<String>) -> Decision? {
        let staged = rulesByStage[stage.ordinal]
        for i in indexByStage[stage.ordinal].candidates(facts.dst?.port) where (excluding.isEmpty || !excluding.contains(staged[i].name)) && staged[i].matches(facts) {
            let rule = staged[i]
            return Decision(stage: stage, verdict: rule.action, rule: rule.name, reason: rule.matchReason,
                            blockMode: rule.action == .block ? (rule.blockMode ?? defaultBlockMode) : nil)
        }
        return nil
    }

    /// What is not TLS cannot be bumped: a bump at hello relays it as opaque bytes (a splice).
    static func opaqueIfNotTLS(_ decision: Decision, _ facts: FlowFacts) -> Decision {
        guard decision.stage == .hello, decision.verdict == .bump, facts.tls == false else { return decision }
        var spliced = decision
        spliced.verdict = .splice
        spliced.reason += " (not TLS: relayed as opaque TCP)"
        return spliced
    }

    /// What at the request stage could still block a request of a flow whose connect and hello
    /// facts are `facts` — a block rule whose conditions known by then hold (method and path
    /// are not known yet; a URL rule only for the flow's name), or a blocking request default —
    /// named for a log line; nil when nothing could. Splicing such a flow would let past what
    /// the policy means to inspect, so no splice is learnt for it.
    public func requestBlock(couldApplyTo facts: FlowFacts) -> String? {
        if defaults[.request] == .block { return "the request default (block)" }
        let rule = rulesByStage[Stage.request.ordinal].first { rule in
            rule.action == .block && rule.conditions.allSatisfy { $0.couldHoldBeforeRequest(facts) }
        }
        return rule.map { "request rule \($0.name)" }
    }

    /// Looked up per connection (hello decisions, client identities): a dictionary, not a scan.
    public func rule(named name: String) -> Rule? { ruleByName[name] }

    /// The decision plus every rule considered on the way, with why each did not match.
    public func explain(_ stage: Stage, _ facts: FlowFacts) -> (decision: Decision, considered: [(rule: Rule, mismatch: String?)]) {
        var considered: [(Rule, String?)] = []
        for rule in rulesByStage[stage.ordinal] {
            let why = rule.mismatch(facts)
            considered.append((rule, why))
            if why == nil { break }
        }
        return (decide(stage, facts), considered)
    }
}

/// Rules by destination port, so a flow only walks the rules that could match it (in file
/// order): a 10,000-rule policy costs what its few relevant rules cost.
struct PortIndex: Sendable {
    var byPort: [UInt16: [Int]] = [:]
    /// Rules without a (small enough) dst_port condition: candidates for every flow.
    var anyPort: [Int] = []
    var count = 0

    static let maximumExpandedPorts = 1024

    init(_ rules: [Rule]) {
        count = rules.count
        for (i, rule) in rules.enumerated() {
            let ranges = rule.conditions.compactMap { if case .dstPort(let r) = $0 { r } else { nil } }.first
            guard let ranges, ranges.reduce(0, { $0 + $1.count }) <= Self.maximumExpandedPorts else {
                anyPort.append(i)
                continue
            }
            for range in ranges { for port in range { byPort[port, default: []].append(i) } }
        }
    }

    /// Candidate rule indices in ascending (file) order.
    func candidates(_ port: UInt16?) -> [Int] {
        guard let port, let specific = byPort[port] else { return port == nil ? Array(0..<count) : anyPort }
        if anyPort.isEmpty { return specific }
        var merged: [Int] = []
        merged.reserveCapacity(specific.count + anyPort.count)
        var a = 0, b = 0
        while a < specific.count || b < anyPort.count {
            if b == anyPort.count || (a < specific.count && specific[a] < anyPort[b]) { merged.append(specific[a]); a += 1 } else { merged.append(anyPort[b]); b += 1 }
        }
        return merged
    }
}

// MARK: loading

extension Policy {
    /// Reads a policy file; list files are read relative to it.
    public static func load(path: String) throws(ConfigError) -> Policy {
        let text = try readText(path, referencedFrom: nil)
        let directory = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
        return try parse(text, file: path) { (name, line) throws(ConfigError) in
            let listPath = name.hasPrefix("/") ? name : "\(directory)/\(name)"
            return (try readText(listPath, referencedFrom: ConfigError(file: path, line: line, message: "")), listPath)
        }
    }

    static func readText(_ path: String, referencedFrom: ConfigError?) throws(ConfigError) -> String {
        do {
            return try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigError(file: referencedFrom?.file ?? path, line: referencedFrom?.line ?? 0, message: "cannot read \(path): \(error.localizedDescription)")
        }
    }

    /// Parses policy text. `readList(name, line)` returns a list file's text and display path.
    public static func parse(_ text: String, file: String, readList: (String, Int) throws(ConfigError) -> (String, String) = { name, line throws(ConfigError) in
        throw ConfigError(file: "", line: line, message: "list files are not available here (\(name))")
    }) throws(ConfigError) -> Policy {
        let doc = try TOMLReader.parse(text, file: file)
        try doc.onlyKeys(["defaults", "lists", "rule", "auto_splice"])

        guard let defaultsTable = try doc.table("defaults") else { throw doc.error("the policy needs a [defaults] table with connect, hello and request") }
        try defaultsTable.onlyKeys(["connect", "hello", "request", "block"])
        var defaults: [Stage: Verdict] = [:]
        for stage in Stage.allCases {
            guard let value = try defaultsTable.string(stage.rawValue) else {
                throw defaultsTable.error("[defaults] needs '\(stage.rawValue)' (one of \(stage.verdicts.map(\.rawValue).joined(separator: ", ")))")
            }
            defaults[stage] = try verdict(value, for: stage, defaultsTable, key: stage.rawValue)
        }
        let blockMode = try defaultsTable.string("block").map { (v) throws(ConfigError) -> BlockMode in try mode(v, defaultsTable, key: "block") } ?? .reject

        var lists: [String: HostSet] = [:]
        if let listsTable = try doc.table("lists") {
            for name in listsTable.table.keys {
                let value = listsTable.table[name]!
                lists[name] = try hostList(name, value, listsTable, readList: readList)
            }
        }

        var rules: [Rule] = []
        var names: [String: Int] = [:]
        if let value = doc.table["rule"] {
            guard let entries = value.array else { throw doc.error("'rule' must be written as [[rule]] tables", at: value) }
            for entry in entries {
                guard let table = entry.table else { throw doc.error("each [[rule]] must be a table", at: entry) }
                let rule = try parseRule(TOMLReader(file: file, table: table, path: "rule"), lists: lists)
                if let earlier = names[rule.name] {
                    throw ConfigError(file: file, line: rule.line, message: "rule name '\(rule.name)' is already used at line \(earlier)")
                }
                names[rule.name] = rule.line
                rules.append(rule)
            }
        }
        var policy = Policy(defaults: defaults, defaultBlockMode: blockMode, lists: lists, rules: rules)
        if let learning = try doc.table("auto_splice") {
            try learning.onlyKeys(["ttl"])
            guard let ttl = try learning.integer("ttl", in: 1...2_592_000) else { throw learning.error("[auto_splice] needs 'ttl' (seconds a learnt host is spliced)") }
            policy.autoSpliceTTL = Double(ttl)
        }
        return policy
    }

    static func verdict(_ value: String, for stage: Stage, _ reader: TOMLReader, key: String) throws(ConfigError) -> Verdict {
        guard let verdict = Verdict(rawValue: value), stage.verdicts.contains(verdict) else {
            throw reader.error("'\(value)' is not a verdict of stage \(stage.rawValue) (use \(stage.verdicts.map(\.rawValue).joined(separator: ", ")))", at: reader.table[key])
        }
        return verdict
    }

    static func mode(_ value: String, _ reader: TOMLReader, key: String) throws(ConfigError) -> BlockMode {
        guard let mode = BlockMode(rawValue: value) else {
            throw reader.error("'\(key)' must be reject or drop, found '\(value)'", at: reader.table[key])
        }
        return mode
    }

    static func hostList(_ name: String, _ value: TOMLValue, _ reader: TOMLReader, readList: (String, Int) throws(ConfigError) -> (String, String)) throws(ConfigError) -> HostSet {
        var set = HostSet()
        if let items = value.array {
            for item in items {
                guard let text = item.string else { throw reader.error("list '\(name)' must hold host patterns (strings), found \(item.typeName)", at: item) }
                guard let pattern = HostPattern(text) else { throw reader.error("list '\(name)': '\(text)' is not a host pattern", at: item) }
                set.insert(pattern)
            }
            return set
        }
        if let table = value.table {
            let sub = TOMLReader(file: reader.file, table: table, path: "lists.\(name)")
            try sub.onlyKeys(["file"])
            guard let path = try sub.string("file") else { throw sub.error("list '\(name)' needs file = \"PATH\"", at: value) }
            let (text, displayPath) = try readList(path, value.line)
            // Byte-level: a million-line list must load in well under a second or two.
            var lineNumber = 0
            for rawLine in text.utf8.split(separator: 0x0A, omittingEmptySubsequences: false) {
                lineNumber += 1
                var line = rawLine.prefix { $0 != 0x23 }  // '#' starts a comment
                while let f = line.first, f == 0x20 || f == 0x09 { line = line.dropFirst() }
                while let l = line.last, l == 0x20 || l == 0x09 || l == 0x0D { line = line.dropLast() }
                if line.isEmpty { continue }
                guard let pattern = HostPattern(bytes: ArraySlice(line)) else {
                    throw ConfigError(file: displayPath, line: lineNumber, message: "'\(String(decoding: line, as: UTF8.self))' is not a host pattern")
                }
                set.insert(pattern)
            }
            return set
        }
        throw reader.error("list '\(name)' must be an array of host patterns or { file = \"PATH\" }", at: value)
    }

    static func parseRule(_ r: TOMLReader, lists: [String: HostSet]) throws(ConfigError) -> Rule {
        try r.onlyKeys(Set(["name", "stage", "action", "block", "reason", "identity"] + Condition.fields.map(\.key)))
        guard let name = try r.string("name"), !name.isEmpty else { throw r.error("every rule needs a name") }
        guard !Decision.builtInRules.contains(name) else {
            throw r.error("'\(name)' is reserved for Loupe's own decisions (\(Decision.builtInRules.sorted().joined(separator: ", ")))", at: r.table["name"])
        }
        guard let stageText = try r.string("stage") else { throw r.error("rule '\(name)' needs a stage (connect, hello or request)") }
        guard let stage = Stage(rawValue: stageText) else {
            throw r.error("rule '\(name)': unknown stage '\(stageText)' (connect, hello or request)", at: r.table["stage"])
        }
        guard let actionText = try r.string("action") else { throw r.error("rule '\(name)' needs an action") }
        let action = try verdict(actionText, for: stage, r, key: "action")
        var blockMode: BlockMode?
        if let b = try r.string("block") {
            guard action == .block else { throw r.error("rule '\(name)': 'block' applies only to action = \"block\"", at: r.table["block"]) }
            blockMode = try mode(b, r, key: "block")
        }
        var conditions: [Condition] = []
        for (key, firstStage) in Condition.fields {
            guard let value = r.table[key] else { continue }
            guard firstStage <= stage else {
                throw r.error("rule '\(name)': '\(key)' is not known at stage \(stage.rawValue) (from stage \(firstStage.rawValue) on)", at: value)
            }
            conditions.append(try condition(key, value, r, lists: lists))
        }
        let identity = try r.string("identity")
        if identity != nil, stage != .hello || action != .bump {
            throw r.error("'identity' (a client certificate for the upstream) belongs to hello rules that bump", at: r.table["identity"])
        }
        return Rule(name: name, stage: stage, action: action, blockMode: blockMode, reason: try r.string("reason"),
                    identity: identity, line: r.table.line, conditions: conditions)
    }

    /// A field's values: one value or an array of them.
    static func values(_ key: String, _ value: TOMLValue) -> [TOMLValue] { value.array ?? [value] }

    static func strings(_ key: String, _ value: TOMLValue, _ r: TOMLReader) throws(ConfigError) -> [(String, TOMLValue)] {
        var out: [(String, TOMLValue)] = []
        for item in values(key, value) {
            guard let s = item.string else { throw r.error("'\(key)' takes strings, found \(item.typeName)", at: item) }
            out.append((s, item))
        }
        guard !out.isEmpty else { throw r.error("'\(key)' is empty: it would never match", at: value) }
        return out
    }

    static func condition(_ key: String, _ value: TOMLValue, _ r: TOMLReader, lists: [String: HostSet]) throws(ConfigError) -> Condition {
        switch key {
        case "proto":
            return .proto(Set(try strings(key, value, r).map { (s, v) throws(ConfigError) -> FlowFacts.Proto in
                guard let p = FlowFacts.Proto(rawValue: s) else { throw r.error("'proto' must be tcp or udp, found '\(s)'", at: v) }
                return p
            }))
        case "family":
            return .family(Set(try strings(key, value, r).map { (s, v) throws(ConfigError) -> FlowFacts.Family in
                guard let f = FlowFacts.Family(rawValue: s) else { throw r.error("'family' must be ipv4 or ipv6, found '\(s)'", at: v) }
                return f
            }))
        case "dst_net", "src_net":
            let nets = try strings(key, value, r).map { (s, v) throws(ConfigError) -> CIDR in
                guard let c = CIDR(s) else { throw r.error("'\(key)': '\(s)' is not a CIDR (e.g. 10.0.0.0/8, 2001:db8::/32)", at: v) }
                return c
            }
            return key == "dst_net" ? .dstNet(nets) : .srcNet(nets)
        case "dst_port", "src_port":
            var ranges: [ClosedRange<UInt16>] = []
            for item in values(key, value) {
                if let i = item.integer {
                    guard (0...65535).contains(i) else { throw r.error("'\(key)': \(i) is not a port (0-65535)", at: item) }
                    ranges.append(UInt16(i)...UInt16(i))
                } else if let s = item.string {
                    let parts = s.split(separator: "-", omittingEmptySubsequences: false)
                    guard parts.count == 2, let lo = UInt16(parts[0]), let hi = UInt16(parts[1]), lo <= hi else {
                        throw r.error("'\(key)': '\(s)' is not a port range like \"8000-8999\"", at: item)
                    }
                    ranges.append(lo...hi)
                } else {
                    throw r.error("'\(key)' takes port numbers or \"lo-hi\" strings, found \(item.typeName)", at: item)
                }
            }
            guard !ranges.isEmpty else { throw r.error("'\(key)' is empty: it would never match", at: value) }
            return key == "dst_port" ? .dstPort(ranges) : .srcPort(ranges)
        case "uid", "gid":
            var ids: Set<UInt32> = []
            for item in values(key, value) {
                guard let i = item.integer, (0...Int64(UInt32.max)).contains(i) else { throw r.error("'\(key)' takes numeric ids, found \(item.typeName)", at: item) }
                ids.insert(UInt32(i))
            }
            return key == "uid" ? .uid(ids) : .gid(ids)
        case "user", "group":
            let names = Set(try strings(key, value, r).map(\.0))
            return key == "user" ? .user(names) : .group(names)
        case "exe":
            return .exe(try strings(key, value, r).map { (s, v) throws(ConfigError) -> String in
                guard s.hasPrefix("/") || s.hasPrefix("*"), validGlob(s) else {
                    throw r.error("'exe': '\(s)' is not a valid glob on an absolute path (e.g. \"/usr/bin/*\")", at: v)
                }
                return s
            })
        case "names", "sni":
            var inline = HostSet()
            var sets: [HostSet] = []
            var text: [String] = []
            for (s, v) in try strings(key, value, r) {
                text.append(s)
                if s.hasPrefix("@") {
                    guard let list = lists[String(s.dropFirst())] else {
                        throw r.error("'\(key)': unknown list '\(s)' (defined lists: \(lists.keys.sorted().joined(separator: ", ")))", at: v)
                    }
                    sets.append(list)
                } else {
                    guard let pattern = HostPattern(s) else { throw r.error("'\(key)': '\(s)' is not a host pattern", at: v) }
                    inline.insert(pattern)
                }
            }
            if inline.count > 0 { sets.append(inline) }
            let matcher = HostMatcher(sets: sets, text: text)
            return key == "names" ? .names(matcher) : .sni(matcher)
        case "tls":
            guard let b = value.bool else { throw r.error("'tls' is true or false, found \(value.typeName)", at: value) }
            return .tls(b)
        case "alpn":
            return .alpn(Set(try strings(key, value, r).map { $0.0.lowercased() }))
        case "method":
            return .method(Set(try strings(key, value, r).map { $0.0.uppercased() }))
        case "path":
            return .path(try strings(key, value, r).map { (s, v) throws(ConfigError) -> String in
                guard s.hasPrefix("/") else { throw r.error("'path' prefixes start with '/', found '\(s)'", at: v) }
                return URLPath.canonical(s[...])  // compared as requests are
            })
        case "url":
            return .url(try strings(key, value, r).map { (s, v) throws(ConfigError) -> URLPrefix in
                guard s.lowercased().hasPrefix("http://") || s.lowercased().hasPrefix("https://") else { throw r.error("'url' prefixes start with http:// or https://, found '\(s)'", at: v) }
                return URLPrefix(canonical: URLPath.canonicalURL(s))  // compared as requests are
            })
        default:
            throw r.error("unknown match field '\(key)'", at: value)
        }
    }

    /// Brackets must close; a trailing backslash escapes nothing.
    static func validGlob(_ glob: String) -> Bool {
        var inBracket = false
        var escaped = false
        for c in glob {
            if escaped { escaped = false; continue }
            switch c {
            case "\\": escaped = true
            case "[": if !inBracket { inBracket = true }
            case "]": inBracket = false
            default: break
            }
        }
        return !inBracket && !escaped
    }
}

extension Substring {
    func trimmingWhitespace() -> Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return s
    }
}
