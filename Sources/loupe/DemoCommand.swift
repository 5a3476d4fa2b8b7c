import ArgumentParser
import CA
import Foundation
import Platform

/// `loupe demo`: the agent end to end in a sandbox — a "host" network namespace running
/// `loupe run` on config/loupe.toml + config/policy.toml, an "origin" namespace with web servers
/// and a resolver, and real curl requests that are allowed, blocked, spliced and bumped. It only
/// ever changes the two namespaces it creates, and removes them at the end.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Run the agent in a throwaway namespace pair with real requests; print verdicts, flows and status (root).")

    @Option(help: "Directory holding loupe.toml and policy.toml.") var config: String?
    @Flag(help: "Keep the work directory (state, flow log) for a look afterwards.") var keep = false

    func run() throws {
        try loupe.run {
            guard geteuid() == 0 else { throw CAError("the demo creates network namespaces: run it as root") }
            for tool in ["ip", "nft", "curl", "openssl", "dnsmasq", "python3"] where Subprocess.which(tool) == nil {
                throw CAError("\(tool) is missing; scripts/install-deps installs everything the demo needs")
            }
            let configDir = config ?? CAFiles.directory().map { URL(fileURLWithPath: $0).deletingLastPathComponent().appendingPathComponent("config").path } ?? "config"
            guard FileManager.default.fileExists(atPath: "\(configDir)/loupe.toml") else {
                throw CAError("\(configDir)/loupe.toml not found; pass --config DIR")
            }
            let caDir = CAFiles.directory() ?? "ca"
            let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
            let script = Self.script(loupe: me, config: configDir, ca: caDir, keep: keep)
            let path = NSTemporaryDirectory() + "loupe-demo-\(getpid()).sh"
            try script.write(toFile: path, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let status = system("bash \(path)")
            guard status == 0 else { throw CAError("the demo failed (exit \(status >> 8)); see the output above") }
        }
    }

    static func script(loupe: String, config: String, ca: String, keep: Bool) -> String {
        """
        set -u
        L=\(loupe); C=\(config); export LOUPE_CA_DIR=\(ca)
        W=$(mktemp -d /tmp/loupe-demo.XXXXXX); chmod 755 $W
        A=loupe-demo-host; B=loupe-demo-origin
        agent=
        cleanup() {
          exec 2>/dev/null
          [ -n "$agent" ] && kill -TERM $agent 2>/dev/null && for i in $(seq 50); do kill -0 $agent 2>/dev/null || break; sleep 0.1; done
          for p in $(cat $W/*.pid 2>/dev/null); do kill -9 $p 2>/dev/null; done
          ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; rm -rf /etc/netns/$A
          \(keep ? "echo \"kept: $W\"" : "rm -rf $W")
        }
        trap cleanup EXIT
        step() { printf '\\n\\033[1m== %s\\033[0m\\n' "$*"; }
        show() { printf '\\033[2m$ %s\\033[0m\\n' "$*"; }

        step "sandbox: namespace $A (runs Loupe) and $B (origin web servers and a DNS resolver)"
        ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; ip link del ldemo0 2>/dev/null
        ip netns add $A && ip netns add $B || exit 1
        ip link add ldemo0 type veth peer name ldemo1 && ip link set ldemo0 netns $A && ip link set ldemo1 netns $B
        ip -n $A addr add 10.99.0.1/24 dev ldemo0 && ip -n $B addr add 10.99.0.2/24 dev ldemo1 && ip -n $B addr add 10.99.0.3/24 dev ldemo1
        ip -n $A addr add fd00:99::1/64 dev ldemo0 nodad && ip -n $B addr add fd00:99::2/64 dev ldemo1 nodad
        for ns in $A $B; do ip -n $ns link set lo up; done; ip -n $A link set ldemo0 up; ip -n $B link set ldemo1 up
        mkdir -p /etc/netns/$A $W/www && echo "nameserver 10.99.0.2" > /etc/netns/$A/resolv.conf
        echo "hello from the origin" > $W/www/index.html
        # The origin's certificate comes from a stand-in for the public web PKI, which Loupe trusts upstream.
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $W/web-ca.key -out $W/web-root.pem -days 30 \
          -subj "/O=Demo Web PKI/CN=Demo Public Root" -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $W/origin.key -out $W/origin.csr -subj "/CN=www.example.test" 2>/dev/null
        printf 'subjectAltName=DNS:www.example.test,DNS:online.bank.example,DNS:admin.corp.example,IP:10.99.0.2,IP:fd00:99::2\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' > $W/origin.ext
        openssl x509 -req -in $W/origin.csr -CA $W/web-root.pem -CAkey $W/web-ca.key -CAcreateserial -days 30 -extfile $W/origin.ext -out $W/origin.crt 2>/dev/null
        cat $W/origin.crt $W/origin.key > $W/origin.pem
        (cd $W/www && exec ip netns exec $B python3 -m http.server 80 --bind 10.99.0.2) >/dev/null 2>&1 & echo $! > $W/http.pid
        (cd $W/www && exec ip netns exec $B openssl s_server -accept 443 -cert $W/origin.pem -key $W/origin.pem -WWW -quiet) >/dev/null 2>&1 & echo $! > $W/tls.pid
        ip netns exec $B dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=10.99.0.2 --bind-interfaces \\
          --address=/example.test/10.99.0.2 --address=/bank.example/10.99.0.2 --address=/corp.example/10.99.0.2 \\
          --address=/ads.example/10.99.0.3 --pid-file=$W/dnsmasq.real.pid >/dev/null 2>&1 & echo $! > $W/dns.pid
        echo "origin 10.99.0.2 / fd00:99::2: http :80, https :443 (www.example.test, online.bank.example, admin.corp.example); dns: *.ads.example -> 10.99.0.3"

        step "Loupe's root CA for this sandbox host (sealed store in $W/state)"
        show loupe ca init; $L ca init --state-dir $W/state --provider host-key | sed 's/^/   /'
        $L ca export --state-dir $W/state --out $W/loupe-root.pem
        show loupe ca export --format mdm; $L ca export --state-dir $W/state --format mdm | cut -c1-100 | sed 's/^/   /'

        step "the agent: loupe run --config $C/loupe.toml (policy $C/policy.toml)"
        ip netns exec $A $L run --config $C/loupe.toml --state-dir $W/state --upstream-ca $W/web-root.pem \\
          --control-socket $W/control.sock --flow-log $W/flows.jsonl 2>$W/agent.log & agent=$!
        for i in $(seq 100); do grep -q 'control socket' $W/agent.log 2>/dev/null && break; kill -0 $agent 2>/dev/null || break; sleep 0.1; done
        sed 's/^/   /' $W/agent.log
        grep -q 'control socket' $W/agent.log || { echo "the agent did not start"; exit 1; }
        for i in $(seq 50); do ip netns exec $B sh -c 'ss -ltn | grep -q ":443 "' && break; sleep 0.1; done

        req() { local label=$1; shift; show "$label: curl $*"; ip netns exec $A curl -sS --max-time 4 "$@" -o $W/body -w '   -> HTTP %{http_code}\\n' 2>&1 | sed 's/^curl/   -> curl/'; }
        step "requests from the sandbox host"
        req "allowed (connect: default allow)" http://www.example.test/
        req "blocked by name (connect: block-ads, names from the snooped DNS answer)" http://pixel.ads.example/
        req "bumped (connect: inspect-web, hello: default bump; leaf minted by Loupe)" --cacert $W/loupe-root.pem https://www.example.test/index.html
        ip netns exec $A curl -sS -v --max-time 4 --cacert $W/loupe-root.pem https://www.example.test/index.html -o /dev/null 2>&1 | grep -E '^\\* +(subject|issuer):' | sed 's/^\\* */      /'
        req "bumped over IPv6" --cacert $W/loupe-root.pem --resolve www.example.test:443:fd00:99::2 https://www.example.test/index.html
        req "spliced (hello: splice-banking; the client sees the bank's own certificate)" --cacert $W/web-root.pem https://online.bank.example/index.html
        ip netns exec $A curl -sS -v --max-time 4 --cacert $W/web-root.pem https://online.bank.example/index.html -o /dev/null 2>&1 | grep -E '^\\* +issuer:' | sed 's/^\\* */      /'
        req "blocked request (request: block-admin-upload -> 403 from Loupe)" --cacert $W/loupe-root.pem -X POST --data x https://admin.corp.example/admin/users
        show "QUIC: a UDP datagram to 10.99.0.2:443 (connect: no-quic)"
        ip netns exec $A python3 -c 'import socket
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2); s.connect(("10.99.0.2", 443))
        try: s.send(b"q"); s.recv(1); print("   -> answered")
        except socket.timeout: print("   -> no answer")
        except OSError as e: print(f"   -> refused by ICMP ({e.strerror}): the client falls back to TCP")'
        sleep 0.3

        step "loupe flows (the flow log through the control socket)"
        ip netns exec $A $L flows --control-socket $W/control.sock | sed 's/^/   /'
        step "loupe status"
        ip netns exec $A $L status --control-socket $W/control.sock | sed 's/^/   /'
        step "metrics (Prometheus text, loupe.toml 'metrics')"
        ip netns exec $A curl -sS --max-time 2 http://127.0.0.1:9464/metrics | grep -E '^loupe_(flows|proxy_connections|leaf_cache)_total' | sed 's/^/   /'
        step "stopping the agent (SIGTERM removes its ruleset)"
        kill -TERM $agent; for i in $(seq 50); do kill -0 $agent 2>/dev/null || break; sleep 0.1; done; agent=
        tail -1 $W/agent.log | sed 's/^/   /'
        ip netns exec $A nft list tables | grep -q 'inet loupe' && echo "   ruleset still present!" || echo "   ruleset removed; the sandbox goes next"
        """
    }
}
