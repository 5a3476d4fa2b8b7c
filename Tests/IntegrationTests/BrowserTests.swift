import Foundation
import TestSupport
import Testing

/// A real browser over HTTP/2 through `loupe proxy` in front of nginx: headless Chromium loads a
/// page with a script, an image and fetches, one of which the request stage blocks. The refused
/// stream gets its 403 while the connection carries on — the page's later requests (their
/// headers compressed against what Chromium sent before, the refused request's included) are
/// served, and the refused one never reaches nginx. And a WebSocket from the browser, through
/// the proxy's HTTP/1.1 upgrade path, to an echoing origin.
@Suite struct BrowserTests {
    static let canRun = ["chromium", "nginx", "openssl", "certutil"].allSatisfy(TestEnv.has)

    /// Shell lines: an NSS database trusting Loupe's root and the origin's ($D/loupe-root.pem,
    /// $D/origin-root.pem) as Chromium's, then `dom` set to the DOM of `url` once loaded, in a
    /// fresh profile (origin.test is 127.0.0.1).
    static func chromiumDump(_ url: String) -> String {
        """
        [ -d $D/home/.pki/nssdb ] || { mkdir -p $D/home/.pki/nssdb && certutil -d sql:$D/home/.pki/nssdb -N --empty-password \\
          && certutil -d sql:$D/home/.pki/nssdb -A -t C,, -n loupe -i $D/loupe-root.pem && certutil -d sql:$D/home/.pki/nssdb -A -t C,, -n origin -i $D/origin-root.pem; }
        dom=$(HOME=$D/home timeout 60 chromium --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir=$(mktemp -d -p $D) \\
          --host-resolver-rules="MAP origin.test 127.0.0.1" --virtual-time-budget=10000 --dump-dom \(url) 2>>$D/chromium.err)
        """
    }

    static let page = """
        <html><head><script src="/app.js"></script></head><body><img src="/pixel.txt"><p id="out">loading</p>
        <script>
        (async () => {
          const blocked = await fetch('/private/report.txt').then(r => r.status, e => 'error ' + e);
          const ok = await fetch('/public.txt').then(r => r.text(), e => 'error ' + e);
          const again = await fetch('/public.txt?again').then(r => r.text(), e => 'error ' + e);
          document.getElementById('out').textContent = `blocked=${blocked} ok=${ok.trim()} again=${again.trim()} app=${window.appLoaded}`;
        })();
        </script></body></html>
        """

    @Test(.enabled(if: canRun, "needs chromium, nginx (nginx-light), openssl and certutil (scripts/install-deps installs them)"))
    func chromiumOverHTTP2KeepsItsConnectionAcrossARefusedRequest() throws {
        let dir = TestEnv.scratch("browser")
        defer { TestEnv.remove(dir) }
        let base = TestEnv.port(slot: 18), nginx = base + 1, proxy = base + 2
        try Self.page.write(toFile: "\(dir)/index.html", atomically: true, encoding: .utf8)
        let policy = "[defaults]\nconnect = \"inspect\"\nhello = \"bump\"\nrequest = \"allow\"\n[[rule]]\nname = \"no-private\"\nstage = \"request\"\npath = [\"/private/\"]\naction = \"block\"\nreason = \"private reports stay inside\"\n"
        try policy.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        let script = LoopbackProxy.preamble(dir: dir, origin: base + 8, proxy: base + 9, name: "origin.test") + """
            mkdir -p $D/html/private && cp $D/index.html $D/html/index.html
            echo 'window.appLoaded = true;' > $D/html/app.js; echo px > $D/html/pixel.txt
            echo public-ok > $D/html/public.txt; echo secret-report > $D/html/private/report.txt
            openssl pkey -in $D/origin.pem -out $D/origin.key && openssl x509 -in $D/origin.pem -out $D/origin.crt
            cat > $D/nginx.conf <<EOF
            daemon off; master_process off; pid $D/nginx.pid; error_log $D/nginx.log;
            events {}
            http { log_format h2 '\\$server_protocol \\$request_uri \\$status'; access_log $D/access.log h2; types { text/html html; application/javascript js; text/plain txt; }
                   server { listen 127.0.0.1:\(nginx) ssl http2; ssl_certificate $D/origin.crt; ssl_certificate_key $D/origin.key; root $D/html; } }
            EOF
            nginx -c $D/nginx.conf -p $D >>$D/nginx.log 2>&1 & echo $! > $D/nginx.pid2
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(nginx) --policy $D/policy.toml --flow-log $D/flows.jsonl 2>$D/pb.err & echo $! > $D/pb.pid
            for i in $(seq 100); do grep -q listening $D/pb.err 2>/dev/null && break; sleep 0.1; done
            for i in $(seq 50); do timeout 1 bash -c "echo > /dev/tcp/127.0.0.1/\(nginx)" 2>/dev/null && break; sleep 0.1; done
            \(Self.chromiumDump("https://origin.test:\(proxy)/"))
            echo "DOM $(echo "$dom" | grep -o 'blocked=[^<]*')"
            sleep 0.5
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 180))
        #expect(r.line("DOM") == "DOM blocked=403 ok=public-ok again=public-ok app=true", "\(r.out)")
        let access = (try? String(contentsOfFile: "\(dir)/access.log", encoding: .utf8)) ?? ""
        for uri in ["/", "/app.js", "/pixel.txt", "/public.txt", "/public.txt?again"] {
            #expect(access.contains("HTTP/2.0 \(uri) 200"), "nginx served \(uri) over HTTP/2: \(access)")
        }
        #expect(!access.contains("/private/"), "the refused request never reached nginx: \(access)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"rule\":\"no-private\"") && flows.contains("\"url\":\"https://origin.test:\(proxy)/private/report.txt\""), "\(flows)")
        #expect(flows.contains("\"client_alpn\":\"h2\"") && flows.contains("\"upstream_alpn\":\"h2\""), "ALPN h2 on both legs: \(flows)")
    }
}

extension BrowserTests {
    /// A page and its WebSocket echo, HTTP/1.1 over TLS (Python's ssl): `ORIGIN CERT PORT`. The
    /// page's image is answered only once the echo went out: the browser's virtual time (which
    /// `--dump-dom` waits on) stands still while a fetch is pending, not while a WebSocket is.
    static let webSocketOrigin = #"""
        import base64, hashlib, socket, ssl, sys, threading
        page = b"""<html><body><img src="/wait"><p id="out">waiting</p><script>
        const ws = new WebSocket('wss://' + location.host + '/ws');
        ws.onopen = () => ws.send('hello from chromium');
        ws.onmessage = e => { document.getElementById('out').textContent = 'echo: ' + e.data; ws.close(); };
        ws.onerror = () => { document.getElementById('out').textContent = 'websocket error'; };
        </script></body></html>"""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1])
        echoed = threading.Event()
        def recv_exact(s, n):
            b = b""
            while len(b) < n:
                c = s.recv(n - len(b))
                if not c: raise EOFError
                b += c
            return b
        def serve(conn):
            try:
                s = ctx.wrap_socket(conn, server_side=True)
                while True:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        c = s.recv(4096)
                        if not c: return
                        head += c
                    path = head.split(b" ")[1]
                    if path == b"/wait":  # one echo per page: the next page waits for its own
                        echoed.wait(10); echoed.clear()
                    if path != b"/ws":
                        body = page if path == b"/" else b"none"
                        s.sendall(b"HTTP/1.1 %d OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % (200 if path == b"/" else 404, len(body)) + body)
                        continue
                    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
                    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                    while True:  # echo text frames (masked, short) until a close frame
                        b0, b1 = recv_exact(s, 2)
                        n = b1 & 0x7F
                        mask = recv_exact(s, 4); data = bytes(c ^ mask[i % 4] for i, c in enumerate(recv_exact(s, n)))
                        if b0 & 0x0F == 8:
                            s.sendall(bytes([0x88, len(data)]) + data); return
                        s.sendall(bytes([0x81, len(data)]) + data)
                        echoed.set()
            except Exception as e:
                print("origin:", e, file=sys.stderr)
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", int(sys.argv[2]))); l.listen(16)
        while True:
            c, _ = l.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
        """#

    @Test(.enabled(if: canRun, "needs chromium, nginx (nginx-light), openssl and certutil (scripts/install-deps installs them)"))
    func chromiumWebSocketThroughLoupe() throws {
        let dir = TestEnv.scratch("browser-ws")
        defer { TestEnv.remove(dir) }
        let base = TestEnv.port(slot: 18), origin = base + 11, proxy = base + 12
        try Self.webSocketOrigin.write(toFile: "\(dir)/ws-origin.py", atomically: true, encoding: .utf8)
        let script = LoopbackProxy.preamble(dir: dir, origin: base + 18, proxy: base + 19, name: "origin.test") + """
            python3 $D/ws-origin.py $D/origin.pem \(origin) 2>$D/ws-origin.err & echo $! > $D/ws.pid
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(origin) --flow-log $D/flows.jsonl 2>$D/pw.err & echo $! > $D/pw.pid
            for i in $(seq 100); do grep -q listening $D/pw.err 2>/dev/null && break; sleep 0.1; done
            for i in $(seq 50); do timeout 1 bash -c "echo > /dev/tcp/127.0.0.1/\(origin)" 2>/dev/null && break; sleep 0.1; done
            \(Self.chromiumDump("https://origin.test:\(origin)/"))
            echo "DIRECT $(echo "$dom" | grep -o '<p id="out">[^<]*' | sed 's/<p id="out">//')"
            \(Self.chromiumDump("https://origin.test:\(proxy)/"))
            echo "DOM $(echo "$dom" | grep -o '<p id="out">[^<]*' | sed 's/<p id="out">//')"
            sleep 0.5
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 180))
        #expect(r.line("DIRECT") == "DIRECT echo: hello from chromium", "the origin echoes direct: \(r.out)")
        #expect(r.line("DOM") == "DOM echo: hello from chromium", "\(r.out) \((try? String(contentsOfFile: "\(dir)/ws-origin.err", encoding: .utf8)) ?? "")")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"url\":\"https://origin.test:\(proxy)/ws\"") && flows.contains("\"status\":101"), "the upgrade was decided and answered: \(flows)")
    }
}
