import Foundation
import TestSupport
import Testing

/// `loupe proxy`'s listeners: one per event loop on one port (SO_REUSEPORT), so a connection is
/// served on the loop that accepted it — and, since the kernel would let any socket of the same
/// user join such a group, a port something else already listens on is refused, not shared.
@Suite struct ListenerTests {
    static let canRun = ["curl", "openssl", "ss"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl, openssl and ss (CI has them)"))
    func oneListenerPerLoopOnOnePortAndAnOccupiedPortRefused() throws {
        let dir = TestEnv.scratch("listeners")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 15), proxy = origin + 1, taken = origin + 2
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test") + """
            echo "LISTENERS $(ss -Hltn "sport = :\(proxy)" | wc -l)"
            echo "LOOPS $(sed -n 's/.*(\\([0-9]*\\) event loops).*/\\1/p' $D/proxy.err)"
            ok=0; for i in $(seq 40); do curl -s --max-time 5 --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) https://origin.test/index.html -o /dev/null -w '%{http_code}\\n' | grep -q 200 && ok=$((ok + 1)); done
            echo "SERVED $ok"
            # A port given by the kernel (0): every listener joins the one the first was given.
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:0 --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(origin) 2>$D/any.err & any=$!
            for i in $(seq 100); do grep -q listening $D/any.err && break; sleep 0.1; done
            port=$(sed -n 's/.*127\\.0\\.0\\.1:\\([0-9]*\\) (.*/\\1/p' $D/any.err)
            echo "ANYPORT ${port:-0} $(ss -Hltn "sport = :${port:-1}" | wc -l)"
            kill $any
            # Something else (with SO_REUSEPORT, as a second agent would have) holds a port.
            /usr/bin/python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); print("held", flush=True); time.sleep(30)' \(taken) > $D/held.out & holder=$!
            for i in $(seq 50); do grep -q held $D/held.out && break; sleep 0.1; done
            $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(taken) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(origin) 2>$D/taken.err; echo "TAKENRC $?"
            echo "TAKENSAYS $(grep -c 'already served by another socket' $D/taken.err)"
            kill $holder
            """
        let r = TestEnv.bash(script, timeout: 120)
        let value = r.value
        #expect(value("PROXYUP") == 1, "the proxy must be up, or nothing below means anything: \(r.out) \(r.err)")
        #expect(value("LOOPS") >= 1 && value("LISTENERS") == value("LOOPS"), "one listener per event loop: \(r.out) \(r.err)")
        #expect(value("SERVED") == 40, "every connection is served, whichever listener took it: \(r.out)")
        let any = r.lines.first { $0.hasPrefix("ANYPORT ") }?.split(separator: " ") ?? []
        #expect(any.count == 3 && Int(any[1]) ?? 0 > 0 && Int(any[2]) == value("LOOPS"), "port 0: all listeners on the port the first got: \(r.out)")
        #expect(value("TAKENRC") == 1 && value("TAKENSAYS") == 1, "an occupied port fails clearly instead of being shared: \(r.out) \(r.err)")
    }
}
