import Agent
import ArgumentParser
import CA
import Foundation

/// `loupe run`: the agent.
struct RunCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run the agent: ruleset, queue, proxy and control socket (root).",
        discussion: "SIGHUP or 'loupe reload' reloads the policy and opens the flow log's file again (logrotate); SIGTERM/SIGINT removes the ruleset and exits.")

    @Option(help: "Agent settings (loupe.toml).") var config: String?
    @OptionGroup var state: StateOptions
    @OptionGroup var profileOptions: ProfileOptions
    @Option(help: "Policy file (overrides loupe.toml).") var policy: String?
    @Option(help: "PEM bundle replacing the system trust store for upstream verification.") var upstreamCa: String?
    @Option(help: "open | closed: what happens to new flows when the agent is gone.") var fail: String?
    @Option(help: "Control socket path.") var controlSocket: String?
    @Option(help: "Flow log: a file, or - for stdout.") var flowLog: String?
    @Option(help: "Proxy port for inspected flows.") var proxyPort: UInt16?
    @Option(help: "Serve Prometheus metrics on HOST:PORT (e.g. 127.0.0.1:9464).") var metrics: String?
    @Option(help: "NSS key log (SSLKEYLOGFILE format, 0600) for both legs of inspected connections. Off by default.") var keylog: String?

    func run() async throws {
        var settings: AgentConfig
        do {
            settings = try config.map { try AgentConfig.load(path: $0) } ?? AgentConfig()
        } catch {
            printError("loupe: error: \(error)")
            throw ExitCode(1)
        }
        // Flags override the file; --state-dir only when given (its default is the file's).
        if CommandLine.arguments.contains(where: { $0.hasPrefix("--state-dir") }) || ProcessInfo.processInfo.environment["LOUPE_STATE_DIR"] != nil {
            settings.stateDir = state.stateDir
        }
        if let policy { settings.policy = policy }
        if let upstreamCa { settings.upstreamCA = upstreamCa }
        if let fail {
            guard let mode = AgentConfig.FailMode(rawValue: fail) else { throw ValidationError("--fail must be open or closed") }
            settings.fail = mode
        }
        if let controlSocket { settings.controlSocket = controlSocket }
        if let flowLog { settings.flowLog = flowLog }
        if let proxyPort { settings.proxyPort = proxyPort }
        if let metrics { settings.metrics = metrics }
        if let keylog { settings.keylog = keylog }

        let agent: Agent
        do {
            agent = try await Agent.start(.init(config: settings, profile: try profileOptions.load(), storeOptions: state.storeOptions))
        } catch {
            printError("loupe: error: \(error)")
            throw ExitCode(1)
        }
        let signals = AgentSignals()
        for await signal in signals.stream {
            if signal == SIGHUP {
                _ = agent.reload()
            } else {
                break
            }
        }
        await agent.stop()
    }
}

/// SIGHUP, SIGTERM and SIGINT as an async stream (the default actions are turned off).
final class AgentSignals {
    let stream: AsyncStream<Int32>
    let sources: [any DispatchSourceSignal]

    init() {
        let (stream, continuation) = AsyncStream<Int32>.makeStream()
        self.stream = stream
        sources = [SIGHUP, SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler { continuation.yield(number) }
            source.resume()
            return source
        }
    }
}

struct ControlOptions: ParsableArguments {
    @Option(help: "The agent's control socket.") var controlSocket: String = "/run/loupe/control.sock"

    func send(_ request: ControlRequest, line: (String) -> Void) throws {
        try ControlClient.send(request, to: controlSocket, line: line)
    }

    /// After a store change the agent must see (a new root, an identity added or removed): a
    /// running agent is told to reload; without one there is nothing to tell.
    func tellAgent(otherwise hint: String) {
        guard FileManager.default.fileExists(atPath: controlSocket) else { return }
        do {
            let answer = try ControlClient.call(ControlRequest(command: .reload), to: controlSocket)
            print("agent: \(answer["message"] as? String ?? "reloaded")")
        } catch {
            print("agent: not told (\(error)); run 'loupe reload' \(hint)")
        }
    }
}

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "What the running agent is doing (root or group loupe).")
    @OptionGroup var control: ControlOptions
    @Flag(help: "Print the raw JSON.") var json = false

    func run() throws {
        try loupe.run {
            try control.send(ControlRequest(command: .status)) { line in
                guard !json, let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)),
                      let pretty = try? JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
                else { print(line); return }
                print(String(decoding: pretty, as: UTF8.self))
            }
        }
    }
}

struct FlowsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "flows", abstract: "Recent flow-log lines from the running agent (root or group loupe).")
    @OptionGroup var control: ControlOptions
    @Flag(help: "Keep streaming new lines.") var follow = false
    @Flag(help: "Print the JSON lines as they are.") var json = false
    @Option(help: "How many recent lines.") var limit: Int = 100

    func run() throws {
        try loupe.run {
            try control.send(ControlRequest(command: .flows, follow: follow, limit: limit)) { line in
                FileHandle.standardOutput.write(Data(((json ? line : FlowLine.summary(line)) + "\n").utf8))
            }
        }
    }
}

struct ReloadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "reload", abstract: "Reload the agent's policy, root and client identities (root); a bad policy keeps the old ones.")
    @OptionGroup var control: ControlOptions

    func run() throws {
        try loupe.run {
            let answer = try ControlClient.call(ControlRequest(command: .reload), to: control.controlSocket)
            print(answer["message"] as? String ?? "reloaded")
        }
    }
}

/// One readable line per flow-log record.
enum FlowLine {
    static func summary(_ line: String) -> String {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return line }
        let time = (o["time"] as? String).map { String($0.dropFirst(11).prefix(8)) } ?? ""
        var parts = [time]
        if let stage = o["stage"] as? String { parts.append(stage) } else if let event = o["event"] as? String { parts.append(event) }
        if let proto = o["proto"] as? String { parts.append(proto) }
        parts.append("\(o["src"] as? String ?? "?") -> \(o["dst"] as? String ?? "?")")
        if let verdict = o["verdict"] as? String { parts.append("\(verdict.uppercased())\((o["block"] as? String).map { "(\($0))" } ?? "")") }
        if let rule = o["rule"] as? String { parts.append("rule=\(rule)") }
        if let sni = o["sni"] as? String, !sni.isEmpty { parts.append("sni=\(sni)") }
        if let names = o["names"] as? [String] { parts.append("names=\(names.joined(separator: ","))") }
        if let user = o["user"] as? String { parts.append("user=\(user)") }
        if let exe = o["exe"] as? String { parts.append("exe=\(exe)") }
        if let method = o["method"] as? String { parts.append("\(method) \(o["url"] as? String ?? o["path"] as? String ?? "")") }
        if let status = o["status"] { parts.append("status=\(status)") }
        if let bytes = o["bytes"] { parts.append("bytes=\(bytes)") }
        if let reason = o["reason"] as? String { parts.append("— \(reason)") }
        return parts.joined(separator: " ")
    }
}
