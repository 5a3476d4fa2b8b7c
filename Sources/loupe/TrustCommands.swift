import ArgumentParser
import CA
import Foundation
import Store
import TLS
import Trust

struct TrustCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust",
        abstract: "Trust the root on this host: system stores and users' NSS databases.",
        subcommands: [Install.self, Uninstall.self, Status.self]
    )

    static func installer(_ state: StateOptions) -> TrustInstaller {
        TrustInstaller(manifest: "\(state.stateDir)/trust-installed.json")
    }

    static func currentRoot(_ state: StateOptions) throws -> Certificate {
        guard let root = try RootAuthority(store: try state.openStore(), profile: CAProfile()).root() else {
            throw CAError("no root CA yet; run 'loupe ca init'")
        }
        return root.certificate
    }

    struct Install: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add the current root to every trust store found.")
        @OptionGroup var state: StateOptions
        @Flag(help: "Say what would be done, change nothing.") var dryRun = false

        func run() throws {
            try loupe.run {
                let actions = try TrustCommand.installer(state).install(try TrustCommand.currentRoot(state), dryRun: dryRun)
                if actions.isEmpty { print("the root is already trusted everywhere Loupe knows (see 'loupe trust status')") }
                for action in actions { print("\(dryRun ? "would install" : "installed") in \(action)") }
            }
        }
    }

    struct Uninstall: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove exactly what 'loupe trust install' added.")
        @OptionGroup var state: StateOptions
        @Flag(help: "Say what would be done, change nothing.") var dryRun = false

        func run() throws {
            try loupe.run {
                let actions = try TrustCommand.installer(state).uninstall(dryRun: dryRun)
                if actions.isEmpty { print("nothing to remove: 'loupe trust install' has not added anything") }
                for action in actions { print("\(dryRun ? "would remove" : "removed") from \(action)") }
            }
        }
    }

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Where the root is trusted.")
        @OptionGroup var state: StateOptions
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            try loupe.run {
                let root = try TrustCommand.currentRoot(state)
                let installer = TrustCommand.installer(state)
                let rows = installer.targets(for: root).map { ($0, installer.isTrusted(root, at: $0)) }
                if json {
                    try printJSON(["sha256": root.sha256Fingerprint,
                                   "targets": rows.map { ["kind": $0.0.kind.rawValue, "location": $0.0.location, "trusted": $0.1] }])
                    return
                }
                print("root sha256 \(root.sha256Fingerprint)")
                if rows.isEmpty { print("no trust stores found on this host") }
                for (target, trusted) in rows { print("\(trusted ? "trusted    " : "not trusted") \(target)") }
            }
        }
    }
}
