import Foundation
import TestSupport
import Testing

/// An upstream that demands a client certificate: a hello rule names an identity imported into
/// the store (`store import-p12`), and Loupe presents it; without one the flow fails clearly.
@Suite struct MutualTLSTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func anImportedIdentityIsPresentedUpstream() throws {
        let dir = TestEnv.scratch("mtls")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 5), proxy = TestEnv.port(slot: 6)
        let policy = """
            [defaults]
            connect = "inspect"
            hello = "bump"
            request = "allow"
            [[rule]]
            name = "corp-mtls"
            stage = "hello"
            sni = ["origin.test"]
            action = "bump"
            identity = "corp"
            """
        try policy.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        // The client PKI exists before the origin starts: the origin trusts only it.
        let clientPKI = ClientPKI.script(dir: dir, commonName: "endpoint-42") + """
            echo secret > $D/pw
            openssl pkcs12 -export -in $D/client.pem -inkey $D/client.key -certfile $D/client-ca.pem -passout file:$D/pw -out $D/client.p12
            """
        #expect(TestEnv.sh(clientPKI).status == 0)
        let script = """
            export LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca
            \(TestEnv.loupe) ca init --state-dir \(dir)/loupe --provider host-key >/dev/null
            echo "IMPORT $(\(TestEnv.loupe) store import-p12 --state-dir \(dir)/loupe --label corp --password-file \(dir)/pw \(dir)/client.p12 | head -1)"
            """ + LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test",
                                          originFlags: "-Verify 1 -CAfile $D/client-ca.pem -verify_return_error",
                                          proxyFlags: "--policy $D/policy.toml --flow-log $D/flows.jsonl") + """
            c() { curl -sS --max-time 5 --cacert $D/loupe-root.pem --connect-to $1:443:127.0.0.1:\(proxy) "https://$1/index.html" 2>&1 | tr '\\n' ' '; echo "rc=${PIPESTATUS[0]}"; }
            echo "WITH $(c origin.test)"
            echo "WITHOUT $(c 127.0.0.1)"
            sleep 0.3
            """
        let r = TestEnv.bash(script)
        let line = r.line
        #expect(line("IMPORT").contains("imported identity 'corp'"), "\(r.out) \(r.err)")
        #expect(line("WITH") == "WITH hi rc=0", "the origin accepted Loupe's client certificate: \(r.out)")
        #expect(line("WITHOUT").hasSuffix("rc=35"), "no identity for this flow: the client's handshake fails, never hangs: \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"rule\":\"corp-mtls\""), "\(flows)")
        #expect(flows.contains("upstream TLS failed") || flows.contains("upstream closed"), "the failure is logged with its reason: \(flows)")
    }
}
