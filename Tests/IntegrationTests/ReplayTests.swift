import Foundation
import TestSupport
import Testing

/// `loupe verdict replay` on a capture this test records itself: curl in a client network
/// namespace resolves a name through a real resolver (dnsmasq) in an origin namespace and
/// fetches over TLS, plus one UDP/443 datagram; tcpdump records it all.
@Suite struct ReplayTests {
    static let canRun = TestEnv.isRoot && ["ip", "tcpdump", "dnsmasq", "curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs root, ip, tcpdump, dnsmasq, curl and openssl (CI has them)"))
    func recordedCaptureReplaysAndItsCorpusPasses() throws {
        let dir = TestEnv.scratch("replay")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        #expect(TestEnv.loupe("ca init \(s) --provider host-key").status == 0)
        #expect(TestEnv.loupe("ca export \(s) --out \(dir)/root.pem").status == 0)
        #expect(TestEnv.loupe("ca mint \(s) origin.test --with-key --out \(dir)/leaf.pem").status == 0)
        let n = "lp\(getpid() % 100_000)"
        let script = """
            set -u
            \(TestEnv.namespacePair(n, directory: dir, subnet: "10.203.0", extraCleanup: "rm -rf /etc/netns/$A"))
            ip netns exec $B dnsmasq --keep-in-foreground --no-resolv --no-hosts --listen-address=10.203.0.2 --bind-interfaces \\
              --address=/origin.test/10.203.0.2 --pid-file=$D/dnsmasq.real.pid --log-facility=$D/dnsmasq.log & echo $! > $D/dnsmasq.pid
            ip netns exec $B openssl s_server -accept 443 -cert $D/leaf.pem -key $D/leaf.pem -www -quiet >/dev/null 2>&1 & echo $! > $D/server.pid
            mkdir -p /etc/netns/$A && echo "nameserver 10.203.0.2" > /etc/netns/$A/resolv.conf
            # Immediate mode: otherwise packets wait in the kernel's capture ring for a block to
            # fill or time out, and those still there when tcpdump is stopped are lost.
            ip netns exec $A tcpdump -i \(n)x --immediate-mode -U -w $D/capture.pcap >$D/tcpdump.log 2>&1 & echo $! > $D/tcpdump.pid
            for i in $(seq 50); do grep -q listening $D/tcpdump.log && break; sleep 0.1; done
            for i in $(seq 50); do ip netns exec $B ss -lun | grep -q 10.203.0.2:53 && break; sleep 0.1; done
            sleep 0.5
            echo "CURL $(ip netns exec $A curl -sS --max-time 5 --retry 3 --retry-connrefused --cacert $D/root.pem https://origin.test/ -o /dev/null -w '%{http_code}')"
            ip netns exec $A bash -c 'echo quic-probe > /dev/udp/10.203.0.2/443'
            # Stopped only once the last datagram is in the file (a loaded machine is slow to write it).
            for i in $(seq 100); do tcpdump -nr $D/capture.pcap 'udp dst port 443' 2>/dev/null | grep -q . && break; sleep 0.1; done
            kill -INT $(cat $D/tcpdump.pid); wait $(cat $D/tcpdump.pid) 2>/dev/null
            rm $D/tcpdump.pid
            echo "TCPDUMP $(tail -3 $D/tcpdump.log | tr '\n' ' ')"
            tcpdump -nr $D/capture.pcap 2>/dev/null | sed 's/^/PACKET /'
            """
        try script.write(toFile: "\(dir)/net.sh", atomically: true, encoding: .utf8)
        let net = TestEnv.sh("bash \(dir)/net.sh 2>&1", timeout: 120)
        #expect(net.status == 0 && net.out.contains("CURL 200"), "\(net.out)")
        #expect(!TestEnv.sh("ip netns list").out.contains(n), "namespaces must be removed")

        let policy = "\(TestEnv.packageRoot)/config/policy.toml"
        let replay = TestEnv.loupe("verdict replay --policy \(policy) \(dir)/capture.pcap --emit-corpus \(dir)/frozen.toml")
        #expect(replay.status == 0, "\(replay)")
        let lines = replay.out.split(separator: "\n").map(String.init)
        // With what was captured, should a loaded machine lose packets again.
        #expect(lines.contains { $0.hasPrefix("tcp 10.203.0.1:") && $0.contains("-> 10.203.0.2:443 sni origin.test: connect inspect (inspect-web), hello bump (default)") }, "\(replay.out)\n\(net.out)")
        #expect(lines.contains { $0.hasPrefix("udp 10.203.0.1:") && $0.contains("-> 10.203.0.2:443") && $0.hasSuffix("connect block (no-quic)") }, "\(replay.out)\n\(net.out)")
        #expect(lines.contains { $0.contains("-> 10.203.0.2:53") && $0.hasSuffix("connect allow (default)") }, "\(replay.out)")
        let corpus = try String(contentsOfFile: "\(dir)/frozen.toml", encoding: .utf8)
        #expect(corpus.contains("names  = [\"origin.test\"]"), "DNS answers seen before the flow must name it:\n\(corpus)")
        let frozen = TestEnv.loupe("verdict test --policy \(policy) \(dir)/frozen.toml")
        #expect(frozen.status == 0 && frozen.out.hasSuffix(" passed, 0 failed\n"), "\(frozen)")
        // Tomorrow's policy changes a decision: the frozen corpus catches it.
        let changed = try String(contentsOfFile: policy, encoding: .utf8).replacingOccurrences(of: "hello   = \"bump\"", with: "hello   = \"splice\"")
        try changed.write(toFile: "\(dir)/changed.toml", atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: "\(dir)/lists", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(TestEnv.packageRoot)/config/lists/ads.txt", toPath: "\(dir)/lists/ads.txt")
        let caught = TestEnv.loupe("verdict test --policy \(dir)/changed.toml \(dir)/frozen.toml")
        #expect(caught.status == 1 && caught.out.contains("hello: expected bump, got splice"), "\(caught)")
    }
}
