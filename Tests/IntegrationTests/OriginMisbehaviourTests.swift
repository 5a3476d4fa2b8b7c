import Foundation
import TestSupport
import Testing

/// Origins that misbehave, through `loupe proxy` with real clients: one that stalls before its
/// handshake, one that resets mid-body, a WebSocket echo that must keep working once bumped,
/// a plain-text server that speaks first (an SMTP-style greeting) to a client that waits, and
/// TLS clients of other protocols (no ALPN) that send one message and wait for the answer.
@Suite struct OriginMisbehaviourTests {
    static let canRun = ["curl", "openssl", "python3"].allSatisfy(TestEnv.has)

    /// A TLS origin in Python: /reset sends half of a declared body then an RST; /ws upgrades to
    /// a WebSocket and echoes one text frame. Port 2 of the script only accepts TCP and stalls;
    /// port 3 greets ("220 ready"), answers one line and closes; port 4 (TLS) answers the first
    /// bytes it gets, whatever they are, with "got " and their length.
    static let origin = #"""
        import base64, hashlib, socket, ssl, struct, sys, threading, time
        cert, port, stall, greet, echo = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
        def echoer(c):
            try:
                s = ctx.wrap_socket(c, server_side=True); data = s.recv(4096)
                s.sendall(b"got %d" % len(data)); time.sleep(0.5); s.close()
            except Exception as e:
                print("origin:", e, file=sys.stderr)
        def greeter(c):
            c.sendall(b"220 ready\r\n")
            line = c.makefile("rb").readline()
            c.sendall(b"221 bye after " + line.strip() + b"\r\n"); c.close()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert)
        def serve(conn):
            try:
                s = ctx.wrap_socket(conn, server_side=True)
                head = b""
                while b"\r\n\r\n" not in head: head += s.recv(4096)
                path = head.split(b" ")[1]
                if path == b"/reset":
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100000)
                    time.sleep(0.2)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)); conn.close()
                elif path == b"/ws":
                    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
                    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                    b0, b1 = s.recv(2)
                    n = b1 & 0x7F; mask = s.recv(4); data = s.recv(n)
                    text = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
                    s.sendall(bytes([0x81, len(text)]) + text)
                    time.sleep(0.5); s.close()
            except Exception as e:
                print("origin:", e, file=sys.stderr)
        def listen(p, handler):
            l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", p)); l.listen(16)
            while True:
                c, _ = l.accept(); threading.Thread(target=handler, args=(c,), daemon=True).start()
        threading.Thread(target=listen, args=(stall, lambda c: time.sleep(60)), daemon=True).start()
        threading.Thread(target=listen, args=(greet, greeter), daemon=True).start()
        threading.Thread(target=listen, args=(echo, echoer), daemon=True).start()
        listen(port, serve)
        """#

    static let websocketClient = #"""
        import base64, os, socket, ssl, sys
        ctx = ssl.create_default_context(cafile=sys.argv[1])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5), server_hostname="origin.test")
        key = base64.b64encode(os.urandom(16))
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: origin.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head: head += s.recv(1)
        mask = os.urandom(4); text = b"hello through loupe"
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(text)))
        frame = s.recv(2); echoed = s.recv(frame[1] & 0x7F)
        print(head.split(b"\r\n")[0].decode(), "|", echoed.decode())
        """#

    /// A TLS client without ALPN that sends one message of another protocol (an IMAP command
    /// line; an MQTT CONNECT, binary) and prints the answer, waiting up to 5 s for it.
    static let otherProtocolClient = #"""
        import socket, ssl, sys
        messages = {"imap": b"a1 LOGIN user pass\r\n", "mqtt": bytes([0x10, 0x10, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 4]) + b"loup"}
        ctx = ssl.create_default_context(cafile=sys.argv[1])
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5), server_hostname="origin.test")
        s.sendall(messages[sys.argv[3]])
        try: print(s.recv(64).decode(), "of", len(messages[sys.argv[3]]))
        except socket.timeout: print("no answer")
        """#

    /// Waits for the greeting (up to 8 s), then sends one line and prints both answers.
    static let greetedClient = #"""
        import socket, sys
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=8)
        f = s.makefile("rb")
        greeting = f.readline().strip().decode()
        s.sendall(b"QUIT\r\n")
        print(greeting, "|", f.readline().strip().decode())
        """#

    @Test(.enabled(if: canRun, "needs curl, openssl and python3 (CI has them)"))
    func stallResetAndWebSocket() throws {
        let dir = TestEnv.scratch("misbehave")
        defer { TestEnv.remove(dir) }
        let port = TestEnv.port(slot: 9), stall = port + 1, greet = port + 2, echo = port + 3
        let proxy = TestEnv.port(slot: 10), stallProxy = proxy + 1, greetProxy = proxy + 2, echoProxy = proxy + 3
        try Self.origin.write(toFile: "\(dir)/origin.py", atomically: true, encoding: .utf8)
        try Self.websocketClient.write(toFile: "\(dir)/ws.py", atomically: true, encoding: .utf8)
        try Self.greetedClient.write(toFile: "\(dir)/greeted.py", atomically: true, encoding: .utf8)
        try Self.otherProtocolClient.write(toFile: "\(dir)/other.py", atomically: true, encoding: .utf8)
        // The preamble's s_server origin is not used here; the Python origin takes its port.
        let script = LoopbackProxy.preamble(dir: dir, origin: port + 4, proxy: proxy, name: "origin.test",
                                            proxyFlags: "--flow-log $D/flows.jsonl") + """
            kill -9 $(cat $D/proxy.pid); while kill -0 $(cat $D/proxy.pid) 2>/dev/null; do sleep 0.05; done
            python3 $D/origin.py $D/origin.pem \(port) \(stall) \(greet) \(echo) 2>$D/origin.err & echo $! > $D/py.pid
            for p in \(port) \(stall) \(greet) \(echo); do for i in $(seq 50); do timeout 1 bash -c "echo > /dev/tcp/127.0.0.1/$p" 2>/dev/null && break; sleep 0.1; done; done
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(port) --flow-log $D/flows.jsonl 2>$D/p1.err & echo $! > $D/p1.pid
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(stallProxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(stall) --handshake-timeout 2 --flow-log $D/flows.jsonl 2>$D/p2.err & echo $! > $D/p2.pid
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(greetProxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(greet) --flow-log $D/greet.jsonl 2>$D/p3.err & echo $! > $D/p3.pid
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(echoProxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(echo) --flow-log $D/other.jsonl 2>$D/p4.err & echo $! > $D/p4.pid
            for i in $(seq 100); do grep -q listening $D/p1.err 2>/dev/null && grep -q listening $D/p2.err 2>/dev/null && grep -q listening $D/p3.err 2>/dev/null && grep -q listening $D/p4.err 2>/dev/null && break; sleep 0.1; done
            c() { curl -sS --max-time 8 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:$1 "https://origin.test$2" -o $D/body -w '%{http_code} %{size_download}' 2>/dev/null; echo " rc=$?"; }
            s=$(date +%s%N); r=$(c \(stallProxy) /); echo "STALL $r $(( ($(date +%s%N) - s) / 1000000 ))"
            echo "RESET $(c \(proxy) /reset)"
            echo "WS $(python3 $D/ws.py $D/loupe-root.pem \(proxy) 2>&1)"
            echo "GREETED $(python3 $D/greeted.py \(greetProxy) 2>&1)"
            echo "IMAP $(python3 $D/other.py $D/loupe-root.pem \(echoProxy) imap 2>&1)"
            echo "MQTT $(python3 $D/other.py $D/loupe-root.pem \(echoProxy) mqtt 2>&1)"
            sleep 0.3
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 120))
        let line = r.line
        let stallParts = line("STALL").split(separator: " ")
        #expect(stallParts.count == 5 && stallParts[3] == "rc=35" && (1500..<4000).contains(Int(stallParts[4]) ?? 0),
                "a stalled origin fails the client's handshake at the deadline, not at the client's timeout: \(r.out)")
        let reset = line("RESET").split(separator: " ")
        #expect(reset.count == 4 && ["rc=18", "rc=56"].contains(reset[3]) && (1..<1_000_000).contains(Int(reset[2]) ?? 0),
                "a reset mid-body reaches the client as an error with a short body, never as a complete response: \(r.out)")
        #expect(line("WS") == "WS HTTP/1.1 101 Switching Protocols | hello through loupe", "WebSocket through a bumped flow: \(r.out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("deadline passed during upstreamHandshake"), "\(r.out) \(flows)")
        #expect(flows.contains("upstream closed without close_notify"), "\(flows)")
        // The greeting reached the client only because Loupe connected when the client stayed
        // quiet (the handshake deadline would have closed it at 10 s, past the client's 8).
        #expect(line("GREETED") == "GREETED 220 ready | 221 bye after QUIT", "a server-first protocol through the proxy: \(r.out)")
        let greeted = (try? String(contentsOfFile: "\(dir)/greet.jsonl", encoding: .utf8)) ?? ""
        #expect(greeted.contains("the server spoke first") && greeted.contains("\"mode\":\"splice\""), "\(greeted)")
        // Bumped, not HTTP: relayed at once — before, the bytes were held for a blank line that
        // never comes, and the client waited for its answer until it gave up.
        #expect(line("IMAP") == "IMAP got 20 of 20" && line("MQTT") == "MQTT got 18 of 18", "other protocols over TLS through the proxy: \(r.out)")
        let other = (try? String(contentsOfFile: "\(dir)/other.jsonl", encoding: .utf8)) ?? ""
        #expect(other.contains("\"mode\":\"bump\"") && other.contains("not an HTTP/1 request line"), "\(other)")
    }
}
