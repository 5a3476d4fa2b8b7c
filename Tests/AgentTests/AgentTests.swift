import Agent
import Foundation
import NIOPosix
import Synchronization
import TestSupport
import TOML
import Testing

@Suite struct AgentConfigTests {
    @Test func theShippedConfigLoads() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let config = try AgentConfig.load(path: "\(root)/config/loupe.toml")
        #expect(config.policy == "\(root)/config/policy.toml", "relative to the file")
        #expect(config.fail == .open && !config.gateway && config.proxyPort == 8443 && config.flowLog == "-")
        #expect(config.handshakeTimeout == 10 && config.idleTimeout == 600)
        #expect(config.divertSettings(backend: .nft).queues == 0...0)
    }

    @Test func settingsAndTheirErrors() throws {
        let c = try AgentConfig.parse("""
            fail = "closed"
            flow_log = ""
            [queue]
            first = 4
            count = 2
            dns = 9
            mark_mask = 0x70
            [proxy]
            idle_timeout = 30
            """, file: "/etc/loupe/loupe.toml")
        #expect(c.fail == .closed && c.flowLog == nil && c.idleTimeout == 30)
        let s = c.divertSettings(backend: .iptablesNFT)
        #expect(s.queues == 4...5 && s.dnsQueue == 9 && s.failClosed && s.marks.mask == 0x70 && s.marks.bypass == 0x60)
        let cases: [(String, String)] = [
            ("fail = \"sometimes\"", "loupe.toml:1: 'fail' must be \"open\" or \"closed\""),
            ("gatway = true", "loupe.toml:1: unknown key 'gatway'"),
            ("[queue]\ncount = 0", "loupe.toml:2: 'queue.count' must be between 1 and 64"),
            ("[queue]\nfirst = 0\ncount = 2\ndns = 1", "loupe.toml:4: 'queue.dns' (1) must not be one of the flow queues"),
            ("[proxy]\nport = \"8443\"", "loupe.toml:2: 'proxy.port' must be an integer"),
            ("[proxy]\nidle_timeout = 0", "loupe.toml:2: 'proxy.idle_timeout' must be between 1 and 86400"),
            ("policy = ", "loupe.toml:1:"),
            ("[proxy]\nupstream_failure = \"page\"", "loupe.toml:2: 'proxy.upstream_failure' must be \"alert\" or \"quarantine\""),
            ("[queue]\nmark_mask = 0x5", "loupe.toml:2: 'queue.mark_mask': the mark mask needs at least three adjacent bits"),
        ]
        for (text, expected) in cases {
            #expect(throws: ConfigError.self) { try AgentConfig.parse(text, file: "loupe.toml") }
            do { _ = try AgentConfig.parse(text, file: "loupe.toml") } catch {
                #expect(error.description.hasPrefix(expected), "\(text) → \(error)")
            }
        }
    }
}

@Suite struct ControlProtocolTests {
    @Test func requestsRoundTripAndBadOnesAreRefused() throws {
        let request = ControlRequest(command: .flows, follow: true, limit: 5)
        #expect(try ControlRequest.parse(Array(request.line.utf8)) == request)
        #expect(try ControlRequest.parse(Array(#"{"command":"ca-export","format":"der"}"#.utf8)).format == "der")
        let bad: [(String, String)] = [
            ("not json", "malformed request"),
            (#"{"verb":"status"}"#, "no \"command\""),
            (#"{"command":"shutdown"}"#, "unknown command \"shutdown\""),
            (#"{"command":"flows","limit":-1}"#, "\"limit\" must be"),
            (#"{"command":"flows","follow":"yes"}"#, "\"follow\" must be"),
            (String(repeating: " ", count: 5000), "longer than 4096"),
        ]
        for (line, expected) in bad {
            do {
                _ = try ControlRequest.parse(Array(line.utf8))
                Issue.record("\(line) must be refused")
            } catch {
                #expect(error.description.contains(expected), "\(error)")
                #expect(error.headerLine.hasPrefix("{\"error\""), "refusals are JSON for the client")
            }
        }
    }

    /// Whatever a client writes on the socket — damaged requests, damaged configurations
    /// handed to a reload — is a refusal or an error naming a line, never a trap; a request
    /// that parses still round-trips.
    @Test func mutatedRequestsAndConfigurationsAreRefusedClearly() throws {
        var (iterations, rng) = Mutation.campaign(iterations: 4_000, seed: 0xA9E7)
        let requests = [#"{"command":"flows","follow":true,"limit":5}"#, #"{"command":"ca-export","format":"der"}"#, #"{"command":"status"}"#]
            .map { Array($0.utf8) }
        let config = Array(try String(contentsOfFile: "\(TestEnv.packageRoot)/config/loupe.toml", encoding: .utf8).utf8)
        for i in 0..<iterations {
            do {
                let request = try ControlRequest.parse(Mutation.apply(to: requests[i % requests.count], rng: &rng))
                #expect(try ControlRequest.parse(Array(request.line.utf8)) == request, "iteration \(i)")
            } catch {
                #expect(!error.description.isEmpty && error.headerLine.hasPrefix("{\"error\""), "iteration \(i)")
            }
            let text = String(decoding: Mutation.apply(to: config, rounds: 3, rng: &rng), as: UTF8.self)
            do throws(ConfigError) { _ = try AgentConfig.parse(text, file: "loupe.toml") } catch {
                #expect(error.line >= 0 && error.line <= text.split(separator: "\n", omittingEmptySubsequences: false).count + 1, "iteration \(i): \(error)")
            }
        }
    }

    @Test func rootChangesMembersReadOthersNothing() {
        let root = ControlPeer(pid: 1, uid: 0, gid: 0, inLoupeGroup: false)
        let member = ControlPeer(pid: 2, uid: 1000, gid: 1000, inLoupeGroup: true)
        let stranger = ControlPeer(pid: 3, uid: 1001, gid: 1001, inLoupeGroup: false)
        for command in ControlRequest.Command.allCases {
            #expect(root.refusal(for: command) == nil)
            #expect((member.refusal(for: command) == nil) == !command.changesState)
            #expect(stranger.refusal(for: command) != nil)
        }
        #expect(member.refusal(for: .reload)?.description.contains("needs root") == true)
    }
}

@Suite struct FlowFeedTests {
    @Test func keepsTheNewestAndStreamsToFollowers() {
        let seen = Lines()
        let feed = FlowFeed(capacity: 3, sink: { seen.add("sink " + $0) })
        feed.append("1")
        let id = feed.follow { seen.add("follow " + $0) }
        for n in 2...5 { feed.append("\(n)") }
        feed.unfollow(id)
        feed.append("6")
        #expect(feed.recent(10) == ["4", "5", "6"] && feed.recent(2) == ["5", "6"])
        #expect(seen.all.filter { $0.hasPrefix("follow") } == ["follow 2", "follow 3", "follow 4", "follow 5"])
        #expect(seen.all.filter { $0.hasPrefix("sink") }.count == 6)
    }
}

final class Lines: @unchecked Sendable {
    let lock = NSLock()
    var lines: [String] = []
    func add(_ s: String) { lock.withLock { lines.append(s) } }
    var all: [String] { lock.withLock { lines } }
}

@Suite struct LineWriterTests {
    /// Lines from several threads reach the file whole, each once, and the file is 0600.
    @Test func concurrentLinesArriveWhole() throws {
        let path = NSTemporaryDirectory() + "loupe-lines-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl"
        defer { unlink(path) }
        let writer = try LineWriter(path: path)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for i in 0..<2_500 { writer.write("{\"thread\":\(thread),\"line\":\(i),\"pad\":\"\(String(repeating: "x", count: i % 200))\"}") }
        }
        writer.flush()
        let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines.count == 10_001 && lines.last == "", "10,000 lines, each ended by a newline")
        #expect(Set(lines.dropLast()).count == 10_000 && lines.dropLast().allSatisfy { $0.hasPrefix("{\"thread\":") && $0.hasSuffix("\"}") })
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600)
    }

    /// Lines gather for a moment between writes, but never wait for a flush: one written on
    /// its own is in the file soon after, and so is a burst written while the writer was busy.
    @Test func linesArriveWithoutAFlush() throws {
        let path = NSTemporaryDirectory() + "loupe-soon-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl"
        defer { unlink(path) }
        let writer = try LineWriter(path: path)
        func lines() -> Int { ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count }
        func waitFor(_ count: Int) -> Bool {
            let deadline = Date().addingTimeInterval(5)
            while Date() < deadline { if lines() == count { return true }; usleep(1_000) }
            return false
        }
        writer.write("one")
        #expect(waitFor(1), "a single line must reach the file without a flush")
        for i in 0..<1_000 { writer.write("burst \(i)") }
        #expect(waitFor(1_001), "a burst must reach the file without a flush")
    }

    /// logrotate moves the file away and asks for a reload: lines written before go to the
    /// moved file, later ones to a new file at the path.
    @Test func reopenFollowsTheRotation() throws {
        let path = NSTemporaryDirectory() + "loupe-rotate-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).jsonl"
        defer { unlink(path); unlink(path + ".1") }
        let writer = try LineWriter(path: path)
        writer.write("before")
        writer.flush()
        #expect(rename(path, path + ".1") == 0)
        writer.write("queued before the reload")
        try writer.reopen()
        writer.write("after")
        writer.flush()
        #expect(try String(contentsOfFile: path + ".1", encoding: .utf8) == "before\nqueued before the reload\n")
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "after\n")
        try LineWriter(fd: STDOUT_FILENO).reopen()  // stdout: nothing to reopen
    }

    /// A reader that stops reading never holds up the writers: past the limit lines are dropped,
    /// and once the reader drains the pipe the count of dropped lines arrives as a line of its own.
    @Test func aStuckReaderCostsLinesNotTime() throws {
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let writer = LineWriter(fd: fds[1], limit: 16 * 1024)
        let total = 50_000
        let writing = DispatchSemaphore(value: 0)
        DispatchQueue.global().async {
            for i in 0..<total { writer.write("line \(i)") }
            writing.signal()
        }
        // The pipe holds 64 KiB and nobody reads it: the writes must still all return.
        #expect(writing.wait(timeout: .now() + 30) == .success, "write() blocked on a pipe nobody reads")
        // On the way out a flush gives up on a reader that takes nothing.
        let gaveUp = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { writer.flush(seconds: 0.2); gaveUp.signal() }
        #expect(gaveUp.wait(timeout: .now() + 10) == .success, "flush(seconds:) must return while the pipe is still full")
        // Now read: the writer drains what it queued, then (with the next batch) the count.
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        func drain(until done: DispatchSemaphore) {
            let deadline = Date().addingTimeInterval(30)
            var readable = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            while Date() < deadline {
                if poll(&readable, 1, 20) > 0 {
                    let n = read(fds[0], &buffer, buffer.count)
                    if n > 0 { received += buffer[..<n] }
                } else if done.wait(timeout: .now()) == .success {
                    return
                }
            }
            Issue.record("the writer did not finish within 30 s")
        }
        let flushed = DispatchSemaphore(value: 0)
        DispatchQueue.global().async { writer.flush(); writer.write("after"); writer.flush(); flushed.signal() }
        drain(until: flushed)
        let lines = String(decoding: received, as: UTF8.self).split(separator: "\n").map(String.init)
        let kept = lines.filter { $0.hasPrefix("line ") }.count
        // Under load the writer may fall behind more than once: one overflow line each time.
        let dropped = lines.filter { $0.contains("\"event\":\"flow_log_overflow\"") }.compactMap { line in
            line.split(separator: ",").first { $0.hasPrefix("\"dropped_lines\":") }.flatMap { Int($0.split(separator: ":")[1]) }
        }.reduce(0, +)
        #expect(kept > 0 && kept < total, "some lines kept, some dropped (\(kept))")
        #expect(dropped == total - kept, "every line is either written or counted as dropped (\(dropped) + \(kept))")
        #expect(writer.lostLines == dropped, "the count for metrics is the one the log reports (\(writer.lostLines))")
        #expect(lines.last == "after", "lines flow again once the reader reads")
    }
}

@Suite struct MetricsTests {
    @Test func exposition() {
        var m = MetricsSnapshot()
        m.flows.byVerdict = ["allow": 3, "block": 1]
        m.queues = QueueCounters.parse("    0  12345     2 2   128     5     1    900  1\n  100  12346     0 2 65535     0     0     40  1\n")
        m.leafMints = 2
        m.preparedUsed = 6
        m.proxyEnds[.init(mode: "bump", reason: MetricsSnapshot.reasonClass("upstream TLS failed: certificate verify failed: \"x\""))] = 4
        m.verdictSeconds = 0.5
        m.verdictPackets = 10
        m.requests = ["allow": 7, "block": 2]
        m.flowLogLost = 12
        let text = m.text
        #expect(m.queues == [QueueCounters(queue: 0, waiting: 2, queueDropped: 5, userDropped: 1, sequence: 900),
                             QueueCounters(queue: 100, waiting: 0, queueDropped: 0, userDropped: 0, sequence: 40)])
        for expected in ["loupe_flows_total{verdict=\"allow\"} 3\n", "loupe_flows_total{verdict=\"block\"} 1\n",
                         "loupe_queue_dropped_total{queue=\"0\"} 5\n", "loupe_queue_waiting{queue=\"0\"} 2\n",
                         "loupe_leaf_cache_total{result=\"mint\"} 2\n",
                         "loupe_prepared_handshakes_total{result=\"used\"} 6\n", "loupe_prepared_handshakes_total{result=\"discarded\"} 0\n",
                         "loupe_proxy_connections_total{mode=\"bump\",reason=\"upstream TLS failed\"} 4\n",
                         "loupe_verdict_seconds_count 10\n", "# TYPE loupe_flows_total counter\n",
                         "loupe_requests_total{verdict=\"block\"} 2\n", "loupe_flow_log_lost_lines_total 12\n"] {
            #expect(text.contains(expected), "\(expected) in:\n\(text)")
        }
        #expect(MetricsSnapshot.label("a\"b\\c\nd") == "\"a\\\"b\\\\c\\nd\"", "label values are escaped")
    }
}

@Suite struct FollowerTests {
    static func residentKiB() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        return status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") }.flatMap { Int($0.split(separator: " ")[1]) } ?? 0
    }

    /// `loupe flows --follow | less`, paused: the agent keeps writing lines for it. Past the
    /// channel's mark they are dropped and counted — not queued in the agent without bound —
    /// and once the client reads again the count arrives as a line of its own.
    @Test(.enabled(if: TestEnv.isRoot, "the control socket serves root and group loupe; as another user the request is refused (CI is root)"))
    func aFollowerThatStopsReadingCostsLinesNotMemory() async throws {
        let dir = TestEnv.scratch("follow")
        defer { TestEnv.remove(dir) }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do { try await Self.follow(group: group, dir: dir) } catch { Issue.record(error) }
        try? await group.shutdownGracefully()
    }

    static func follow(group: MultiThreadedEventLoopGroup, dir: String) async throws {
        let writer = Mutex<(@Sendable (String) -> Void)?>(nil)
        let server = ControlServer(path: "\(dir)/control.sock", group: group) { _, _ in
            .stream(initial: [], start: { w in writer.withLock { $0 = w }; return 1 }, stop: { _ in })
        }
        let listener = try await server.start()
        defer { listener.close(promise: nil) }

        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array("\(dir)/control.sock".utf8)
            raw.copyBytes(from: bytes.prefix(raw.count - 1))
        }
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(connected == 0)
        let request = Array("{\"command\":\"flows\",\"follow\":true}\n".utf8)
        #expect(write(fd, request, request.count) == request.count)
        var send: (@Sendable (String) -> Void)?
        for _ in 0..<500 where send == nil {
            send = writer.withLock { $0 }
            try await Task.sleep(for: .milliseconds(10))
        }
        let follow = try #require(send, "the stream never started")

        // 200,000 lines of 1,000 bytes while the client reads nothing: 200 MB if queued.
        let line = String(repeating: "x", count: 1_000)
        let before = residentKiB()
        for _ in 0..<200_000 { follow(line) }
        try await group.next().submit {}.get()  // the loop has handled every line
        let grown = residentKiB() - before
        #expect(grown < 65_536, "the agent grew \(grown) KiB for a follower that reads nothing")

        // Now the client reads; the next line brings the count of those it missed.
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        /// Reads until `done`, or until nothing came for `quiet` ms (20 s at most).
        func drain(quiet: Int32 = 5_000, until done: () -> Bool) {
            let deadline = Date().addingTimeInterval(20)
            var readable = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            while Date() < deadline, !done() {
                guard poll(&readable, 1, quiet) > 0 else { return }
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { return }
                received += buffer[..<n]
            }
        }
        // What was queued (the socket's and the channel's share), then — the socket drained —
        // the count of the rest, without waiting for another line.
        drain { String(decoding: received, as: UTF8.self).contains("\"event\":\"follow_overflow\"") }
        #expect(String(decoding: received, as: UTF8.self).contains("\"event\":\"follow_overflow\""), "the notice came once the client read")
        follow("last")
        drain { received.count >= 5 && Array(received.suffix(5)) == Array("last\n".utf8) }
        let lines = String(decoding: received, as: UTF8.self).split(separator: "\n").map(String.init)
        #expect(lines.last == "last")
        let delivered = lines.count { $0 == line }
        let notice = try #require(lines.first { $0.contains("\"event\":\"follow_overflow\"") }, "no overflow notice among \(lines.count) lines")
        let parsed = try JSONSerialization.jsonObject(with: Data(notice.utf8)) as? [String: Any]
        let dropped = parsed?["dropped_lines"] as? Int ?? -1
        #expect(dropped > 0 && delivered + dropped == 200_000, "every line is either sent or counted: \(delivered) + \(dropped)")
        #expect(lines.firstIndex(of: notice)! > (lines.lastIndex(of: line) ?? -1), "the notice comes after what was sent, before the next line")
    }
}
