import Agent
import ArgumentParser
import CA
import Divert
import Foundation
import NIOCore
import Policy
import Proxy
import Store
import TLS

/// `loupe proxy`: the TLS-inspecting proxy alone, for tests and benchmarks (`loupe run` will
/// compose it with the queue and the diversion rules).
struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Run the inspecting proxy alone on a local port (diverted connections are expected via an nft redirect).")

    @OptionGroup var state: StateOptions
    @OptionGroup var profileOptions: ProfileOptions
    @Option(help: "Listen address, HOST:PORT.") var listen: String = "127.0.0.1:8443"
    @Option(help: "PEM bundle that replaces the system trust store for upstream verification.") var upstreamCa: String?
    @Option(help: "Policy file (default: every TLS flow is bumped).") var policy: String?
    @Option(help: "Flow log: a file, or - for stdout.") var flowLog: String?
    @Option(help: "Mark set on Loupe's upstream sockets so the diversion rules let them pass.") var bypassMark: UInt32 = Marks().bypass
    @Option(help: "Upstream HOST:PORT for connections that were not redirected (tests, benchmarks).") var to: String?
    @Option(help: "alert | quarantine: how a failed upstream verification reaches the client (quarantine: a leaf from an untrusted issuer, so a browser shows its own error page).") var upstreamFailure: String = "alert"
    @Option(help: "Seconds allowed for the ClientHello and for each handshake.") var handshakeTimeout: Int64 = 10
    @Option(help: "Seconds a relaying connection may move nothing either way before it is closed.") var idleTimeout: Int64 = 600
    @Option(help: "Write both legs' TLS secrets to this NSS key log (SSLKEYLOGFILE format, 0600). Off by default.") var keylog: String?

    func run() async throws {
        do {
            let policy = try policy.map { try Policy.load(path: $0) } ?? Policy(defaults: [.connect: .inspect, .hello: .bump, .request: .allow], rules: [])
            let profile = try profileOptions.load()
            let store = try state.openStore()
            let authority = RootAuthority(store: store, profile: profile)
            guard let root = try authority.root() else { throw CAError("no root CA yet; run 'loupe ca init'") }
            var configuration = ProxyServer.Configuration(
                policy: policy, cache: LeafCache(minter: try LeafMinter(root: root, profile: profile)),
                upstreamContext: try TLSContext.client(trustBundle: upstreamCa), clientContext: try TLSContext.server())
            configuration.bypassMark = bypassMark
            configuration.clientIdentities = try store.clientIdentities()
            configuration.handshakeTimeout = .seconds(handshakeTimeout)
            configuration.idleTimeout = .seconds(idleTimeout)
            switch upstreamFailure {
            case "alert": break
            case "quarantine": configuration.quarantine = LeafCache(minter: try LeafMinter(root: try RootAuthority.quarantineRoot(), profile: profile))
            default: throw ValidationError("--upstream-failure must be alert or quarantine")
            }
            if let keylog {
                let log = try KeyLog(path: keylog)
                configuration.upstreamContext.logKeys(to: log)
                configuration.clientContext.logKeys(to: log)
                printError("loupe proxy: WARNING: TLS secrets of every inspected connection are written to \(keylog)")
            }
            if let to {
                guard let endpoint = FlowFacts.Endpoint(to) else { throw ValidationError("--to must be ADDRESS:PORT") }
                configuration.fixedDestination = endpoint
            }
            let writer = try flowLog.map { try LineWriter(path: $0) }
            if let writer { configuration.flowLog = { @Sendable line in writer.write(line) } }
            guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]) else {
                throw ValidationError("--listen must be HOST:PORT")
            }
            let host = String(listen[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            let server = ProxyServer(configuration: configuration)
            let channel = try await server.start(host: host, port: port)
            printError("loupe proxy: listening on \(channel.localAddress?.description ?? listen) (\(server.eventLoops) event loops), root \(root.certificate.sha256Fingerprint.prefix(16))…")
            // SIGHUP opens the flow log's file again (logrotate); SIGTERM and SIGINT end the
            // proxy once its queued lines are written.
            let signals = AgentSignals()
            Task {
                for await signal in signals.stream {
                    if signal == SIGHUP {
                        do { try writer?.reopen() } catch { printError("loupe proxy: \(error)") }
                        continue
                    }
                    writer?.flush(seconds: 2)
                    Foundation.exit(0)
                }
            }
            try await channel.closeFuture.get()
        } catch let error as ValidationError {
            throw error
        } catch {
            printError("loupe: error: \(error)")
            throw ExitCode(1)
        }
    }
}
