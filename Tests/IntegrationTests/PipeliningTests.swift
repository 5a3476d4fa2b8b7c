import Foundation
import TestSupport
import Testing

/// HTTP/1.1 pipelining through `loupe proxy` (apt's http(s) method can pipeline): a client sends
/// three requests in one write, the second blocked by the request stage. The answers must come
/// in request order — the first request's 200, then the 403 — and nothing after the blocked
/// request reaches the origin.
@Suite struct PipeliningTests {
    static let canRun = ["curl", "openssl", "python3"].allSatisfy(TestEnv.has)

    /// Sends the three requests at once; prints each status line in the order they came, until
    /// the connection closes.
    static let client = #"""
        import re, socket, ssl, sys
        ctx = ssl.create_default_context(cafile=sys.argv[1])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5), server_hostname="origin.test")
        s.sendall(b"GET /first HTTP/1.1\r\nHost: origin.test\r\n\r\n"
                  b"POST /admin/users HTTP/1.1\r\nHost: origin.test\r\nContent-Length: 6\r\n\r\nsecret"
                  b"GET /third HTTP/1.1\r\nHost: origin.test\r\n\r\n")
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk: break
                data += chunk
        except (socket.timeout, ssl.SSLError) as e:
            print("ERROR", e)
        print(" ".join(code.decode() for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)))  # the origin's bodies are x's
        """#

    @Test(.enabled(if: canRun, "needs curl, openssl and python3 (CI has them)"))
    func aBlockedPipelinedRequestIsAnsweredAfterTheOnesBeforeIt() throws {
        let dir = TestEnv.scratch("pipelining")
        defer { TestEnv.remove(dir) }
        let base = TestEnv.port(slot: 16), origin = base + 1, proxy = base + 2
        try TestPolicies.noAdminPost.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        try Self.client.write(toFile: "\(dir)/client.py", atomically: true, encoding: .utf8)
        let script = LoopbackProxy.preamble(dir: dir, origin: base + 4, proxy: base + 3, name: "origin.test") + """
            python3 \(TestEnv.packageRoot)/bench/keepalive.py serve $D/origin.pem \(origin) 2>$D/origin.err & echo $! > $D/ka.pid
            for i in $(seq 50); do timeout 1 bash -c "echo > /dev/tcp/127.0.0.1/\(origin)" 2>/dev/null && break; sleep 0.1; done
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(origin) --policy $D/policy.toml --flow-log $D/flows.jsonl 2>$D/pipe.err & echo $! > $D/pipe.pid
            for i in $(seq 100); do grep -q listening $D/pipe.err 2>/dev/null && break; sleep 0.1; done
            echo "STATUSES $(python3 $D/client.py $D/loupe-root.pem \(proxy) 2>&1)"
            sleep 0.3
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 60))
        #expect(r.line("STATUSES") == "STATUSES 200 403", "the first request's answer, then the 403, then the end: \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("request blocked by rule no-admin-post") && !flows.contains("/third"), "the third request was never decided or sent: \(flows)")
    }
}
