import Foundation
import TestSupport
import Testing

/// `loupe run` with `gateway = true` on a router between two namespaces: a client whose default
/// route is the gateway, and origins (HTTP, TLS, a resolver) behind it. The flows decided are
/// forwarded ones — prerouting, forward — not the gateway's own; every rule lives in the test's
/// namespaces.
@Suite(.serialized) struct GatewayTests {
    static let canRun = TestEnv.isRoot && ["ip", "nft", "curl", "openssl", "dnsmasq", "python3", "iptables-nft"].allSatisfy(TestEnv.has)

    /// The host agent test's policy (reject 82, drop 81, names, inspect 443), and a request rule.
    static let policy = AgentNamespaceTests.policy + """

        [[rule]]
        name = "no-admin"
        stage = "request"
        path = ["/admin"]
        action = "block"
        """

    @Test(.enabled(if: canRun, "needs root, ip, nft, iptables-nft, curl, openssl, dnsmasq, python3 (CI has them)"))
    func forwardedFlowsAreDecided() throws {
        let dir = TestEnv.scratch("gateway")
        defer { if ProcessInfo.processInfo.environment["LOUPE_KEEP"] == nil { TestEnv.remove(dir) } }
        let n = "lg\(getpid() % 10_000)"
        let script = """
            set -u
            export LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca
            L=\(TestEnv.loupe); D=\(dir); C=\(n)c; G=\(n)g; O=\(n)o
            cleanup() {
              for p in $(cat $D/*.pid 2>/dev/null); do kill -9 $p 2>/dev/null; done
              for ns in $C $G $O; do ip netns del $ns 2>/dev/null; done
              rm -rf /etc/netns/$C
            }
            trap cleanup EXIT
            ip netns add $C && ip netns add $G && ip netns add $O || exit 90
            ip link add \(n)a type veth peer name \(n)b && ip link add \(n)x type veth peer name \(n)y || exit 91
            ip link set \(n)a netns $C && ip link set \(n)b netns $G && ip link set \(n)x netns $G && ip link set \(n)y netns $O
            ip -n $C addr add 10.221.1.2/24 dev \(n)a && ip -n $G addr add 10.221.1.1/24 dev \(n)b
            ip -n $G addr add 10.221.2.1/24 dev \(n)x && ip -n $O addr add 10.221.2.2/24 dev \(n)y && ip -n $O addr add 10.221.2.3/24 dev \(n)y
            for ns in $C $G $O; do ip -n $ns link set lo up; done
            ip -n $C link set \(n)a up && ip -n $G link set \(n)b up && ip -n $G link set \(n)x up && ip -n $O link set \(n)y up
            ip -n $C route add default via 10.221.1.1 && ip -n $O route add default via 10.221.2.1
            ip -n $C addr add fd00:221:1::2/64 dev \(n)a nodad && ip -n $G addr add fd00:221:1::1/64 dev \(n)b nodad
            ip -n $G addr add fd00:221:2::1/64 dev \(n)x nodad && ip -n $O addr add fd00:221:2::2/64 dev \(n)y nodad
            ip -n $C -6 route add default via fd00:221:1::1 && ip -n $O -6 route add default via fd00:221:2::1
            ip netns exec $G sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
            mkdir -p $D/www /etc/netns/$C && echo "nameserver 10.221.2.2" > /etc/netns/$C/resolv.conf
            echo hello > $D/www/index.html && mkdir -p $D/www/admin && echo secret > $D/www/admin/index.html
            $L ca init --state-dir $D/origin --provider host-key >/dev/null && $L ca export --state-dir $D/origin --out $D/origin-root.pem
            $L ca mint --state-dir $D/origin origin.test 10.221.2.2 fd00:221:2::2 --with-key --out $D/origin.pem >/dev/null
            $L ca init --state-dir $D/state --provider host-key >/dev/null && $L ca export --state-dir $D/state --out $D/loupe-root.pem
            \(TestEnv.httpOrigins(in: "$O", ports: [80, 81, 82]))
            (cd $D/www && exec ip netns exec $O openssl s_server -accept 443 -cert $D/origin.pem -key $D/origin.pem -WWW -quiet) >/dev/null 2>&1 & echo $! > $D/tls.pid
            ip netns exec $O dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=10.221.2.2 --bind-interfaces \\
              --address=/ok.test/10.221.2.2 --address=/blocked.test/10.221.2.3 --pid-file=$D/dnsmasq.real.pid >/dev/null 2>&1 & echo $! > $D/dnsmasq.pid
            for i in $(seq 50); do ip netns exec $O sh -c 'ss -ltn | grep -q ":82 " && ss -ltn | grep -q ":443 "' && break; sleep 0.1; done
            cat > $D/policy.toml <<'POLICY'
            \(Self.policy)
            POLICY
            printf 'gateway = true\\nmetrics = ""\\n' > $D/loupe.toml
            ip netns exec $G $L run --config $D/loupe.toml --state-dir $D/state --policy $D/policy.toml --upstream-ca $D/origin-root.pem \\
              --control-socket $D/control.sock --flow-log $D/flows.jsonl 2>$D/agent.err & echo $! > $D/agent.pid
            for i in $(seq 100); do grep -q 'control socket' $D/agent.err && break; sleep 0.1; done
            c() { ip netns exec $C curl -sS --max-time ${T:-5} "$@" -o /dev/null -w '%{http_code}' 2>/dev/null; echo " rc=$?"; }
            echo "ALLOW $(c http://10.221.2.2/)"
            s=$(date +%s%N); r=$(c http://10.221.2.2:82/); echo "REJECT $r $(( ($(date +%s%N) - s) / 1000000 ))"
            echo "DROP $(T=2 c http://10.221.2.2:81/)"
            echo "DNSOK $(c http://ok.test/)"
            echo "DNSBLOCKED $(c http://blocked.test/)"
            echo "BUMP $(ip netns exec $C curl -sS -v --max-time 5 --cacert $D/loupe-root.pem --resolve origin.test:443:10.221.2.2 https://origin.test/index.html -o /dev/null 2>&1 | grep -c 'issuer: .*Loupe Root CA') $(c --cacert $D/loupe-root.pem --resolve origin.test:443:10.221.2.2 https://origin.test/index.html)"
            echo "ADMIN $(c --cacert $D/loupe-root.pem --resolve origin.test:443:10.221.2.2 https://origin.test/admin/index.html)"
            echo "UNTRUSTED $(c --resolve origin.test:443:10.221.2.2 https://origin.test/)"
            echo "ALLOW6 $(c 'http://[fd00:221:2::2]/')"
            echo "REJECT6 $(c 'http://[fd00:221:2::2]:82/')"
            echo "BUMP6 $(c --cacert $D/loupe-root.pem --resolve 'origin.test:443:[fd00:221:2::2]' https://origin.test/index.html)"
            echo "OWN $(ip netns exec $G curl -sS --max-time 5 http://10.221.2.2:82/ -o /dev/null -w '%{http_code}' 2>/dev/null; echo " rc=$?")"
            kill -TERM $(cat $D/agent.pid); for i in $(seq 50); do kill -0 $(cat $D/agent.pid) 2>/dev/null || break; sleep 0.1; done
            echo "AFTERSTOP $(ip netns exec $G nft list table inet loupe >/dev/null 2>&1 && echo table-left || echo table-gone) $(ip netns exec $G iptables-nft -t mangle -n -L LOUPE-QUEUE >/dev/null 2>&1 && echo chain-left || echo chain-gone) $(c http://10.221.2.2:82/)"
            echo "HOSTCLEAN $(nft list tables | grep -c 'inet loupe')"
            """
        try script.write(toFile: "\(dir)/gateway.sh", atomically: true, encoding: .utf8)
        let r = TaggedOutput(TestEnv.sh("bash \(dir)/gateway.sh 2>&1", timeout: 300))
        let out = r.out + "\n--- agent.err ---\n" + ((try? String(contentsOfFile: "\(dir)/agent.err", encoding: .utf8)) ?? "").suffix(3000)
        #expect(r.line("ALLOW") == "ALLOW 200 rc=0", "\(out)")
        let reject = r.line("REJECT").split(separator: " ")
        #expect(reject.count == 4 && reject[2] == "rc=7" && (Int(reject[3]) ?? 9999) < 1000, "a forwarded flow is rejected at once: \(out)")
        #expect(r.line("DROP") == "DROP 000 rc=28", "…or dropped: \(out)")
        #expect(r.line("DNSOK") == "DNSOK 200 rc=0", "\(out)")
        #expect(r.line("DNSBLOCKED") == "DNSBLOCKED 000 rc=7", "a name the client resolved through the gateway decides: \(out)")
        #expect(r.line("BUMP") == "BUMP 1 200 rc=0", "forwarded TLS is inspected: \(out)")
        #expect(r.line("ADMIN") == "ADMIN 403 rc=0", "and its requests decided: \(out)")
        #expect(r.line("UNTRUSTED") == "UNTRUSTED 000 rc=60", "\(out)")
        #expect(r.line("ALLOW6") == "ALLOW6 200 rc=0" && r.line("REJECT6") == "REJECT6 000 rc=7", "forwarded IPv6 is decided: \(out)")
        #expect(r.line("BUMP6") == "BUMP6 200 rc=0", "…and inspected: \(out)")
        #expect(r.line("OWN") == "OWN 000 rc=7", "the gateway's own flows are decided too: \(out)")
        #expect(r.line("AFTERSTOP") == "AFTERSTOP table-gone chain-gone 200 rc=0", "SIGTERM removes the ruleset (the FORWARD jump too) and forwarding goes on: \(out)")
        #expect(r.line("HOSTCLEAN") == "HOSTCLEAN 0", "the host's own ruleset is untouched")
        let flows = ((try? String(contentsOfFile: "\(dir)/flows.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
        #expect(flows.contains { $0.contains("\"rule\":\"reject-82\"") && $0.contains("\"src\":\"10.221.1.2:") }, "forwarded flows are logged with the client's address: \(flows.prefix(20))")
        #expect(flows.contains { $0.contains("\"names\":[\"blocked.test\"]") && $0.contains("\"verdict\":\"block\"") }, "\(flows.prefix(20))")
        #expect(flows.contains { $0.contains("\"stage\":\"request\"") && $0.contains("\"rule\":\"no-admin\"") }, "\(flows.prefix(20))")
        #expect(!TestEnv.sh("ip netns list").out.contains(n), "namespaces must be removed")
    }
}
