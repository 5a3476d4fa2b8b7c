import Foundation
import TestSupport
import Testing

/// A real browser over HTTP/2 through `loupe proxy` in front of nginx: headless Chromium loads a
/// page with a script, an image and fetches, one of which the request stage blocks. The refused
/// stream gets its 403 while the connection carries on — the page's later requests (their
/// headers compressed against what Chromium sent before, the refused request's included) are
/// served, and the refused one never reaches nginx.
@Suite struct BrowserTests {
    static let canRun = ["chromium", "nginx", "openssl", "certutil"].allSatisfy(TestEnv.has)

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
            mkdir -p $D/home/.pki/nssdb && certutil -d sql:$D/home/.pki/nssdb -N --empty-password && certutil -d sql:$D/home/.pki/nssdb -A -t C,, -n loupe -i $D/loupe-root.pem
            dom=$(HOME=$D/home timeout 60 chromium --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir=$D/profile \\
              --host-resolver-rules="MAP origin.test 127.0.0.1" --virtual-time-budget=10000 --dump-dom https://origin.test:\(proxy)/ 2>$D/chromium.err)
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
