import Agent
import ArgumentParser
import CA
import Foundation
import Store
import TLS

extension KeyAlgorithm: ExpressibleByArgument {}
extension ExportFormat: ExpressibleByArgument {}

struct CACommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca",
        abstract: "The per-host root CA: create, show, export, rotate, mint leaves.",
        subcommands: [Init.self, Show.self, Export.self, Rotate.self, RetirePrevious.self, Mint.self]
    )

    enum ProviderChoice: String, ExpressibleByArgument, CaseIterable { case auto, tpm2, hostKey = "host-key" }

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create this host's root CA (once; an existing root is kept).")
        @OptionGroup var state: StateOptions
        @OptionGroup var profileOptions: ProfileOptions
        @Option(help: "Key type of the root (default from the profile).") var key: KeyAlgorithm?
        @Option(help: "Store protection when the store is new: auto (tpm2 when a TPM is present), tpm2, host-key.")
        var provider: ProviderChoice = .auto

        func run() throws {
            try loupe.run {
                let profile = try profileOptions.load()
                let store: SealedStore
                if SealedStore.exists(stateDirectory: state.stateDir) {
                    store = try state.openStore()
                } else {
                    let kind: ProviderKind = switch provider {
                    case .auto: state.storeOptions.preferredProvider
                    case .tpm2: .tpm2
                    case .hostKey: .hostKey
                    }
                    store = try SealedStore.create(stateDirectory: state.stateDir, provider: kind, options: state.storeOptions)
                    print("created the sealed store in \(store.layout.directory) (protection: \(kind.rawValue))")
                }
                switch try RootAuthority(store: store, profile: profile).initialize(algorithm: key) {
                case .created(let root):
                    print("created the root CA: \(root.certificate.subject)")
                    print("sha256 \(root.certificate.sha256Fingerprint)")
                case .existing(let root):
                    print("a root CA already exists and was kept: \(root.certificate.subject)")
                    print("sha256 \(root.certificate.sha256Fingerprint)")
                    if key != nil { print("(--key applies to new roots only; 'loupe ca rotate --key ...' makes one)") }
                }
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the root CA (and the previous one during a rotation).")
        @OptionGroup var state: StateOptions
        @Flag(help: "JSON output.") var json = false

        func run() throws {
            try loupe.run {
                let store = try state.openStore()
                let authority = RootAuthority(store: store, profile: CAProfile())
                guard let current = try authority.root() else { throw CAError("no root CA yet; run 'loupe ca init'") }
                let previous = try authority.root(.previous)
                let describe = { (root: Root, role: String) -> [String: Any] in
                    let c = root.certificate
                    return ["role": role, "subject": c.subject, "issuer": c.issuer, "serial": c.serialHex,
                            "sha256": c.sha256Fingerprint, "not_before": iso(c.notBefore), "not_after": iso(c.notAfter),
                            "key_type": c.keyDescription, "protection": store.provider.rawValue,
                            "reference": root.certificateRef]
                }
                if json {
                    var out = describe(current, "current")
                    if let previous { out["previous"] = describe(previous, "previous") }
                    try printJSON(out)
                    return
                }
                for (root, role) in [(current, "current")] + (previous.map { [($0, "previous")] } ?? []) {
                    let c = root.certificate
                    print("""
                    \(role) root
                      subject     \(c.subject)
                      serial      \(c.serialHex)
                      sha256      \(c.sha256Fingerprint)
                      valid       \(iso(c.notBefore)) to \(iso(c.notAfter))
                      key         \(c.keyDescription), sealed in the store (protection: \(store.provider.rawValue))
                    """)
                }
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Export the root certificate (never the key) for trust deployment.",
            discussion: "--from converts a certificate collected elsewhere (PEM, DER, or an MDM <result> line) without a store.")
        @OptionGroup var state: StateOptions
        @Option(help: "pem | der | mobileconfig | mdm") var format: ExportFormat = .pem
        @Option(help: "Write to this file instead of stdout.") var out: String?
        @Flag(help: "Export the previous root (during a rotation).") var previous = false
        @Option(help: "Read the certificate from this file instead of the store.") var from: String?
        /// Without root, the running agent exports through its control socket (group loupe).
        @OptionGroup var control: ControlOptions

        func run() throws {
            try loupe.run {
                // Members of group loupe cannot open the root-only store: the agent exports for them.
                if geteuid() != 0, from == nil, !previous {
                    let answer = try ControlClient.call(ControlRequest(command: .caExport, format: format.rawValue), to: control.controlSocket)
                    guard let b64 = answer["base64"] as? String, let exported = Data(base64Encoded: b64).map(Array.init) else {
                        throw CAError("the agent sent no certificate")
                    }
                    try emit(exported, to: out)
                    return
                }
                let certificate: Certificate
                if let from {
                    certificate = try RootExport.importCertificate(Array(try Data(contentsOf: URL(fileURLWithPath: from))))
                } else {
                    let authority = RootAuthority(store: try state.openStore(), profile: CAProfile())
                    guard let root = try authority.root(previous ? .previous : .current) else {
                        throw CAError(previous ? "there is no previous root" : "no root CA yet; run 'loupe ca init'")
                    }
                    certificate = root.certificate
                }
                var template: String?
                if format == .mobileconfig, let dir = CAFiles.directory() {
                    template = try String(contentsOfFile: "\(dir)/apple-root.mobileconfig", encoding: .utf8)
                }
                try emit(try RootExport.render(certificate, as: format, template: template), to: out)
            }
        }
    }

    struct Rotate: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Make a new root; the old one stays as 'previous' until retire-previous.")
        @OptionGroup var state: StateOptions
        @OptionGroup var profileOptions: ProfileOptions
        @Option(help: "Key type of the new root (default: same as the old one).") var key: KeyAlgorithm?
        @OptionGroup var control: ControlOptions

        func run() throws {
            try loupe.run {
                let authority = RootAuthority(store: try state.openStore(), profile: try profileOptions.load())
                let (new, old) = try authority.rotate(algorithm: key)
                print("new root:      \(new.certificate.subject)\n  sha256 \(new.certificate.sha256Fingerprint)")
                print("previous root: \(old.certificate.subject)\n  sha256 \(old.certificate.sha256Fingerprint)")
                control.tellAgent(otherwise: "so it mints under the new root")
                print("deploy the new root to your fleet, then run 'loupe ca retire-previous'")
            }
        }
    }

    struct RetirePrevious: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "retire-previous", abstract: "Delete the previous root (after a rotation).")
        @OptionGroup var state: StateOptions

        func run() throws {
            try loupe.run {
                let retired = try RootAuthority(store: try state.openStore(), profile: CAProfile()).retirePrevious()
                print("retired \(retired.certificate.subject) (sha256 \(retired.certificate.sha256Fingerprint))")
            }
        }
    }

    struct Mint: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a leaf + chain PEM for host names and/or IP addresses.")
        @OptionGroup var state: StateOptions
        @OptionGroup var profileOptions: ProfileOptions
        @Argument(help: "Host names or IP addresses; the first is the CN.") var names: [String] = []
        @Option(help: "Mirror this upstream certificate's subject and SAN list (PEM or DER).") var like: String?
        @Flag(help: "Also print the shared leaf private key (PEM) after the chain.") var withKey = false
        @Option(help: "Write to this file instead of stdout.") var out: String?

        func run() throws {
            try loupe.run {
                let request: LeafRequest
                if let like {
                    let upstream = try Certificate.parse(Array(try Data(contentsOf: URL(fileURLWithPath: like))))
                    request = LeafRequest.mirroring(upstream, extraNames: names.map(SubjectAltName.parse))
                } else {
                    guard !names.isEmpty else { throw ValidationError("name at least one host or IP, or use --like FILE") }
                    request = LeafRequest.forNames(names)
                }
                let authority = RootAuthority(store: try state.openStore(), profile: try profileOptions.load())
                guard let root = try authority.root() else { throw CAError("no root CA yet; run 'loupe ca init'") }
                let leaf = try LeafMinter(root: root, profile: authority.profile).mint(request)
                var pem = leaf.pem
                if withKey { pem += try leaf.key.pkcs8PEM() }
                try emit(Array(pem.utf8), to: out, mode: withKey ? 0o600 : 0o644)
            }
        }
    }
}
