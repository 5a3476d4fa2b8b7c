import Foundation
import TOML

/// A flow-verdict regression corpus: flows with the verdicts their authors expect.
public struct CorpusFlow: Sendable {
    public var name: String
    public var file: String
    public var line: Int
    public var facts: FlowFacts
    public var expect: [Stage: Verdict]
}

public enum Corpus {
    static let keys: Set<String> = ["name", "proto", "src", "dst", "uid", "user", "gid", "group", "exe", "names", "tls", "sni", "alpn", "method", "url", "expect"]

    public static func parse(_ text: String, file: String) throws(ConfigError) -> [CorpusFlow] {
        let doc = try TOMLReader.parse(text, file: file)
        try doc.onlyKeys(["flow"])
        guard let entries = doc.table["flow"]?.array else { throw doc.error("a corpus holds [[flow]] tables; none found") }
        var flows: [CorpusFlow] = []
        for entry in entries {
            guard let table = entry.table else { throw doc.error("each [[flow]] must be a table", at: entry) }
            flows.append(try flow(TOMLReader(file: file, table: table, path: "flow")))
        }
        return flows
    }

    static func flow(_ r: TOMLReader) throws(ConfigError) -> CorpusFlow {
        try r.onlyKeys(keys)
        var f = FlowFacts()
        let name = try r.string("name") ?? "flow at line \(r.table.line)"
        if let proto = try r.string("proto") {
            guard let p = FlowFacts.Proto(rawValue: proto) else { throw r.error("'proto' must be tcp or udp, found '\(proto)'", at: r.table["proto"]) }
            f.proto = p
        }
        for key in ["src", "dst"] {
            guard let text = try r.string(key) else { continue }
            guard let endpoint = FlowFacts.Endpoint(text) else {
                throw r.error("'\(key)': '\(text)' is not ADDRESS:PORT (IPv6 as \"[2001:db8::1]:443\")", at: r.table[key])
            }
            if key == "src" { f.src = endpoint } else { f.dst = endpoint }
        }
        guard f.dst != nil else { throw r.error("flow '\(name)' needs dst = \"ADDRESS:PORT\"") }
        f.uid = try r.integer("uid", in: 0...Int64(UInt32.max)).map(UInt32.init)
        f.gid = try r.integer("gid", in: 0...Int64(UInt32.max)).map(UInt32.init)
        f.user = try r.string("user")
        f.group = try r.string("group")
        f.exe = try r.string("exe")
        f.names = try r.strings("names") ?? []
        // A flow that reaches hello is TLS unless it says otherwise.
        f.tls = try r.bool("tls") ?? true
        f.sni = try r.string("sni")
        f.alpn = try r.strings("alpn") ?? []
        f.method = try r.string("method")
        f.url = try r.string("url")
        if let url = f.url, !(url.hasPrefix("http://") || url.hasPrefix("https://")) {
            throw r.error("'url' must be an absolute http(s) URL, found '\(url)'", at: r.table["url"])
        }
        guard let expectTable = try r.table("expect") else { throw r.error("flow '\(name)' needs expect = { connect = ..., ... }") }
        var expect: [Stage: Verdict] = [:]
        for key in expectTable.table.keys {
            guard let stage = Stage(rawValue: key) else {
                throw expectTable.error("unknown stage '\(key)' in expect (connect, hello, request)", at: expectTable.table[key])
            }
            let value = try expectTable.string(key)!
            guard let verdict = Verdict(rawValue: value), stage.verdicts.contains(verdict) else {
                throw expectTable.error("'\(value)' is not a verdict of stage \(key) (\(stage.verdicts.map(\.rawValue).joined(separator: ", ")))", at: expectTable.table[key])
            }
            expect[stage] = verdict
        }
        guard !expect.isEmpty else { throw r.error("flow '\(name)' expects nothing", at: r.table["expect"]) }
        return CorpusFlow(name: name, file: r.file, line: r.table.line, facts: f, expect: expect)
    }
}

/// What the policy did with one corpus flow, stage by stage, as a flow would live: hello is
/// reached only by flows inspected at connect, request only by flows bumped at hello.
public struct FlowOutcome: Sendable {
    public var flow: CorpusFlow
    public var decisions: [Decision]
    public var failures: [String]
    public var passed: Bool { failures.isEmpty }

    public init(_ flow: CorpusFlow, policy: Policy) {
        self.flow = flow
        decisions = Self.walk(flow.facts, policy: policy, through: flow.expect.keys.max() ?? .connect)
        failures = []
        for stage in Stage.allCases {
            guard let expected = flow.expect[stage] else { continue }
            if let decision = decisions.first(where: { $0.stage == stage }) {
                if decision.verdict != expected {
                    failures.append("\(stage.rawValue): expected \(expected.rawValue), got \(decision.verdict.rawValue) (rule \"\(decision.rule)\": \(decision.reason))")
                }
            } else {
                let last = decisions.last!
                failures.append("\(stage.rawValue): expected \(expected.rawValue), but the flow never reaches it (\(last.stage.rawValue) decided \(last.verdict.rawValue) by rule \"\(last.rule)\")")
            }
        }
    }

    /// Decisions from connect up to `stage`, stopping where the flow would stop.
    public static func walk(_ facts: FlowFacts, policy: Policy, through stage: Stage) -> [Decision] {
        var decisions = [policy.decide(.connect, facts)]
        if stage >= .hello, decisions[0].verdict == .inspect {
            decisions.append(policy.decide(.hello, facts))
            if stage >= .request, decisions[1].verdict == .bump { decisions.append(policy.decide(.request, facts)) }
        }
        return decisions
    }
}

/// JUnit XML for CI systems: one testcase per flow.
public enum JUnitReport {
    public static func render(_ outcomes: [FlowOutcome], suite: String = "loupe verdicts") -> String {
        func esc(_ s: String) -> String {
            s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
                .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
        }
        let failed = outcomes.filter { !$0.passed }.count
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        xml += "<testsuites tests=\"\(outcomes.count)\" failures=\"\(failed)\">\n"
        xml += "  <testsuite name=\"\(esc(suite))\" tests=\"\(outcomes.count)\" failures=\"\(failed)\">\n"
        for o in outcomes {
            xml += "    <testcase classname=\"\(esc(o.flow.file))\" name=\"\(esc(o.flow.name))\" file=\"\(esc(o.flow.file))\" line=\"\(o.flow.line)\""
            if o.passed {
                xml += "/>\n"
            } else {
                xml += ">\n      <failure message=\"\(esc(o.failures.joined(separator: "; ")))\"/>\n    </testcase>\n"
            }
        }
        return xml + "  </testsuite>\n</testsuites>\n"
    }
}
