/// The three decision points of a flow (DESIGN.md "Verdicts, in stages").
public enum Stage: String, Sendable, CaseIterable, Comparable {
    case connect, hello, request

    public var verdicts: [Verdict] {
        switch self {
        case .connect: [.allow, .block, .inspect]
        case .hello: [.splice, .bump, .block]
        case .request: [.allow, .block]
        }
    }

    public static func < (a: Stage, b: Stage) -> Bool { a.ordinal < b.ordinal }

    /// Position in `allCases`: per-stage tables are arrays, not dictionaries hashing the raw
    /// value on every decision.
    var ordinal: Int {
        switch self {
        case .connect: 0
        case .hello: 1
        case .request: 2
        }
    }
}

public enum Verdict: String, Sendable, CaseIterable {
    case allow, block, inspect, splice, bump
}

/// How a block is delivered at stage connect.
public enum BlockMode: String, Sendable, CaseIterable {
    /// TCP RST or ICMP unreachable: the client fails fast.
    case reject
    /// Silently dropped: the client times out.
    case drop
}

/// A stage's answer, with the rule that made it ("default" when none matched) and why.
public struct Decision: Sendable, Equatable, CustomStringConvertible {
    public var stage: Stage
    public var verdict: Verdict
    public var rule: String
    public var reason: String
    /// Set when `verdict == .block`.
    public var blockMode: BlockMode?

    public init(stage: Stage, verdict: Verdict, rule: String, reason: String, blockMode: BlockMode? = nil) {
        self.stage = stage
        self.verdict = verdict
        self.rule = rule
        self.reason = reason
        self.blockMode = blockMode
    }

    public var description: String {
        let how = blockMode.map { " (\($0.rawValue))" } ?? ""
        return "\(stage.rawValue): \(verdict.rawValue)\(how) by rule \"\(rule)\" — \(reason)"
    }

    /// The rule of a stage's default.
    public static let defaultRule = "default"
    /// The proxy's own refusal of a request its connection cannot carry (a host the verified
    /// certificate does not cover, another port): answered 421.
    public static let misdirectedRule = "misdirected"
    /// The proxy's own refusal of a request it cannot read one way only: answered 400.
    public static let malformedRule = "malformed"
    /// Names no policy rule may take: decisions under them are Loupe's own, and clients are
    /// answered by what they mean.
    public static let builtInRules: Set<String> = [defaultRule, misdirectedRule, malformedRule]
}
