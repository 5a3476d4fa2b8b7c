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

    /// An origin that demands a client certificate Loupe has no identity for: the first
    /// connection fails (Loupe cannot relay the client's own certificate — it signs the
    /// handshake), the host is learnt, and the next connection is spliced, so the client's
    /// certificate reaches the origin and it works as it does direct.
    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"), arguments: ["-tls1_3", "-tls1_2"])
    func anOriginDemandingAClientCertificateIsSplicedNextTime(version: String) throws {
        let dir = TestEnv.scratch("autosplice-mtls")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 14) + (version == "-tls1_2" ? 10 : 0), proxy = origin + 1
        let policy = "[defaults]\nconnect = \"inspect\"\nhello = \"bump\"\nrequest = \"allow\"\n[auto_splice]\nttl = 300\n"
        try policy.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        #expect(TestEnv.sh(ClientPKI.script(dir: dir, commonName: "endpoint-7")).status == 0)
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "mtls.test",
                                            originFlags: "\(version) -Verify 1 -CAfile $D/client-ca.pem -verify_return_error",
                                            proxyFlags: "--policy $D/policy.toml --flow-log $D/flows.jsonl") + """
            cat $D/loupe-root.pem $D/origin-root.pem > $D/both.pem
            withcert() { local out rc; out=$(curl -sS --max-time 5 --cacert $D/both.pem --cert $D/client.pem --key $D/client.key --connect-to mtls.test:443:127.0.0.1:\(proxy) https://mtls.test/index.html 2>&1); rc=$?; echo "$(echo $out | tr '\\n' ' ') rc=$rc"; }
            echo "FIRST $(withcert)"
            echo "SECOND $(withcert)"
            sleep 0.3
            """
        let r = TestEnv.bash(script)
        let line = r.line
        #expect(!line("FIRST").hasSuffix("rc=0"), "Loupe has no certificate to give: \(r.out)")
        #expect(line("SECOND").contains("hi") && line("SECOND").hasSuffix("rc=0"), "spliced, the client's own certificate works: \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"event\":\"auto_splice\"") && flows.contains("demands a client certificate"), "\(flows)")
        #expect(flows.contains("\"rule\":\"auto_splice\"") && flows.contains("\"mode\":\"splice\""), "\(flows)")
    }
}
