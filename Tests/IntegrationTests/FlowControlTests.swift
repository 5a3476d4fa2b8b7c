import Foundation
import TestSupport
import Testing

/// Through `loupe proxy` with real clients: a client that reads slowly must not make the proxy
/// buffer what the origin sends (backpressure), and a connection where nothing moves is closed
/// after the idle timeout — cleanly, with close_notify, as a server closes an idle keep-alive.
@Suite struct FlowControlTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func slowClientsAndIdleConnections() throws {
        let dir = TestEnv.scratch("flowctl")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 11), proxy = origin + 1
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test",
                                            proxyFlags: "--idle-timeout 2 --flow-log $D/flows.jsonl") + """
            head -c $((64 * 1048576)) /dev/urandom > $D/www/big.bin
            rss() { awk '/VmRSS/ { print $2 }' /proc/$(cat $D/proxy.pid)/status || echo -999999999; }
            before=$(rss)
            curl -s --limit-rate 1M --max-time 3 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) https://origin.test/big.bin -o /dev/null & slow=$!
            sleep 2.5; during=$(rss); wait $slow
            echo "SLOW $(( (during - before) / 1024 ))"
            s=$(date +%s%N)
            timeout 10 openssl s_client -connect 127.0.0.1:\(proxy) -servername origin.test -CAfile $D/loupe-root.pem -quiet < <(sleep 8) >/dev/null 2>&1
            echo "IDLE $(( ($(date +%s%N) - s) / 1000000 ))"
            sleep 0.3
            """
        let r = TestEnv.bash(script)
        let value = r.value
        #expect(value("PROXYUP") == 1, "the proxy must be up, or nothing below means anything: \(r.out) \(r.err)")
        let grown = value("SLOW")
        #expect(grown >= 0 && grown < 16, "a client reading 1 MB/s must not make the proxy hold the origin's 64 MiB (grew \(grown) MiB): \(r.out) \(r.err)")
        let idle = value("IDLE")
        #expect(idle >= 1500 && idle < 6000, "closed after the 2 s idle timeout, not when the client gave up (\(idle) ms): \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("idle: nothing moved"), "the idle close is logged: \(flows)")
    }
}
