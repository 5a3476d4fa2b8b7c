import Foundation
import TestSupport
import Testing

/// `--upstream-failure quarantine`: an upstream that fails verification is answered under a leaf
/// from an untrusted quarantine issuer — a client still refuses it (as it would refuse the real
/// server); one that clicks through gets a 502 naming the failure, never the server's content.
@Suite struct QuarantineTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func failedUpstreamsGetAnUntrustedLeafAndAPage() throws {
        let dir = TestEnv.scratch("quarantine")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 7), proxy = TestEnv.port(slot: 8)
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test",
                                            proxyFlags: "--upstream-failure quarantine --flow-log $D/flows.jsonl") + """
            c() { curl -sS --max-time 5 --connect-to $1:443:127.0.0.1:\(proxy) "https://$1/index.html" "${@:2}" 2>&1 | tr '\\n' ' '; echo "rc=${PIPESTATUS[0]}"; }
            echo "GOOD $(c origin.test --cacert $D/loupe-root.pem)"
            echo "STRICT $(c wrong.test --cacert $D/loupe-root.pem)"
            echo "CLICKED $(c wrong.test -k)"
            echo "ISSUER $(curl -sk -v --max-time 5 --connect-to wrong.test:443:127.0.0.1:\(proxy) https://wrong.test/ -o /dev/null 2>&1 | grep -c 'issuer: .*Loupe Quarantine (untrusted)')"
            sleep 0.3
            """
        let r = TestEnv.bash(script)
        let line = r.line
        #expect(line("GOOD") == "GOOD hi rc=0", "\(r.out) \(r.err)")
        #expect(line("STRICT").hasSuffix("rc=60"), "the client refuses the quarantine leaf (certificate problem, not a connection error): \(r.out)")
        #expect(line("CLICKED").contains("the real server failed verification") && line("CLICKED").contains("hostname mismatch")
                && !line("CLICKED").contains("hi rc"), "clicking through shows why, never the server's content: \(r.out)")
        #expect(line("ISSUER") == "ISSUER 1", "\(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("(quarantine certificate served"), "\(flows)")
    }
}
