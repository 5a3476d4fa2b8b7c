import Foundation
import TestSupport
import Testing

/// `[auto_splice]` with real curl: a client that trusts only the origin's root (as a pinned app
/// would) fails once against Loupe's leaf, and is spliced — its own origin certificate — after.
@Suite struct AutoSpliceTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func aRefusingClientIsSplicedNextTime() throws {
        let dir = TestEnv.scratch("autosplice")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 3), proxy = TestEnv.port(slot: 4)
        let policy = "[defaults]\nconnect = \"inspect\"\nhello = \"bump\"\nrequest = \"allow\"\n[auto_splice]\nttl = 300\n"
        try policy.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "pinned.test",
                                            proxyFlags: "--policy $D/policy.toml --flow-log $D/flows.jsonl") + """
            pinned() { local out rc; out=$(curl -sS --max-time 5 --cacert $D/origin-root.pem --connect-to pinned.test:443:127.0.0.1:\(proxy) https://pinned.test/index.html 2>&1); rc=$?; echo "$(echo $out | tr '\\n' ' ') rc=$rc"; }
            echo "FIRST $(pinned)"
            echo "SECOND $(pinned)"
            sleep 0.3   # the close line of the second connection
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 120))
        let line = r.line
        #expect(line("FIRST").hasSuffix("rc=60"), "the pinned client refuses Loupe's leaf: \(r.out)")
        #expect(line("SECOND").contains("hi") && line("SECOND").hasSuffix("rc=0"), "then it is spliced: \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"event\":\"auto_splice\"") && flows.contains("\"host\":\"pinned.test\""), "\(flows)")
        #expect(flows.contains("\"rule\":\"auto_splice\"") && flows.contains("\"mode\":\"splice\""), "\(flows)")
    }
}
