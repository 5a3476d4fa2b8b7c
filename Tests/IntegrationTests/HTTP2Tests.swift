import Foundation
import TestSupport
import Testing

/// HTTP/2 through `loupe proxy` with real curl and an HTTP/2 origin (python3-h2): ALPN h2 is
/// kept end to end, every request is decided at the request stage and recorded, and a refused
/// request never reaches the origin while the connection goes on serving the next one.
@Suite struct HTTP2Tests {
    static let python = "/usr/bin/python3"
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)
        && TestEnv.sh("\(python) -c 'import h2'").status == 0

    /// Answers every request with "h2 PATH"; logs "METHOD PATH" of each request it saw.
    static let origin = #"""
import socket, ssl, sys, threading
import h2.config, h2.connection, h2.events
cert, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert); ctx.set_alpn_protocols(["h2"])
def serve(raw):
    s = ctx.wrap_socket(raw, server_side=True)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_connection(); s.sendall(conn.data_to_send())
    heads = {}
    while True:
        data = s.recv(65536)
        if not data: return
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.RequestReceived):
                heads[e.stream_id] = dict((k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v) for k, v in e.headers)
            elif isinstance(e, h2.events.DataReceived):
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            if isinstance(e, h2.events.StreamEnded):
                h = heads.pop(e.stream_id)
                with open(log, "a") as f: f.write(h[":method"] + " " + h[":path"] + "\n")
                body = ("h2 " + h[":path"] + "\n").encode()
                conn.send_headers(e.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                conn.send_data(e.stream_id, body, end_stream=True)
        s.sendall(conn.data_to_send())
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", port)); l.listen(16)
while True:
    c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""#

    @Test(.enabled(if: canRun, "needs curl, openssl and python3-h2 (scripts/install-deps installs them)"))
    func requestsAreDecidedAndRecorded() throws {
        let dir = TestEnv.scratch("h2")
        defer { TestEnv.remove(dir) }
        let base = TestEnv.port(slot: 12), h2origin = base + 2, proxy = base + 3
        try Self.origin.write(toFile: "\(dir)/origin.py", atomically: true, encoding: .utf8)
        try TestPolicies.noAdminPost.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        let script = LoopbackProxy.preamble(dir: dir, origin: base, proxy: base + 1, name: "origin.test") + """
            \(Self.python) $D/origin.py $D/origin.pem \(h2origin) $D/paths.log 2>$D/h2.err & echo $! > $D/h2.pid
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(h2origin) --policy $D/policy.toml --flow-log $D/flows.jsonl 2>$D/proxy2.err & echo $! > $D/proxy2.pid
            for i in $(seq 300); do grep -q listening $D/proxy2.err 2>/dev/null && break; sleep 0.1; done
            for i in $(seq 150); do curl -s --http2 -o /dev/null --cacert $D/origin-root.pem --connect-to origin.test:443:127.0.0.1:\(h2origin) https://origin.test/ready && break; sleep 0.1; done
            c() { curl -s --http2 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) "$@"; }
            echo "ONE $(c https://origin.test/a -w ' %{http_version} %{http_code}' | tr '\\n' ' ')"
            echo "BLOCK $(c -d secret https://origin.test/admin -w ' %{http_version} %{http_code}|' --next --http2 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) https://origin.test/after -w ' %{http_version} %{http_code} %{num_connects}' | tr '\\n' ' ')"
            head -c 3000000 /dev/zero > $D/upload
            echo "UPLOAD $(c --data-binary @$D/upload https://origin.test/admin -o /dev/null -w '%{http_version} %{http_code}'; echo " rc=$?")"
            sleep 0.3
            """
        let r = TestEnv.bash(script)
        let line = r.line
        #expect(line("ONE") == "ONE h2 /a  2 200", "ALPN h2 end to end: \(r.out) \(r.err)")
        let block = line("BLOCK")
        #expect(block.contains("Blocked by Loupe policy (rule no-admin-post)") && block.contains(" 2 403|"), "the refused request gets a 403 over h2: \(block)")
        #expect(block.hasSuffix("h2 /after  2 200 0"), "…and the same connection serves the next request: \(block)")
        // A refused upload still sending its body: the 403, not a reset curl reports as an error.
        #expect(line("UPLOAD") == "UPLOAD 2 403 rc=0", "\(r.out) \(r.err)")
        let seen = (try? String(contentsOfFile: "\(dir)/paths.log", encoding: .utf8)) ?? ""
        #expect(seen == "GET /ready\nGET /a\nGET /after\n", "the origin never saw the refused request: \(seen)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"method\":\"POST\"") && flows.contains("\"url\":\"https://origin.test/admin\"") && flows.contains("\"verdict\":\"block\""), "\(flows)")
        #expect(flows.contains("\"url\":\"https://origin.test/after\""), "every h2 request is recorded: \(flows)")
        let answered = flows.split(separator: "\n").first { $0.contains("\"event\":\"response\"") && $0.contains("\"url\":\"https://origin.test/a\"") } ?? ""
        #expect(answered.contains("\"status\":200") && answered.contains("\"bytes\":6"), "each h2 response is recorded with status and size: \(answered)")
        #expect(flows.contains("\"client_alpn\":\"h2\"") && flows.contains("\"upstream_alpn\":\"h2\""), "\(flows)")
    }
}
