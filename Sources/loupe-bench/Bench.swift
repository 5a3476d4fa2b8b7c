// Loupe's benchmarks, printed as figures (never asserted by timed tests).
//
//   swift run -c release loupe-bench [mint|policy|all] [--count N] [--root-key ec-p256|ec-p384|rsa-3072]
//
// mint:   leaf minting in-process under a fresh per-host root (DESIGN.md targets: p50 ≤ 150 µs
//         uncached, ≤ 5 µs cached), plus the single-flight cache's async path.
// policy: decisions/s for a 10,000-rule policy, for a 1,000,000-entry host list (and the
//         list's load time) and for a request walking 200 url and path rules.
// flows:  the queue's flow handler in-process (classify, facts, decide, flow-log line), per
//         first packet — the user-space part of a verdict (scripts/bench-queue measures the rest);
//         LOUPE_BENCH_PARTS=1 also times its parts (classify, decide, handler without the log);
//         then a flow's socket lookup for `exe` rules, sock_diag against /proc/net/tcp.
// handshake: in-memory TLS handshakes through the proxy's own TLSSession, per leg: the
//         client-facing server side (minted leaf) and the upstream client side (strict
//         verification), full and resumed — the CPU a bumped connection's handshakes cost.
// relay:  one bumped HTTP/1.1 connection's ConnectionMachine in memory, per keep-alive request
//         (decrypt, frame and decide the request, encrypt it upstream; the same for the
//         response) — the proxy's user-space work for a request without sockets, NIO or the
//         kernel, which on this machine move its end-to-end figure by a third between runs;
//         LOUPE_BENCH_BROWSER=1 sends a browser's 17-field request head instead of a short one.
//         LOUPE_BENCH_BODY=N answers with an N-byte body instead of 100 bytes, delivered in
//         64 KiB reads (N = 1048576: the bulk path's copies and crypto, per MiB). The bench runs
//         on the main thread's arena, which glibc trims on every large free: for figures like
//         the proxy's, run it with GLIBC_TUNABLES=glibc.malloc.trim_threshold=4194304:glibc.malloc.mmap_threshold=4194304
//         (the proxy sets the same thresholds itself).
import CA
import Divert
import Dispatch
import Foundation
import NIOCore
import Policy
import Proxy
import Store
import TLS

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
}

func report(_ name: String, _ samples: [UInt64]) {
    let sorted = samples.sorted()
    let mean = Double(samples.reduce(0, +)) / Double(samples.count) / 1000
    print(String(format: "%-34@ n=%-7d p50 %8.2f µs   p99 %8.2f µs   mean %8.2f µs", name as NSString, samples.count,
                 percentile(sorted, 0.5), percentile(sorted, 0.99), mean))
}

@inline(__always) func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

@main
struct Bench {
    static func main() async throws {
        var mode = "all"
        var count = 2000
        var rootKey = KeyAlgorithm.ecP256
        var arguments = Array(CommandLine.arguments.dropFirst())
        while !arguments.isEmpty {
            let arg = arguments.removeFirst()
            switch arg {
            case "mint", "policy", "flows", "handshake", "relay", "all": mode = arg
            case "--count" where !arguments.isEmpty: count = Int(arguments.removeFirst()) ?? count
            case "--root-key" where !arguments.isEmpty: rootKey = KeyAlgorithm(rawValue: arguments.removeFirst()) ?? rootKey
            default:
                print("usage: loupe-bench [mint|policy|flows|handshake|relay|all] [--count N] [--root-key ec-p256|ec-p384|rsa-3072]")
                Foundation.exit(2)
            }
        }
        if mode == "mint" || mode == "all" { try await mint(count: count, rootKey: rootKey) }
        if mode == "policy" || mode == "all" { try policy() }
        if mode == "flows" || mode == "all" { flows(count: max(count, 20_000)) }
        if mode == "handshake" || mode == "all" { try handshakes(count: min(count, 2000), rootKey: rootKey) }
        if mode == "relay" || mode == "all" { try relay(count: max(count, 20_000)) }
    }

    /// A root of its own in a scratch store at `dir`: its minter, the root as a PEM bundle file,
    /// and what key the root has.
    static func authority(_ dir: String, algorithm: KeyAlgorithm = .ecP256) throws -> (minter: LeafMinter, bundle: String, rootKey: String) {
        let authority = RootAuthority(store: try SealedStore.create(stateDirectory: dir, provider: .hostKey), profile: CAProfile())
        _ = try authority.initialize(algorithm: algorithm)
        let root = try authority.root()!
        let bundle = dir + "/root.pem"
        try root.certificate.pem.write(toFile: bundle, atomically: true, encoding: .utf8)
        return (try LeafMinter(root: root, profile: CAProfile()), bundle, root.certificate.keyDescription)
    }

    /// A browser's request head as Chrome sends one (17 fields, a cookie): LOUPE_BENCH_BROWSER=1.
    static let browserRequest = [
        "GET /assets/app.4f9c2e1b.js?v=20261201 HTTP/1.1", "Host: origin.test", "Connection: keep-alive",
        "sec-ch-ua: \"Chromium\";v=\"131\", \"Not_A Brand\";v=\"24\"", "sec-ch-ua-mobile: ?0", "sec-ch-ua-platform: \"Linux\"",
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "Accept: */*", "Sec-Fetch-Site: same-origin", "Sec-Fetch-Mode: no-cors", "Sec-Fetch-Dest: script",
        "Referer: https://origin.test/dashboard/overview", "Accept-Encoding: gzip, deflate, br, zstd",
        "Accept-Language: en-GB,en;q=0.9,de;q=0.8", "If-None-Match: \"5f3a9c-18a2b3\"", "If-Modified-Since: Sun, 29 Nov 2026 10:12:44 GMT",
        "Cookie: session=3c9f1e2a7b4d4e0f9a8b7c6d5e4f3a2b; theme=dark; _ga=GA1.1.123456789.1764500000; consent=yes",
        "Priority: u=1",
    ].joined(separator: "\r\n") + "\r\n\r\n"

    static func relay(count: Int) throws {
        let dir = NSTemporaryDirectory() + "loupe-bench-relay-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (loupe, loupeBundle, _) = try authority(dir + "/loupe")
        let (originCA, originBundle, _) = try authority(dir + "/origin")
        let originLeaf = try originCA.mint(.forNames(["origin.test"]))
        let origin = try TLSSession.server(try TLSContext.server(), chain: [originLeaf.certificate], key: originLeaf.key, alpn: ["http/1.1"])
        let client = try TLSSession.client(try TLSContext.client(trustBundle: loupeBundle), serverName: "origin.test", alpn: ["http/1.1"])
        var facts = FlowFacts()
        facts.dst = FlowFacts.Endpoint(address: [127, 0, 0, 1], port: 443)
        let policy = Policy(defaults: [.connect: .inspect, .hello: .bump, .request: .allow], rules: [])
        let machine = ConnectionMachine(facts: facts, policy: policy,
                                        settings: .init(upstreamContext: try TLSContext.client(trustBundle: originBundle), clientContext: try TLSContext.server()))
        /// Runs one event through the machine, as the NIO handler would, carrying what it sends.
        func handle(_ event: ConnectionMachine.Event) throws -> [ConnectionMachine.Event] {
            var next: [ConnectionMachine.Event] = []
            for command in machine.handle(event) {
                switch command {
                case .connectUpstream: next.append(.upstreamConnected)
                case .sendUpstream(let bytes): origin.receive([UInt8](buffer: bytes))
                case .sendClient(let bytes): client.receive([UInt8](buffer: bytes))
                case .mintLeaf(let request): next.append(.leafReady(try loupe.mint(request)))
                default: break
                }
            }
            return next
        }
        client.advanceHandshake()
        var queue: [ConnectionMachine.Event] = []
        for _ in 0..<100 {
            if queue.isEmpty {
                let a = client.takeOutput(), b = origin.takeOutput()
                if !a.isEmpty { queue.append(.clientData(ByteBuffer(bytes: a))) }
                if !b.isEmpty { queue.append(.upstreamData(ByteBuffer(bytes: b))) }
                if queue.isEmpty { break }
            }
            queue += try handle(queue.removeFirst())
            _ = client.read()  // the client's side of the handshake (and its session tickets)
        }
        precondition(machine.phase == .relaying && client.state == .established, "the bench connection did not reach relaying")
        let request = ProcessInfo.processInfo.environment["LOUPE_BENCH_BROWSER"] == nil
            ? Array("GET /index.html?q=1 HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: loupe-bench\r\nAccept: */*\r\n\r\n".utf8)
            : Array(Self.browserRequest.utf8)
        let body = ProcessInfo.processInfo.environment["LOUPE_BENCH_BODY"].flatMap { Int($0) } ?? 100
        let response = Array("HTTP/1.1 200 OK\r\nContent-Length: \(body)\r\nContent-Type: text/plain\r\n\r\n".utf8) + Array(repeating: 0x78, count: body)
        var up: [UInt64] = [], down: [UInt64] = []
        let rounds = body > 65_536 ? 500 : count  // bulk bodies: fewer, each long
        for _ in 0..<rounds {
            try client.write(request)
            let fromClient = ByteBuffer(bytes: client.takeOutput())  // as NIO hands it over
            var t = now()
            _ = try handle(.clientData(fromClient))
            up.append(now() - t)
            precondition(origin.read() == request, "the request did not arrive intact")
            try origin.write(response)
            let fromOrigin = origin.takeOutput()
            // In socket-sized reads (NIO reads at most 64 KiB at once), the client reading them
            // as they come.
            var spent: UInt64 = 0
            var received: [UInt8] = []
            for start in stride(from: 0, to: fromOrigin.count, by: 65_536) {
                let read = ByteBuffer(bytes: fromOrigin[start..<min(start + 65_536, fromOrigin.count)])
                t = now()
                _ = try handle(.upstreamData(read))
                spent += now() - t
                received += client.read()
            }
            down.append(spent)
            precondition(received == response, "the response did not arrive intact")
        }
        print("one bumped HTTP/1.1 connection in memory, \(rounds) keep-alive requests (\(request.count)-byte request, \(response.count)-byte response)")
        report("request: decrypt, decide, encrypt", up)
        report("response: decrypt, frame, encrypt", down)
        report("both, per request", zip(up, down).map { $0 + $1 })
    }

    static func handshakes(count: Int, rootKey: KeyAlgorithm) throws {
        let state = NSTemporaryDirectory() + "loupe-bench-hs-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: state) }
        let (minter, bundle, rootDescription) = try authority(state, algorithm: rootKey)
        let leaf = try minter.mint(.forNames(["origin.test"]))
        let serverContext = try TLSContext.server()
        let clientContext = try TLSContext.client(trustBundle: bundle)
        print("TLS handshakes in memory, leaf \(leaf.key.typeDescription) under a \(rootDescription) root, \(count) each")
        var creation: [UInt64] = []
        for _ in 0..<count {
            let t = now()
            _ = try TLSSession.server(serverContext, chain: [leaf.certificate], key: leaf.key, alpn: ["http/1.1"])
            creation.append(now() - t)
        }
        report("server session creation only", creation)
        for resumed in [false, true] {
            var serverSide: [UInt64] = [], clientSide: [UInt64] = []
            for _ in 0..<count {
                var s: UInt64 = 0, c: UInt64 = 0
                var t = now()
                let server = try TLSSession.server(serverContext, chain: [leaf.certificate], key: leaf.key, alpn: ["http/1.1"])
                s += now() - t
                t = now()
                let client = try TLSSession.client(clientContext, serverName: "origin.test", alpn: ["http/1.1"], resumptionKey: resumed ? "origin.test" : nil)
                client.advanceHandshake()
                c += now() - t
                for _ in 0..<10 {
                    t = now(); let fromClient = client.takeOutput(); c += now() - t
                    t = now(); server.receive(fromClient); let fromServer = server.takeOutput(); s += now() - t
                    if fromClient.isEmpty && fromServer.isEmpty { break }
                    t = now(); client.receive(fromServer); _ = client.read(); c += now() - t
                }
                precondition(client.state == .established && server.state == .established, "\(client.state) \(server.state)")
                if resumed && !client.resumed { continue }  // the first visit fills the cache
                serverSide.append(s)
                clientSide.append(c)
            }
            report(resumed ? "client-facing leg (server), resumed up" : "client-facing leg (server)", serverSide)
            report(resumed ? "upstream leg (client), resumed" : "upstream leg (client), full", clientSide)
        }
        // Heap held by established, idle session pairs (what an idle bumped connection keeps
        // in OpenSSL and the sessions' byte queues), after a small exchange like one request.
        var held: [(TLSSession, TLSSession)] = []
        let pairs = 500
        let heapBefore = residentKiB()
        for _ in 0..<pairs {
            let server = try TLSSession.server(serverContext, chain: [leaf.certificate], key: leaf.key, alpn: ["http/1.1"])
            let client = try TLSSession.client(clientContext, serverName: "origin.test", alpn: ["http/1.1"], resumptionKey: "origin.test")
            client.advanceHandshake()
            for _ in 0..<10 {
                let fromClient = client.takeOutput()
                server.receive(fromClient)
                let fromServer = server.takeOutput()
                if fromClient.isEmpty && fromServer.isEmpty { break }
                client.receive(fromServer)
                _ = client.read()
            }
            try client.write(Array("GET / HTTP/1.1\r\nHost: origin.test\r\n\r\n".utf8))
            server.receive(client.takeOutput())
            _ = server.read()
            held.append((server, client))
        }
        let heapAfter = residentKiB()
        print(String(format: "resident per idle established pair (server + client session): %.1f KiB", Double(heapAfter - heapBefore) / Double(pairs)))
        withExtendedLifetime(held) {}
    }

    static func flows(count: Int) {
        let policy = Policy(defaults: [.connect: .allow, .hello: .bump, .request: .allow], rules: [])
        let lines = LineCounter()
        let handler = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { lines.add($0.json) })
        var packets: [QueuedPacket] = []
        for i in 0..<count {
            let port = 1024 + i % 60_000
            let bytes: [UInt8] = [0x45, 0, 0, 36, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
                                  0x30, 0x39, UInt8(port >> 8), UInt8(port & 0xFF), 0, 16, 0, 0] + Array(repeating: 0x61, count: 8)
            packets.append(QueuedPacket(queue: 0, id: UInt32(i), uid: 0, gid: 0, mark: nil, bytes: bytes))
        }
        var samples: [UInt64] = []
        var index = 0
        while index < packets.count {
            let batch = Array(packets[index..<min(index + 64, packets.count)])
            let t = now()
            _ = handler.handle(batch)
            samples.append((now() - t) / UInt64(batch.count))
            index += batch.count
        }
        report("flow handler, per first packet", samples)
        if ProcessInfo.processInfo.environment["LOUPE_BENCH_PARTS"] != nil {
            var t = now()
            var facts: [FlowFacts] = []
            for p in packets { if case .newFlow(let f) = FlowClassifier.classify(p.bytes[...], uid: 0, gid: 0) { facts.append(f) } }
            print("classify", Double(now() - t) / Double(count) / 1000)
            t = now()
            for f in facts { _ = policy.decide(.connect, f) }
            print("decide", Double(now() - t) / Double(count) / 1000)
            t = now()
            for f in facts { _ = ConnectOutcome.of(policy.decide(.connect, f), facts: f, marks: Marks()) }
            print("decide+outcome", Double(now() - t) / Double(count) / 1000)
            let quiet = FlowHandler(marks: Marks(), failClosed: false, attribution: nil, policy: { policy }, record: { _ in })
            t = now()
            var i = 0
            while i < packets.count { _ = quiet.handle(Array(packets[i..<min(i + 64, packets.count)])); i += 64 }
            print("handler without log", Double(now() - t) / Double(count) / 1000)
        }
        print("  \(lines.count) flow-log lines; \(String(format: "%.0f", 1e9 / (Double(samples.reduce(0, +)) / Double(samples.count)))) packets/s on one thread")
        attribution()
    }

    /// The socket inode of a flow (what `exe` rules need first), by sock_diag and by reading
    /// /proc/net, with `count` other TCP sockets open (a busy host's tables are long).
    static func attribution(count: Int = 2000) {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) } }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) } }
        listen(listener, Int32(count))
        var clients: [Int32] = []
        for _ in 0..<count {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) } }
            clients.append(fd)
        }
        defer { for fd in clients { close(fd) }; close(listener) }
        var local = sockaddr_in()
        var localLength = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(clients[count / 2], $0, &localLength) } }
        let src = FlowFacts.Endpoint(address: withUnsafeBytes(of: local.sin_addr) { Array($0) }, port: UInt16(bigEndian: local.sin_port))
        let dst = FlowFacts.Endpoint(address: [127, 0, 0, 1], port: UInt16(bigEndian: address.sin_port))
        let rounds = 200
        var t = now()
        var byDiag = 0, byTable = 0
        for _ in 0..<rounds where SocketDiag.inode(proto: .tcp, src: src, dst: dst) != nil { byDiag += 1 }
        let diag = Double(now() - t) / Double(rounds) / 1000
        t = now()
        for _ in 0..<rounds {
            if ProcNetTable.inode(proto: .tcp, local: src) != nil { byTable += 1 }
        }
        let table = Double(now() - t) / Double(rounds) / 1000
        let open = clients.filter { $0 >= 0 }.count
        print(String(format: "socket of a flow among %d TCP sockets: sock_diag %.1f µs (found %d/%d), /proc/net/tcp %.0f µs (found %d/%d)",
                     open * 2 + 1, diag, byDiag, rounds, table, byTable, rounds))
    }

    static func mint(count: Int, rootKey: KeyAlgorithm) async throws {
        let state = NSTemporaryDirectory() + "loupe-bench-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: state) }
        let (minter, _, rootDescription) = try authority(state, algorithm: rootKey)
        print("leaf minting under a \(rootDescription) root; leaf key \(minter.leafKey.typeDescription) (legacy EC_KEY), \(count) hosts")

        // Warm-up, then every mint is a new host name.
        for i in 0..<50 { _ = try minter.mint(.forNames(["warm\(i).bench.test"])) }
        var uncached: [UInt64] = []
        for i in 0..<count {
            let request = LeafRequest.forNames(["host\(i).bench.test"])
            let t0 = now()
            _ = try minter.mint(request)
            uncached.append(now() - t0)
        }
        report("mint, uncached (new host)", uncached)

        let cache = LeafCache(minter: minter, capacity: count + 100)
        let requests = (0..<count).map { LeafRequest.forNames(["host\($0).bench.test"]) }
        let firstFill = now()
        for request in requests { _ = try await cache.leaf(for: request) }
        print(String(format: "cache fill through leaf(for:)        %d leaves in %.1f ms", count, Double(now() - firstFill) / 1e6))

        var cached: [UInt64] = []
        for round in 0..<20 {
            for request in requests {
                let t0 = now()
                let hit = cache.cached(request)
                cached.append(now() - t0)
                precondition(hit != nil || round < 0)
            }
        }
        report("cached lookup (sync fast path)", cached)

        // Measured off the main actor, as the proxy calls it: no actor hop in the figure.
        let asyncCached = try await Task.detached {
            var samples: [UInt64] = []
            for request in requests {
                let t0 = now()
                _ = try await cache.leaf(for: request)
                samples.append(now() - t0)
            }
            return samples
        }.value
        report("cached lookup (async leaf(for:))", asyncCached)
        let stats = cache.statistics
        try? FileManager.default.removeItem(atPath: state)
        print("cache: \(stats.mints) mints, \(stats.hits) hits, \(stats.joined) joined, \(stats.failures) failures")

    }

    static func policy() throws {
        let defaults = "[defaults]\nconnect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"\n"
        // 10,000 rules that a typical flow must walk past: ports and networks that never match.
        var text = defaults
        for i in 0..<10_000 {
            text += "[[rule]]\nname = \"r\(i)\"\nstage = \"connect\"\ndst_net = [\"10.\(i / 256).\(i % 256).0/24\"]\ndst_port = [\(1000 + i % 50000)]\naction = \"block\"\n"
        }
        var t0 = now()
        let big = try Policy.parse(text, file: "bench.toml")
        print(String(format: "policy with 10,000 rules parsed in %.1f ms", Double(now() - t0) / 1e6))
        var facts = FlowFacts()
        facts.dst = FlowFacts.Endpoint("192.0.2.1:443")
        let rounds = 2000
        t0 = now()
        for _ in 0..<rounds { precondition(big.decide(.connect, facts).rule == "default") }
        let perDecision = Double(now() - t0) / Double(rounds)
        print(String(format: "10,000 port rules, none for this port: %9.0f decisions/s (%.1f µs each)", 1e9 / perDecision, perDecision / 1000))

        // The worst case for the port index: 10,000 rules without dst_port, all walked.
        var scan = defaults
        for i in 0..<10_000 { scan += "[[rule]]\nname = \"n\(i)\"\nstage = \"connect\"\ndst_net = [\"10.\(i / 256).\(i % 256).0/24\"]\naction = \"block\"\n" }
        let walked = try Policy.parse(scan, file: "scan.toml")
        t0 = now()
        for _ in 0..<200 { precondition(walked.decide(.connect, facts).rule == "default") }
        let perScan = Double(now() - t0) / 200
        print(String(format: "10,000 net rules, all walked:         %9.0f decisions/s (%.1f µs each)", 1e9 / perScan, perScan / 1000))

        var list = ""
        list.reserveCapacity(24_000_000)
        for i in 0..<1_000_000 { list += i % 4 == 0 ? ".zone\(i).example\n" : "host\(i).example\n" }
        t0 = now()
        let listed = try Policy.parse(defaults + "[lists]\nbig = { file = \"big.txt\" }\n[[rule]]\nname = \"big\"\nstage = \"connect\"\nnames = [\"@big\"]\naction = \"block\"\n",
                                      file: "bench.toml") { _, _ in (list, "big.txt") }
        print(String(format: "1,000,000-entry host list loaded in %.0f ms", Double(now() - t0) / 1e6))
        let names = (0..<10_000).map { i in i % 2 == 0 ? "a.b.zone\(i * 4).example" : "miss\(i).elsewhere.example" }
        let lookups = 200_000
        t0 = now()
        var blocked = 0
        for i in 0..<lookups {
            facts.names = [names[i % names.count]]
            if listed.decide(.connect, facts).verdict == .block { blocked += 1 }
        }
        let perLookup = Double(now() - t0) / Double(lookups)
        precondition(blocked == lookups / 2)
        print(String(format: "1,000,000-entry list, half hits:      %10.0f decisions/s (%.2f µs each)", 1e9 / perLookup, perLookup / 1000))

        // The request stage: 100 url and 100 path rules, none for this request, all walked.
        var requests = defaults
        for i in 0..<100 {
            requests += "[[rule]]\nname = \"u\(i)\"\nstage = \"request\"\nurl = [\"https://host\(i).example/private/\"]\naction = \"block\"\n"
            requests += "[[rule]]\nname = \"p\(i)\"\nstage = \"request\"\npath = [\"/admin\(i)/\"]\naction = \"block\"\n"
        }
        let requestPolicy = try Policy.parse(requests, file: "requests.toml")
        var request = FlowFacts()
        request.dst = FlowFacts.Endpoint("192.0.2.1:443")
        request.method = "GET"
        request.url = "https://host7.example/assets/app.js?v=2"
        t0 = now()
        for _ in 0..<20_000 { precondition(requestPolicy.decide(.request, request).rule == "default") }
        let perRequest = Double(now() - t0) / 20_000
        print(String(format: "200 url and path rules, all walked:   %9.0f decisions/s (%.2f µs each)", 1e9 / perRequest, perRequest / 1000))
    }
}

/// This process's resident set (VmRSS), KiB.
func residentKiB() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
}

final class LineCounter: @unchecked Sendable {
    let lock = NSLock()
    var count = 0
    func add(_ line: String) { lock.withLock { count += 1 } }
}
