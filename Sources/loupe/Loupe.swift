import ArgumentParser
import Foundation
import Platform

@main
struct Loupe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loupe",
        abstract: "Loupe: per-flow verdicts and TLS inspection for this host, under a per-host root CA.",
        subcommands: [RunCommand.self, DemoCommand.self, StatusCommand.self, FlowsCommand.self, ReloadCommand.self, CACommand.self, StoreCommand.self, TrustCommand.self, VerdictCommand.self, ProxyCommand.self]
    )

    static func main() async {
        // First, before any thread allocates: each would otherwise make a heap arena of its own.
        MemoryTrim.shareArenas()
        // A closed stdout (`loupe run | head`) or log pipe is a write error to report, not a
        // signal that kills the agent with its ruleset still installed.
        signal(SIGPIPE, SIG_IGN)
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
