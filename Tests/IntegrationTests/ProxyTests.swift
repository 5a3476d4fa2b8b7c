import Foundation
import TestSupport
import Testing

/// `loupe proxy` behind a real nft redirect, in a client namespace, against origins in another
/// namespace, with real curl: bump with a Loupe-issued leaf, strict upstream verification that
/// fails exactly where a direct connection fails, no SNI → IP SAN, byte-identical bulk bodies.
@Suite struct ProxyNamespaceTests {
    static let canRun = TestEnv.isRoot && ["ip", "nft", "curl", "openssl", "sha256sum"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs root, ip, nft, curl and openssl (CI has them)"))
    func bumpedThroughARealRedirect() throws {
        let dir = TestEnv.scratch("proxyns")
        defer { TestEnv.remove(dir) }
        let loupe = "LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca \(TestEnv.loupe)"
        // The origin's own PKI (another Loupe state dir, used only as a CA) and Loupe's root.
        for line in [
            "\(loupe) ca init --state-dir \(dir)/origin --provider host-key",
            "\(loupe) ca export --state-dir \(dir)/origin --out \(dir)/origin-root.pem",
            "\(loupe) ca mint --state-dir \(dir)/origin origin.test 10.205.0.2 fd00:205::2 --with-key --out \(dir)/origin.pem",
            "\(loupe) ca init --state-dir \(dir)/loupe --provider host-key",
            "\(loupe) ca export --state-dir \(dir)/loupe --out \(dir)/loupe-root.pem",
            "mkdir -p \(dir)/www && head -c 104857600 /dev/urandom > \(dir)/www/big.bin",
        ] {
            let r = TestEnv.sh(line)
            #expect(r.status == 0, "\(line): \(r)")
        }
        let n = "lx\(getpid() % 100_000)"
        let curl = "ip netns exec $A curl -sS --max-time 60 --cacert $D/loupe-root.pem"
        let script = """
            set -u
            export LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca
            \(TestEnv.namespacePair(n, directory: dir, subnet: "10.205.0"))
            ip -n $A addr add fd00:205::1/64 dev \(n)x nodad && ip -n $B addr add fd00:205::2/64 dev \(n)y nodad
            (cd $D/www && exec ip netns exec $B openssl s_server -accept 443 -cert $D/origin.pem -key $D/origin.pem -WWW -quiet) >/dev/null 2>&1 & echo $! > $D/origin.pid
            # The minimal diversion of this test: TCP/443 from this namespace to the proxy, except
            # the proxy's own upstream sockets, which carry the bypass mark.
            ip netns exec $A nft -f - <<'NFT' || exit 92
            table inet loupe_test {
              chain out {
                type nat hook output priority -100;
                meta mark \(TestEnv.bypassMark) return
                tcp dport 443 redirect to :18443
              }
            }
            NFT
            ip netns exec $A \(TestEnv.loupe) proxy --state-dir $D/loupe --listen [::]:18443 --upstream-ca $D/origin-root.pem --flow-log $D/flows.jsonl 2>$D/proxy.err & echo $! > $D/proxy.pid
            for i in $(seq 100); do grep -q listening $D/proxy.err 2>/dev/null && break; sleep 0.1; done
            for i in $(seq 50); do ip netns exec $B sh -c 'ss -ltn | grep -q ":443 "' && break; sleep 0.1; done
            echo "BUMP $(\(curl) -v --resolve origin.test:443:10.205.0.2 https://origin.test/big.bin -o $D/got.bin -w '%{http_code}' 2>$D/curl.err)"
            grep -E '^\\* +issuer:' $D/curl.err | sed 's/^/ISSUER /'
            echo "SHA $(sha256sum < $D/got.bin | cut -c1-64) $(sha256sum < $D/www/big.bin | cut -c1-64)"
            echo "BYIP $(\(curl) https://10.205.0.2/big.bin -o /dev/null -w '%{http_code}' 2>&1)"
            echo "IPV6 $(\(curl) -v --resolve origin.test:443:fd00:205::2 https://origin.test/ -o /dev/null -w '%{http_code}' 2>$D/curl6.err)"
            grep -E '^\\* +issuer:' $D/curl6.err | sed 's/^/ISSUER6 /'
            echo "BYIP6 $(\(curl) 'https://[fd00:205::2]/' -o /dev/null -w '%{http_code}' 2>&1)"
            \(curl) --resolve wrong.test:443:10.205.0.2 https://wrong.test/ -o /dev/null 2>$D/wrong.err; echo "WRONG rc=$? $(cat $D/wrong.err)"
            # Request smuggling (CL.TE): refused with a 400 by Loupe, never forwarded.
            echo "SMUGGLE $(printf 'POST / HTTP/1.1\\r\\nHost: origin.test\\r\\nContent-Length: 5\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n0\\r\\n\\r\\n' \\
              | ip netns exec $A timeout 10 openssl s_client -quiet -connect 10.205.0.2:443 -servername origin.test -alpn http/1.1 -CAfile $D/loupe-root.pem 2>/dev/null | head -1 | tr -d '\\r')"
            # Clients resume their sessions with Loupe (tickets under its rotating keys), both
            # versions; TLS 1.2 without tickets by session ID.
            for v in tls1_3 tls1_2 "tls1_2 -no_ticket"; do
              n=${v// /}; r=""; for i in 1 2 3; do
                r="$r $(sleep 0.5 | ip netns exec $A timeout 10 openssl s_client -$v -connect 10.205.0.2:443 -servername origin.test -CAfile $D/loupe-root.pem $([ -f $D/sess.$n ] && echo -sess_in $D/sess.$n) -sess_out $D/sess.$n 2>/dev/null | grep -oE '^(New|Reused)')"
              done; echo "RESUME_$n$r"
            done
            # Spliced, to a client reading slower than the origin sends (the origin is held back):
            # the same body, byte for byte.
            ip netns exec $A \(TestEnv.loupe) proxy --state-dir $D/loupe --listen 127.0.0.1:18444 --policy \(TestEnv.packageRoot)/bench/splice-origin.toml --upstream-ca $D/origin-root.pem \\
              --to 10.205.0.2:443 --flow-log $D/splice.jsonl 2>$D/splice.err & echo $! > $D/splice.pid
            for i in $(seq 100); do grep -q listening $D/splice.err 2>/dev/null && break; sleep 0.1; done
            echo "SPLICE $(ip netns exec $A curl -sS --max-time 60 --limit-rate 40M --cacert $D/origin-root.pem --resolve origin.test:18444:127.0.0.1 \\
              https://origin.test:18444/big.bin -o $D/spliced.bin -w '%{http_code}' 2>&1)"
            echo "SPLICESHA x $(sha256sum < $D/spliced.bin | cut -c1-64)"
            sleep 0.3
            ip netns exec $A nft list table inet loupe_test >/dev/null && echo "TABLE present"
            """
        try script.write(toFile: "\(dir)/proxy.sh", atomically: true, encoding: .utf8)
        let run = TestEnv.sh("bash \(dir)/proxy.sh 2>&1", timeout: 300)
        let out = run.out
        let line = TaggedOutput(run).line
        #expect(line("BUMP") == "BUMP 200", "\(out)\n\((try? String(contentsOfFile: "\(dir)/proxy.err", encoding: .utf8)) ?? "")")
        #expect(line("ISSUER").contains("Loupe Root CA"), "the client must see Loupe's leaf: \(out)")
        let sums = line("SHA").split(separator: " ")
        #expect(sums.count == 3 && sums[1] == sums[2], "100 MiB must arrive byte-identical: \(out)")
        #expect(line("SPLICE") == "SPLICE 200", "\(out)\n\((try? String(contentsOfFile: "\(dir)/splice.err", encoding: .utf8)) ?? "")")
        let spliced = line("SPLICESHA").split(separator: " ")
        #expect(spliced.count == 3 && sums.count == 3 && spliced[2] == sums[2], "a spliced 100 MiB arrives byte-identical: \(out)")
        let spliceLog = (try? String(contentsOfFile: "\(dir)/splice.jsonl", encoding: .utf8)) ?? ""
        let splicedClose = spliceLog.split(separator: "\n").first { $0.contains("\"event\":\"closed\"") } ?? ""
        #expect(splicedClose.contains("\"mode\":\"splice\"") && splicedClose.contains("\"sni\":\"origin.test\""), "\(spliceLog)")
        #expect(splicedClose.range(of: "\"bytes_down\":10[45][0-9]{6}[,}]", options: .regularExpression) != nil, "bytes_down counts the spliced body and its records: \(splicedClose)")
        #expect(line("BYIP") == "BYIP 200", "no SNI: the leaf carries the destination IP: \(out)")
        #expect(line("IPV6") == "IPV6 200" && line("ISSUER6").contains("Loupe Root CA"), "IPv6 is diverted and bumped too: \(out)")
        #expect(line("BYIP6") == "BYIP6 200", "\(out)")
        #expect(line("SMUGGLE") == "SMUGGLE HTTP/1.1 400 Bad Request", "\(out)")
        #expect(line("RESUME_tls1_3") == "RESUME_tls1_3 New Reused Reused", "\(out)")
        #expect(line("RESUME_tls1_2") == "RESUME_tls1_2 New Reused Reused", "\(out)")
        #expect(line("RESUME_tls1_2-no_ticket") == "RESUME_tls1_2-no_ticket New Reused Reused", "\(out)")
        #expect(line("WRONG").hasPrefix("WRONG rc=35") && line("WRONG").contains("bad certificate"), "\(out)")
        let flows = (try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? ""
        #expect(flows.contains("\"dst\":\"10.205.0.2:443\""), "the original destination comes from the socket: \(flows)")
        #expect(flows.contains("\"dst\":\"[fd00:205::2]:443\""), "IPv6 original destination: \(flows.suffix(1500))")
        #expect(flows.contains("upstream TLS failed: certificate verify failed: hostname mismatch"), "\(flows)")
        // DESIGN.md "Flow log": both legs' TLS, the upstream certificate and its verification, the leaf, bytes.
        for field in ["\"client_tls\":\"TLSv1.3\"", "\"upstream_tls\":\"TLSv1.3\"", "\"upstream_verify\":\"ok\"", "\"client_cipher\":\"TLS_",
                      "\"leaf_sha256\":\"", "\"upstream_sha256\":\"", "\"upstream_issuer\":\""] {
            #expect(flows.contains(field), "\(field) in the flow log")
        }
        let biggest = flows.split(separator: "\n").compactMap { line -> Int? in
            guard let r = line.range(of: "\"bytes_down\":") else { return nil }
            return Int(line[r.upperBound...].prefix { $0.isNumber })
        }.max() ?? 0
        #expect(biggest > 104_857_600, "bytes_down counts the 100 MiB body: \(biggest)")
        // Per request: method, URL, then the response's status and body size (here delimited by
        // the origin's close_notify, as s_server -WWW answers HTTP/1.0).
        let answered = flows.split(separator: "\n").first { $0.contains("\"event\":\"response\"") && $0.contains("\"url\":\"https://origin.test/big.bin\"") } ?? ""
        #expect(answered.contains("\"method\":\"GET\"") && answered.contains("\"status\":200") && answered.contains("\"bytes\":104857600"), "\(answered)")
        #expect(flows.contains("\"upstream_verify\":\"hostname mismatch\"") || flows.contains("\"upstream_verify\":\"Hostname mismatch\""), "the failed verification is recorded")
        #expect(!TestEnv.sh("ip netns list").out.contains(n), "namespaces must be removed")
    }
}
