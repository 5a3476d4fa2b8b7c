import ArgumentParser
import CA
import Foundation
import Platform
import Store
import TLS

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store",
        abstract: "The sealed store: status, items, client identities.",
        subcommands: [Status.self, List.self, ImportP12.self, SetSecret.self, Delete.self]
    )

    struct Status: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Which protection is in force, what it does and does not protect against, item counts.")
        @OptionGroup var state: StateOptions
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            try loupe.run {
                let layout = StoreLayout(stateDirectory: state.stateDir)
                guard SealedStore.exists(stateDirectory: state.stateDir) else { throw StoreError.noStore(path: layout.directory) }
                let provider = try SealedStore.recordedProvider(stateDirectory: state.stateDir)
                var report: [String: Any] = [
                    "path": layout.directory, "provider": provider.rawValue,
                    "protects_against": provider.protects, "does_not_protect_against": provider.doesNotProtect,
                ]
                if provider == .tpm2 { report["tcti"] = state.tcti ?? StoreOptions.defaultTCTI }
                var openError: Error?
                do {
                    let store = try state.openStore()
                    report["unsealed"] = true
                    report["items"] = Dictionary(uniqueKeysWithValues: ItemClass.allCases.map { c in (c.rawValue, store.find(c).count) })
                    report["identities"] = store.identities().count
                    report["problems"] = store.problems.map(\.description)
                    report["interrupted_writes"] = store.leftoverTempFiles
                } catch {
                    report["unsealed"] = false
                    report["error"] = "\(error)"
                    openError = error
                }
                if json {
                    try printJSON(report)
                } else {
                    print("store       \(layout.directory)")
                    print("protection  \(provider.rawValue)\(provider == .tpm2 ? " (TCTI \(report["tcti"]!))" : "")")
                    print("protects against:")
                    for line in provider.protects { print("  - \(line)") }
                    print("does not protect against:")
                    for line in provider.doesNotProtect { print("  - \(line)") }
                    if let items = report["items"] as? [String: Int] {
                        print("items       " + ItemClass.allCases.map { "\(items[$0.rawValue]!) \($0.rawValue)" }.joined(separator: ", ") + ", \(report["identities"]!) identities")
                        for problem in report["problems"] as? [String] ?? [] { print("problem     \(problem)") }
                        for file in report["interrupted_writes"] as? [String] ?? [] { print("leftover    \(file) (an interrupted write; the item it was replacing is intact)") }
                    }
                }
                if let openError { throw openError }
                if !(report["problems"] as? [String] ?? []).isEmpty { throw ExitCode(1) }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Items with their attributes and references (never the secret bytes).")
        @OptionGroup var state: StateOptions
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            try loupe.run {
                let store = try state.openStore()
                if json {
                    try printJSON(store.items.map { item -> [String: Any] in
                        ["reference": item.ref, "class": item.itemClass.rawValue, "attributes": item.attributes,
                         "created": iso(item.created), "modified": iso(item.modified)]
                    })
                } else {
                    for item in store.items {
                        let attributes = item.attributes.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
                        print("\(item.ref)  \(item.itemClass.rawValue.padding(toLength: 11, withPad: " ", startingAt: 0))  \(attributes)")
                    }
                }
                for problem in store.problems { printError("problem: \(problem)") }
            }
        }
    }

    struct ImportP12: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "import-p12", abstract: "Import a client identity (key + certificate) for mTLS upstreams.")
        @OptionGroup var state: StateOptions
        @Argument(help: "The PKCS#12 file.") var file: String
        @Option(help: "File holding the PKCS#12 password (first line).") var passwordFile: String
        @Option(help: "Label for the identity; policies name it.") var label: String
        @OptionGroup var control: ControlOptions

        func run() throws {
            try loupe.run {
                let passwordText = try String(contentsOfFile: passwordFile, encoding: .utf8)
                let password = String(passwordText.split(separator: "\n", omittingEmptySubsequences: false).first ?? "")
                let bundle = try PKCS12Bundle.parse(Array(try Data(contentsOf: URL(fileURLWithPath: file))), password: password)
                let store = try state.openStore()
                if !store.find(.certificate, matching: ["label": label, "role": "client-identity"]).isEmpty {
                    throw StoreError.invalid("an identity labelled '\(label)' already exists; delete it first")
                }
                let attributes = ["label": label, "role": "client-identity"]
                let key = try store.add(.key, data: try bundle.key.pkcs8DER(), attributes: attributes)
                let certificate: Item
                do {
                    certificate = try store.add(.certificate, data: bundle.certificate.der, attributes: attributes)
                } catch {
                    try? store.delete(key.ref)  // the key alone is no identity: undo
                    throw error
                }
                var chainRefs: [String] = []
                for cert in bundle.chain {
                    // An intermediate already stored (shared by another identity) is reused.
                    if let item = try? store.add(.certificate, data: cert.der, attributes: ["label": label, "role": "chain"]) { chainRefs.append(item.ref) }
                }
                print("imported identity '\(label)': \(bundle.certificate.subject)")
                print("  certificate \(certificate.ref)\n  key         \(key.ref)" + (chainRefs.isEmpty ? "" : "\n  chain       \(chainRefs.joined(separator: " "))"))
                control.tellAgent(otherwise: "so it presents '\(label)' to upstreams")
            }
        }
    }

    struct SetSecret: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-secret", abstract: "Store a secret (created, or updated in place keeping its reference).")
        @OptionGroup var state: StateOptions
        @Argument(help: "The secret's label.") var label: String
        @Option(help: "File holding the secret bytes ('-' for stdin).") var valueFile: String

        func run() throws {
            try loupe.run {
                let bytes = valueFile == "-" ? Array(FileHandle.standardInput.readDataToEndOfFile()) : try PrivateFiles.read(valueFile)
                let store = try state.openStore()
                if let existing = store.find(.secret, matching: ["label": label]).first {
                    try store.update(existing.ref, data: bytes)
                    print("updated secret '\(label)' (\(existing.ref))")
                } else {
                    let item = try store.add(.secret, data: bytes, attributes: ["label": label])
                    print("stored secret '\(label)' (\(item.ref))")
                }
            }
        }
    }

    struct Delete: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete one item by reference (explicit; nothing is ever deleted otherwise).")
        @OptionGroup var state: StateOptions
        @Argument(help: "The item's reference (see 'loupe store list').") var reference: String
        @OptionGroup var control: ControlOptions

        func run() throws {
            try loupe.run {
                let store = try state.openStore()
                guard let item = store.item(reference) else { throw StoreError.notFound(ref: reference) }
                if item.attributes["label"] == "loupe-root" {
                    throw StoreError.invalid("\(reference) is part of a root CA; use 'loupe ca retire-previous' or 'loupe ca rotate'")
                }
                try store.delete(reference)
                print("deleted \(item.itemClass.rawValue) \(reference) (\(item.label))")
                if item.attributes["role"] == "client-identity" { control.tellAgent(otherwise: "so it stops presenting '\(item.label)'") }
            }
        }
    }
}
