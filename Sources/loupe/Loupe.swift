import ArgumentParser

@main
struct Loupe: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loupe",
        abstract: "Loupe: per-flow verdicts and TLS inspection for this host, under a per-host root CA.",
        subcommands: [RunCommand.self, DemoCommand.self, StatusCommand.self, FlowsCommand.self, ReloadCommand.self, CACommand.self, StoreCommand.self, TrustCommand.self, VerdictCommand.self, ProxyCommand.self]
    )
}
