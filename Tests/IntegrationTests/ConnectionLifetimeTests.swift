import Foundation
import TestSupport
import Testing

/// Through `loupe proxy` with real clients: a connection that has ended must leave nothing
/// behind. Each bumped connection holds two TLS sessions, a machine and two channels (~40 KiB);
/// a reference cycle once kept all of it for good, so an agent grew by every connection it
/// ever proxied.
@Suite struct ConnectionLifetimeTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func endedConnectionsGiveTheirMemoryBack() throws {
        let dir = TestEnv.scratch("lifetime")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 13), proxy = origin + 1
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test") + """
            rss() { awk '/VmRSS/ { print $2 }' /proc/$(cat $D/proxy.pid)/status || echo -999999999; }
            fetch() { ok=0; for i in $(seq $1); do curl -s --max-time 5 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) https://origin.test/index.html -o /dev/null -w '%{http_code}\\n' | grep -q 200 && ok=$((ok + 1)); done; echo $ok; }
            echo "WARM $(fetch 50)"
            sleep 1.5; base=$(rss)
            echo "MANY $(fetch 300)"
            sleep 1.5; echo "GROWN $(( $(rss) - base ))"
            """
        let r = TestEnv.bash(script, timeout: 180)
        let value = r.value
        #expect(value("PROXYUP") == 1, "the proxy must be up, or nothing below means anything: \(r.out) \(r.err)")
        #expect(value("WARM") == 50 && value("MANY") == 300, "every request must go through: \(r.out)")
        // Kept connections would add ~12 MiB (300 × ~40 KiB); allocator noise stays well under 4.
        let grown = value("GROWN")
        #expect(grown >= -100_000 && grown < 4096, "300 ended connections grew the proxy by \(grown) KiB: \(r.out) \(r.err)")
    }
}
