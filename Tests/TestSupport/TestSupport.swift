import Foundation
import Platform

/// Shared helpers for Loupe's tests: scratch directories, real tools, a real TPM simulator.
public enum TestEnv {
    /// The mark `loupe proxy` sets on its upstream sockets by default (Divert's
    /// `Marks().bypass`; DivertTests holds the two equal): test redirects let it pass.
    public static let bypassMark = "0x6000000"

    /// A loopback port for test `slot` (1…20): each slot its own thousand below the ephemeral
    /// range (32768+), so suites running in parallel never collide with each other or with
    /// clients' source ports; `+ 0…99` are free for the test's own use.
    public static func port(slot: Int) -> Int { 10_000 + slot * 1_000 + Int(getpid() % 9) * 100 }

    public static var isRoot: Bool { geteuid() == 0 }
    public static func has(_ tool: String) -> Bool { Subprocess.which(tool) != nil }

    /// A fresh private directory under /tmp.
    public static func scratch(_ name: String = "t") -> String {
        let path = "/tmp/loupe-test-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        precondition(mkdir(path, 0o700) == 0, "cannot create \(path)")
        return path
    }

    public static func remove(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    /// Runs a shell command line; returns status and combined output.
    @discardableResult
    public static func sh(_ command: String, stdin: [UInt8] = [], timeout: TimeInterval = 120) -> (status: Int32, out: String, err: String) {
        do {
            let r = try Subprocess.run("/bin/sh", ["-c", command], stdin: stdin, timeout: timeout)
            return (r.status, r.stdoutText, r.stderrText)
        } catch {
            return (-1, "", "\(error)")
        }
    }

    /// The package root (…/Tests/TestSupport/TestSupport.swift → …).
    public static let packageRoot: String = {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    }()

    /// The built `loupe` executable beside the test bundle (swift test builds it first).
    public static let loupe: String = {
        let beside = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("loupe").path
        if FileManager.default.isExecutableFile(atPath: beside) { return beside }
        return "\(packageRoot)/.build/debug/loupe"
    }()

    /// Runs `loupe` with arguments (shell-quoted by the caller where needed).
    @discardableResult
    public static func loupe(_ arguments: String, stdin: [UInt8] = [], timeout: TimeInterval = 120) -> (status: Int32, out: String, err: String) {
        sh("LOUPE_CA_DIR='\(packageRoot)/ca' '\(loupe)' \(arguments)", stdin: stdin, timeout: timeout)
    }
}

/// A real TPM 2.0 simulator (swtpm) on loopback, with its own state directory.
public final class SoftwareTPM: @unchecked Sendable {
    public let stateDirectory: String
    public let port: Int
    private let pidFile: String

    public var tcti: String { "swtpm:host=127.0.0.1,port=\(port)" }

    public init() throws {
        stateDirectory = TestEnv.scratch("swtpm")
        pidFile = "\(stateDirectory)/swtpm.pid"
        var lastError = ""
        for _ in 0..<20 {
            let port = Int.random(in: 21_000...32_000)   // above TestEnv.port slots, below ephemeral ports
            // system(), not a pipe: the daemon would inherit and hold the pipe open forever.
            let log = "\(stateDirectory)/start.log"
            let status = system("swtpm socket --tpm2 --tpmstate dir=\(stateDirectory) --server type=tcp,port=\(port),bindaddr=127.0.0.1 --ctrl type=tcp,port=\(port + 1),bindaddr=127.0.0.1 --flags not-need-init,startup-clear --daemon --pid file=\(pidFile) --log file=\(stateDirectory)/swtpm.log </dev/null >\(log) 2>&1")
            if status == 0 {
                self.port = port
                // Wait until it answers.
                for _ in 0..<50 where TestEnv.sh("tpm2_getcap -T \(tcti) properties-fixed >/dev/null 2>&1").status != 0 { usleep(100_000) }
                return
            }
            let r = (err: (try? String(contentsOfFile: log, encoding: .utf8)) ?? "exit \(status)", 0)
            lastError = r.err
        }
        throw CommandError(command: "swtpm", reason: "could not start: \(lastError)")
    }

    public func stop() {
        if let pid = try? String(contentsOfFile: pidFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), let p = Int32(pid) {
            kill(p, SIGKILL)
        }
        TestEnv.remove(stateDirectory)
    }
}

/// A long-running helper process (openssl s_server, ...) with output to a log file, not a pipe.
public final class BackgroundProcess: @unchecked Sendable {
    let process = Process()
    public let log: String

    public init(_ command: String, log: String) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec \(command)"]
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    public var isRunning: Bool { process.isRunning }
    public var pid: Int32 { process.processIdentifier }

    public func stop() {
        // SIGKILL: children of the test runner may inherit a mask that blocks SIGTERM.
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// A TLS server (openssl s_server -www) on 127.0.0.1 serving `certFile`/`keyFile` with `chainFile`.
    public static func tlsServer(cert certFile: String, key keyFile: String, chain chainFile: String? = nil, directory: String) throws -> (BackgroundProcess, Int) {
        for _ in 0..<10 {
            let port = Int.random(in: 21_000...32_000)   // above TestEnv.port slots, below ephemeral ports
            let chain = chainFile.map { "-cert_chain \($0)" } ?? ""
            let server = try BackgroundProcess("openssl s_server -accept 127.0.0.1:\(port) -cert \(certFile) -key \(keyFile) \(chain) -www -quiet", log: "\(directory)/s_server-\(port).log")
            for _ in 0..<50 {
                if TestEnv.sh("curl -sk -o /dev/null --max-time 2 https://127.0.0.1:\(port)/").status == 0 { return (server, port) }
                if !server.isRunning { break }
                usleep(100_000)
            }
            server.stop()
        }
        throw CommandError(command: "openssl s_server", reason: "did not start")
    }
}

extension TestEnv {
    /// Bash lines that build two network namespaces joined by a veth pair — `$A` (the client
    /// side, `subnet`.1/24) and `$B` (the origin side, `subnet`.2/24) — and tear everything down
    /// on exit: helper processes whose pids are in `$D/*.pid`, then the namespaces.
    public static func namespacePair(_ name: String, directory: String, subnet: String, extraCleanup: String = "") -> String {
        """
        A=\(name)a; B=\(name)b; D=\(directory)
        cleanup() {
          for p in $(cat $D/*.pid 2>/dev/null); do kill -9 $p 2>/dev/null; done
          ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null
          \(extraCleanup)
        }
        trap cleanup EXIT
        ip netns add $A && ip netns add $B || exit 90
        ip link add \(name)x type veth peer name \(name)y || exit 91
        ip link set \(name)x netns $A && ip link set \(name)y netns $B
        ip -n $A addr add \(subnet).1/24 dev \(name)x && ip -n $B addr add \(subnet).2/24 dev \(name)y
        for ns in $A $B; do ip -n $ns link set lo up; done
        ip -n $A link set \(name)x up && ip -n $B link set \(name)y up
        """
    }

    /// Bash lines that serve `$D/www` over plain HTTP on `ports` (IPv4 and IPv6) in `namespace`,
    /// the server's pid in `$D/http.pid`.
    public static func httpOrigins(in namespace: String, ports: [Int]) -> String {
        """
        cat > $D/serve.py <<'PY'
        import http.server, socket, sys, threading, os
        os.chdir(sys.argv[1])
        class S(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6
            def server_bind(self):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                super().server_bind()
        class H(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *a): pass
        for p in (\(ports.map(String.init).joined(separator: ", ")),):
            threading.Thread(target=S(("::", p), H).serve_forever, daemon=True).start()
        threading.Event().wait()
        PY
        ip netns exec \(namespace) python3 $D/serve.py $D/www >/dev/null 2>&1 & echo $! > $D/http.pid
        """
    }
}

/// Origins in namespace B on ports 4431…(4430 + `origins`), `$D/loupe` initialised, and
/// `loupe proxy` (with `proxyFlags`, upstream trust `$D/origin-root.pem`) in namespace A
/// catching TCP to those ports through an nft redirect — its own upstream sockets carry the
/// bypass mark and pass. `servers` starts the origins (in $B); the script waits for all of
/// them, counted by distinct port (a server may listen on IPv4 and IPv6 both), and prints
/// `LISTENING n` and each origin's stderr that is not empty (`$D/o<i>.err`).
public enum RedirectedProxy {
    /// Origin `i`: `openssl s_server` in $B on port 4431 + i with `$D/o<i>.pem` (chain and key).
    public static func server(_ i: Int, flags: String = "") -> String {
        "ip netns exec $B openssl s_server -accept \(4431 + i) -cert $D/o\(i).pem -key $D/o\(i).pem -cert_chain $D/o\(i).pem -www -quiet \(flags) >/dev/null 2>$D/o\(i).err & echo $! > $D/o\(i).pid\n"
    }

    /// `setup`, then `probes`, run as one script in `directory`: its output, its lines, and the
    /// listening report (`LISTENING n`, then each origin's error) a test asserts before cases.
    public static func run(_ name: String, directory: String, subnet: String, origins: Int, servers: String, probes: String,
                           proxyFlags: String = "", timeout: TimeInterval) throws -> (out: String, lines: [String], listening: [String]) {
        let script = setup(name, directory: directory, subnet: subnet, origins: origins, servers: servers, proxyFlags: proxyFlags) + probes
        try script.write(toFile: "\(directory)/script.sh", atomically: true, encoding: .utf8)
        let out = TestEnv.sh("bash \(directory)/script.sh 2>&1", timeout: timeout).out
        let lines = out.split(separator: "\n").map(String.init)
        return (out, lines, lines.filter { $0.hasPrefix("LISTENING") || $0.hasPrefix("ORIGIN ERROR") })
    }

    public static func setup(_ name: String, directory: String, subnet: String, origins: Int, servers: String, proxyFlags: String = "") -> String {
        let loupe = "LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca \(TestEnv.loupe)"
        return """
            set -u
            \(TestEnv.namespacePair(name, directory: directory, subnet: subnet))
            \(loupe) ca init --state-dir $D/loupe --provider host-key >/dev/null && \(loupe) ca export --state-dir $D/loupe --out $D/loupe-root.pem
            \(servers)
            ip netns exec $A nft -f - <<'NFT' || exit 92
            table ip loupe_test {
              chain out {
                type nat hook output priority -100;
                meta mark \(TestEnv.bypassMark) return
                tcp dport 4431-\(4430 + origins) redirect to :18443
              }
            }
            NFT
            LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca ip netns exec $A \(TestEnv.loupe) proxy --state-dir $D/loupe --listen 0.0.0.0:18443 --upstream-ca $D/origin-root.pem \(proxyFlags) 2>$D/proxy.err &
            echo $! > $D/proxy.pid
            for i in $(seq 100); do grep -q listening $D/proxy.err 2>/dev/null && break; sleep 0.1; done
            listening() { ip netns exec $B ss -ltnH | awk '{print $4}' | sed 's/.*://' | sort -u | awk '$1 >= 4431 && $1 <= \(4430 + origins)' | wc -l; }
            for i in $(seq 100); do [ "$(listening)" -ge \(origins) ] && break; sleep 0.1; done
            echo "LISTENING $(listening)"
            for f in $D/o*.err; do [ -s $f ] && echo "ORIGIN ERROR $f: $(head -c 300 $f)"; done

            """
    }
}

/// A bash preamble for proxy tests on loopback: an origin (`openssl s_server -WWW` serving
/// `$D/www/index.html` = "hi", under its own test root `$D/origin-root.pem`, for `name`) and
/// `loupe proxy --to` it on `proxy` (Loupe's root in `$D/loupe-root.pem`, stderr in
/// `$D/proxy.err`), both ready when it ends; `$L` is loupe, `$D` the directory.
public enum LoopbackProxy {
    public static func preamble(dir: String, origin: Int, proxy: Int, name: String, originFlags: String = "", proxyFlags: String = "") -> String {
        """
        set -u
        export LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca
        L=\(TestEnv.loupe); D=\(dir)
        trap 'kill -9 $(cat $D/*.pid 2>/dev/null) 2>/dev/null' EXIT
        $L ca init --state-dir $D/origin --provider host-key >/dev/null && $L ca export --state-dir $D/origin --out $D/origin-root.pem
        $L ca mint --state-dir $D/origin \(name) --with-key --out $D/origin.pem >/dev/null
        $L ca init --state-dir $D/loupe --provider host-key >/dev/null && $L ca export --state-dir $D/loupe --out $D/loupe-root.pem
        mkdir -p $D/www && echo hi > $D/www/index.html
        (cd $D/www && exec openssl s_server -accept 127.0.0.1:\(origin) -cert $D/origin.pem -key $D/origin.pem -WWW -quiet \(originFlags)) >/dev/null 2>&1 & echo $! > $D/origin.pid
        $L proxy --state-dir $D/loupe --listen 127.0.0.1:\(proxy) --upstream-ca $D/origin-root.pem --to 127.0.0.1:\(origin) \(proxyFlags) 2>$D/proxy.err & echo $! > $D/proxy.pid
        for i in $(seq 300); do grep -q listening $D/proxy.err 2>/dev/null && break; sleep 0.1; done
        for i in $(seq 150); do ss -ltnH "sport = :\(origin)" | grep -q . && break; sleep 0.1; done  # listening (an mTLS origin answers no plain curl)
        echo "PROXYUP $(grep -c listening $D/proxy.err)"

        """
    }
}

/// A client CA and a client certificate (clientAuth) signed by it, for origins that demand one:
/// `$D/client-ca.pem`, `$D/client.pem`, `$D/client.key`.
public enum ClientPKI {
    public static func script(dir: String, commonName: String) -> String {
        """
        D=\(dir)
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $D/client-ca.key -out $D/client-ca.pem -days 2 -subj "/CN=Corp Client CA" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $D/client.key -out $D/client.csr -subj "/CN=\(commonName)" 2>/dev/null
        printf 'extendedKeyUsage=clientAuth\\n' > $D/client.ext
        openssl x509 -req -in $D/client.csr -CA $D/client-ca.pem -CAkey $D/client-ca.key -CAcreateserial -days 2 -extfile $D/client.ext -out $D/client.pem 2>/dev/null

        """
    }
}

/// Policies more than one suite runs against.
public enum TestPolicies {
    /// Bump everything; refuse `POST /admin` at the request stage (rule "no-admin-post").
    public static let noAdminPost = """
        [defaults]
        connect = "inspect"
        hello = "bump"
        request = "allow"
        [[rule]]
        name = "no-admin-post"
        stage = "request"
        method = ["POST"]
        path = ["/admin"]
        action = "block"
        """
}

/// A small seeded generator: fuzz campaigns repeat exactly for a given seed.
public struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Random damage for mutation fuzzing, the same for every parser's campaign: bytes replaced,
/// removed, inserted, bit-flipped or set to 0xFF, the input cut short, a stretch repeated.
public enum Mutation {
    /// A campaign's size and generator: LOUPE_FUZZ_ITERATIONS and LOUPE_FUZZ_SEED when set
    /// (longer or different runs, see README), else the test's own defaults.
    public static func campaign(iterations: Int, seed: UInt64) -> (iterations: Int, rng: SplitMix) {
        let environment = ProcessInfo.processInfo.environment
        return (environment["LOUPE_FUZZ_ITERATIONS"].flatMap(Int.init) ?? iterations,
                SplitMix(seed: environment["LOUPE_FUZZ_SEED"].flatMap(UInt64.init) ?? seed))
    }

    /// `seed` with one to `rounds` random changes; never empty.
    public static func apply(to seed: [UInt8], rounds: Int = 4, rng: inout SplitMix) -> [UInt8] {
        var bytes = seed.isEmpty ? [0] : seed
        for _ in 0..<Int.random(in: 1...rounds, using: &rng) {
            let at = Int.random(in: 0..<bytes.count, using: &rng)
            switch Int.random(in: 0..<7, using: &rng) {
            case 0: bytes[at] = UInt8.random(in: 0...255, using: &rng)
            case 1: bytes.remove(at: at)
            case 2: bytes.insert(UInt8.random(in: 0...255, using: &rng), at: at)
            case 3: bytes[at] ^= 1 << UInt8.random(in: 0..<8, using: &rng)
            case 4: bytes[at] = 0xFF
            case 5: bytes.removeSubrange(at...)
            default:
                let end = min(bytes.count, at + Int.random(in: 1...64, using: &rng))
                bytes.insert(contentsOf: bytes[at..<end], at: Int.random(in: 0...bytes.count, using: &rng))
            }
            if bytes.isEmpty { bytes = [seed.first ?? 0] }
        }
        return bytes
    }
}

/// A test script's output, read by the tag each of its lines starts with ("BUMP 200 rc=0").
public struct TaggedOutput: Sendable {
    public let status: Int32, out: String, err: String
    public let lines: [String]

    public init(_ result: (status: Int32, out: String, err: String)) {
        (status, out, err) = result
        lines = result.out.split(separator: "\n").map(String.init)
    }

    /// The line tagged `tag`, or "<no TAG>" when the script never printed it.
    public func line(_ tag: String) -> String { lines.first { $0.hasPrefix(tag + " ") } ?? "<no \(tag)>" }

    /// The integer after `tag`, or -1.
    public func value(_ tag: String) -> Int { Int(line(tag).dropFirst(tag.count + 1)) ?? -1 }
}

extension TestEnv {
    /// Runs `script` with bash (process substitution, PIPESTATUS; `sh` is dash).
    public static func bash(_ script: String, timeout: TimeInterval = 120) -> TaggedOutput {
        TaggedOutput(sh("bash -c " + shellQuote(script), timeout: timeout))
    }

    public static func shellQuote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
}
