import ArgumentParser
import Foundation
import Policy
import TOML
import Wire

struct VerdictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verdict",
        abstract: "Prove what a policy decides: regression corpora and explanations.",
        subcommands: [Test.self, Explain.self, Replay.self]
    )

    struct PolicyOption: ParsableArguments {
        @Option(help: ArgumentHelp("The policy (env LOUPE_POLICY; default /etc/loupe/policy.toml).", valueName: "file"))
        var policy: String = ProcessInfo.processInfo.environment["LOUPE_POLICY"] ?? "/etc/loupe/policy.toml"
    }

    /// Corpus and policy errors exit 2 (a broken test), failing verdicts exit 1.
    static func loadOrExit<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch {
            printError("loupe: error: \(error)")
            throw ExitCode(2)
        }
    }

    struct Test: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Evaluate every flow of the corpora; exit 0 only if all verdicts are as expected.")
        @OptionGroup var policyOption: PolicyOption
        @Argument(help: "Corpus files or directories of *.toml files.") var paths: [String]
        @Option(help: "Also write JUnit XML here.") var junit: String?

        func run() throws {
            let policy = try loadOrExit { try Policy.load(path: policyOption.policy) }
            let flows = try loadOrExit { () throws -> [CorpusFlow] in
                var flows: [CorpusFlow] = []
                for file in try corpusFiles(paths) {
                    let text = try String(contentsOfFile: file, encoding: .utf8)
                    flows += try Corpus.parse(text, file: file)
                }
                return flows
            }
            let outcomes = flows.map { FlowOutcome($0, policy: policy) }
            for outcome in outcomes where !outcome.passed {
                for failure in outcome.failures { print("FAIL \(outcome.flow.file):\(outcome.flow.line) \"\(outcome.flow.name)\": \(failure)") }
            }
            if let junit { try JUnitReport.render(outcomes).write(toFile: junit, atomically: true, encoding: .utf8) }
            let failed = outcomes.filter { !$0.passed }.count
            print("verdicts: \(outcomes.count - failed) passed, \(failed) failed")
            if failed > 0 { throw ExitCode(1) }
        }

        func corpusFiles(_ paths: [String]) throws -> [String] {
            var files: [String] = []
            for path in paths {
                var isDirectory: ObjCBool = false
                guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                    throw ConfigError(file: path, line: 0, message: "no such corpus file or directory")
                }
                if isDirectory.boolValue {
                    let names = try FileManager.default.contentsOfDirectory(atPath: path).filter { $0.hasSuffix(".toml") }.sorted()
                    files += names.map { "\(path)/\($0)" }
                } else {
                    files.append(path)
                }
            }
            return files
        }
    }

    struct Explain: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show each stage's decision for one flow and the rules considered.")
        @OptionGroup var policyOption: PolicyOption
        @Option(help: "Destination ADDRESS:PORT ([v6]:port).") var dst: String
        @Option(help: "Source ADDRESS:PORT.") var src: String?
        @Option(help: "tcp | udp") var proto: String = "tcp"
        @Option var uid: UInt32?
        @Option var user: String?
        @Option var gid: UInt32?
        @Option var group: String?
        @Option var exe: String?
        @Option(help: "DNS names of the destination (repeatable).") var name: [String] = []
        @Option(help: "Whether the first bytes were TLS (false: plain HTTP, SSH, ... on the port).") var tls: Bool?
        @Option var sni: String?
        @Option(help: "ALPN offered (repeatable).") var alpn: [String] = []
        @Option var method: String?
        @Option var url: String?

        func run() throws {
            let policy = try loadOrExit { try Policy.load(path: policyOption.policy) }
            var f = FlowFacts()
            guard let p = FlowFacts.Proto(rawValue: proto) else { throw ValidationError("--proto must be tcp or udp") }
            f.proto = p
            guard let d = FlowFacts.Endpoint(dst) else { throw ValidationError("--dst must be ADDRESS:PORT (IPv6 as [addr]:port)") }
            f.dst = d
            if let src {
                guard let s = FlowFacts.Endpoint(src) else { throw ValidationError("--src must be ADDRESS:PORT") }
                f.src = s
            }
            (f.uid, f.user, f.gid, f.group, f.exe) = (uid, user, gid, group, exe)
            (f.names, f.sni, f.alpn, f.method, f.url) = (name, sni, alpn, method, url)
            let last: Stage = (method != nil || url != nil) ? .request : (tls != nil || sni != nil || !alpn.isEmpty) ? .hello : .connect
            // Past connect the flow is TLS unless --tls false says it is not.
            f.tls = last > .connect ? (tls ?? true) : nil
            for stage in Stage.allCases where stage <= last {
                let (decision, considered) = policy.explain(stage, f)
                print("stage \(stage.rawValue): \(decision.verdict.rawValue)\(decision.blockMode.map { " (\($0.rawValue))" } ?? "") — rule \"\(decision.rule)\": \(decision.reason)")
                for (rule, mismatch) in considered {
                    print("  line \(rule.line) \(rule.name): " + (mismatch.map { "no match (\($0))" } ?? "MATCH"))
                }
                let reaches = stage == .connect ? decision.verdict == .inspect : decision.verdict == .bump
                if stage < last && !reaches {
                    print("  (the flow stops here: later stages are not reached)")
                    break
                }
            }
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Decide every flow of a pcap/pcapng capture; optionally freeze the decisions as a corpus.")
        @OptionGroup var policyOption: PolicyOption
        @Argument(help: "The capture (pcap or pcapng).") var capture: String
        @Option(help: "Write the flows and today's decisions as a corpus file.") var emitCorpus: String?

        func run() throws {
            let policy = try loadOrExit { try Policy.load(path: policyOption.policy) }
            let packets = try loadOrExit { () throws -> [CapturedPacket] in
                let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: capture)))
                do { return try CaptureFile.packets(bytes) } catch { throw ConfigError(file: capture, line: 0, message: "\(error)") }
            }
            let flows = CaptureReplay.flows(packets)
            for flow in flows {
                let decisions = FlowOutcome.walk(flow.facts, policy: policy, through: flow.sawHello ? .hello : .connect)
                let text = decisions.map { "\($0.stage.rawValue) \($0.verdict.rawValue) (\($0.rule))" }.joined(separator: ", ")
                print("\(CaptureReplay.label(flow)): \(text)" + (flow.helloProblem.map { " [\($0)]" } ?? ""))
            }
            print("replay: \(packets.count) packets, \(flows.count) flows")
            if let emitCorpus {
                try CaptureReplay.corpus(flows, policy: policy, source: capture).write(toFile: emitCorpus, atomically: true, encoding: .utf8)
                print("wrote \(flows.count) flows to \(emitCorpus)")
            }
        }
    }
}
