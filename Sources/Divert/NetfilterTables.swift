import Platform

/// Installs and removes Loupe's ruleset with the real tools. Touches only Loupe's own table
/// (and, on the iptables-nft backend, Loupe's own chain and its jump rules) — never flushes
/// anything else.
public enum NetfilterTables {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Native nft `queue` when the kernel has it (a check-mode load of a throwaway table),
    /// else the iptables-nft chain.
    public static func probeBackend() -> QueueBackend {
        let probe = Ruleset.nativeQueueProbe(table: "loupe_probe")
        guard let result = try? Subprocess.run("nft", ["-c", "-f", "-"], stdin: Array(probe.utf8)) else { return .iptablesNFT }
        return result.status == 0 ? .nft : .iptablesNFT
    }

    /// Replaces whatever ruleset Loupe had (a stale one from a crash included) with this one.
    /// The nft table is replaced in one transaction; the iptables-nft chain is rebuilt after it.
    public static func install(_ ruleset: Ruleset) throws {
        if ruleset.settings.backend == .iptablesNFT {
            // Queue rules first match the marks the (new) table sets: install them before the table.
            removeIPTablesChain(ruleset.settings)
            for tool in ["iptables-nft-restore", "ip6tables-nft-restore"] {
                try run(tool, ["--noflush"], ruleset.iptablesRestoreScript)
            }
        } else {
            removeIPTablesChain(ruleset.settings)
        }
        try run("nft", ["-f", "-"], ruleset.nftScript)
    }

    /// Stops deciding new flows but keeps open redirected connections translated (draining).
    public static func drain(_ settings: DivertSettings) throws {
        try run("nft", ["-f", "-"], Ruleset(settings).nftDrainingScript)
        removeIPTablesChain(settings)
    }

    /// Removes Loupe's table and chain; quiet when they are already gone.
    public static func remove(_ settings: DivertSettings) throws {
        try run("nft", ["-f", "-"], Ruleset(settings).nftRemoveScript)
        removeIPTablesChain(settings)
    }

    /// Whether Loupe's table is loaded now.
    public static func isInstalled(table: String = "loupe") -> Bool {
        (try? Subprocess.run("nft", ["list", "table", "inet", table]))?.status == 0
    }

    static func removeIPTablesChain(_ settings: DivertSettings) {
        let chain = settings.iptablesChain
        for tool in ["iptables-nft", "ip6tables-nft"] where Subprocess.which(tool) != nil {
            guard (try? Subprocess.run(tool, ["-w", "-t", "mangle", "-n", "-L", chain]))?.status == 0 else { continue }
            for hook in ["OUTPUT", "INPUT", "PREROUTING", "FORWARD"] {
                var rounds = 0
                while rounds < 16, (try? Subprocess.run(tool, ["-w", "-t", "mangle", "-D", hook, "-j", chain]))?.status == 0 { rounds += 1 }
            }
            _ = try? Subprocess.run(tool, ["-w", "-t", "mangle", "-F", chain])
            _ = try? Subprocess.run(tool, ["-w", "-t", "mangle", "-X", chain])
            // iptables-nft created the mangle table for our jump if it was missing; an empty one
            // does nothing, so it goes too. A table with anyone's rules in it stays.
            let family = tool.hasPrefix("ip6") ? "ip6" : "ip"
            if let listing = try? Subprocess.run("nft", ["-j", "list", "table", family, "mangle"]), listing.status == 0,
               !listing.stdoutText.contains("\"rule\"") {
                _ = try? Subprocess.run("nft", ["delete", "table", family, "mangle"])
            }
        }
    }

    static func run(_ tool: String, _ arguments: [String], _ input: String) throws {
        let result: CommandResult
        do {
            result = try Subprocess.run(tool, arguments, stdin: Array(input.utf8))
        } catch {
            throw Failure(description: "\(tool): \(error)")
        }
        guard result.status == 0 else {
            throw Failure(description: "\(tool) \(arguments.joined(separator: " ")) failed: \(result.stderrText)")
        }
    }
}
