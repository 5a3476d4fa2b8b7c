import Foundation
import Platform
import TLS

/// One place a root can be trusted: a system store or an NSS database.
public struct TrustTarget: Sendable, Codable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable { case debian, fedora, nss }
    public var kind: Kind
    /// The anchor file (system stores) or the NSS database directory.
    public var location: String
    /// NSS nickname, or the anchor's file name.
    public var name: String

    public var description: String {
        switch kind {
        case .debian: "system store (Debian/Ubuntu): \(location)"
        case .fedora: "system store (Fedora/RHEL): \(location)"
        case .nss: "NSS database: \(location) as \"\(name)\""
        }
    }
}

/// Where to look for trust stores. Defaults are the real system paths.
public struct TrustPaths: Sendable {
    public var debianAnchors = "/usr/local/share/ca-certificates"
    public var fedoraAnchors = "/etc/pki/ca-trust/source/anchors"
    /// Home directories are found under these (plus /root).
    public var homeParents = ["/home"]
    public var rootHome = "/root"
    public init() {}
}

/// Installs a root certificate into the system stores and users' NSS databases, as mkcert
/// does, recording what it added so that uninstall removes exactly that and nothing else.
public struct TrustInstaller {
    public var paths: TrustPaths
    /// Records what install added (in the state directory).
    public var manifest: String

    public init(paths: TrustPaths = TrustPaths(), manifest: String) {
        self.paths = paths
        self.manifest = manifest
    }

    public struct Action: Sendable, CustomStringConvertible {
        public var target: TrustTarget
        public var commands: [[String]]
        public var description: String { "\(target)" + commands.map { "\n    $ " + $0.joined(separator: " ") }.joined() }
    }

    /// The targets present on this machine for `certificate`.
    public func targets(for certificate: Certificate) -> [TrustTarget] {
        let tag = "loupe-\(certificate.sha256Fingerprint.prefix(16))"
        var found: [TrustTarget] = []
        if Subprocess.which("update-ca-certificates") != nil, FileManager.default.fileExists(atPath: PrivateFiles.directory(of: paths.debianAnchors)) {
            found.append(TrustTarget(kind: .debian, location: "\(paths.debianAnchors)/\(tag).crt", name: "\(tag).crt"))
        }
        if Subprocess.which("update-ca-trust") != nil, FileManager.default.fileExists(atPath: paths.fedoraAnchors) {
            found.append(TrustTarget(kind: .fedora, location: "\(paths.fedoraAnchors)/\(tag).pem", name: "\(tag).pem"))
        }
        if Subprocess.which("certutil") != nil {
            let nickname = "Loupe root \(certificate.sha256Fingerprint.prefix(16))"
            found += nssDatabases().map { TrustTarget(kind: .nss, location: $0, name: nickname) }
        }
        return found
    }

    /// NSS databases in users' homes: Chromium's ~/.pki/nssdb and Firefox profiles (cert9.db).
    public func nssDatabases() -> [String] {
        let fm = FileManager.default
        var homes = [paths.rootHome]
        for parent in paths.homeParents {
            homes += ((try? fm.contentsOfDirectory(atPath: parent)) ?? []).sorted().map { "\(parent)/\($0)" }
        }
        var databases: [String] = []
        for home in homes {
            let chromium = "\(home)/.pki/nssdb"
            if fm.fileExists(atPath: "\(chromium)/cert9.db") { databases.append(chromium) }
            let firefox = "\(home)/.mozilla/firefox"
            for profile in ((try? fm.contentsOfDirectory(atPath: firefox)) ?? []).sorted() where fm.fileExists(atPath: "\(firefox)/\(profile)/cert9.db") {
                databases.append("\(firefox)/\(profile)")
            }
        }
        return databases
    }

    func commands(_ target: TrustTarget, install: Bool, pemFile: String) -> [[String]] {
        switch (target.kind, install) {
        case (.debian, _): [["update-ca-certificates"]]
        case (.fedora, _): [["update-ca-trust", "extract"]]
        case (.nss, true): [["certutil", "-A", "-d", "sql:\(target.location)", "-t", "C,,", "-n", target.name, "-i", pemFile]]
        case (.nss, false): [["certutil", "-D", "-d", "sql:\(target.location)", "-n", target.name]]
        }
    }

    /// Installs `certificate` everywhere it is not yet trusted. With `dryRun`, only says what it would do.
    public func install(_ certificate: Certificate, dryRun: Bool) throws -> [Action] {
        var recorded = try loadManifest()
        var actions: [Action] = []
        for target in targets(for: certificate) where !isTrusted(certificate, at: target) {
            let pemFile = target.kind == .nss ? "<root PEM>" : target.location
            var action = Action(target: target, commands: commands(target, install: true, pemFile: pemFile))
            if target.kind != .nss {
                action.commands.insert(["write", target.location], at: 0)
            }
            actions.append(action)
            if dryRun { continue }
            try perform(target, certificate: certificate, install: true)
            if !recorded.contains(target) { recorded.append(target) }
            try saveManifest(recorded)
        }
        return actions
    }

    /// Removes exactly what `install` recorded.
    public func uninstall(dryRun: Bool) throws -> [Action] {
        var recorded = try loadManifest()
        var actions: [Action] = []
        for target in recorded {
            var action = Action(target: target, commands: commands(target, install: false, pemFile: ""))
            if target.kind != .nss { action.commands.insert(["remove", target.location], at: 0) }
            actions.append(action)
            if dryRun { continue }
            try perform(target, certificate: nil, install: false)
            recorded.removeAll { $0 == target }
            try saveManifest(recorded)
        }
        return actions
    }

    /// Whether the root is trusted at `target` now.
    public func isTrusted(_ certificate: Certificate, at target: TrustTarget) -> Bool {
        switch target.kind {
        case .debian, .fedora:
            guard let bytes = try? PrivateFiles.read(target.location), let installed = try? Certificate.parse(bytes) else { return false }
            return installed.der == certificate.der
        case .nss:
            guard let result = try? Subprocess.run("certutil", ["-L", "-d", "sql:\(target.location)", "-n", target.name, "-a"]),
                  result.status == 0, let installed = try? Certificate.parse(result.stdout) else { return false }
            return installed.der == certificate.der
        }
    }

    private func perform(_ target: TrustTarget, certificate: Certificate?, install: Bool) throws {
        switch target.kind {
        case .debian, .fedora:
            if install, let certificate {
                try PrivateFiles.makeDirectory(PrivateFiles.directory(of: target.location))
                try PrivateFiles.atomicWrite(target.location, Array(certificate.pem.utf8), mode: 0o644)
            } else if PrivateFiles.exists(target.location) {
                guard unlink(target.location) == 0 else { throw FileError(path: target.location, reason: "cannot remove: \(String(cString: strerror(errno)))") }
            }
            for command in commands(target, install: install, pemFile: target.location) {
                try Subprocess.check(command[0], Array(command.dropFirst()), timeout: 120)
            }
        case .nss:
            if install, let certificate {
                let temp = NSTemporaryDirectory() + "loupe-root-\(getpid()).pem"
                try PrivateFiles.atomicWrite(temp, Array(certificate.pem.utf8), mode: 0o644)
                defer { unlink(temp) }
                let command = commands(target, install: true, pemFile: temp)[0]
                try Subprocess.check(command[0], Array(command.dropFirst()))
            } else {
                let command = commands(target, install: false, pemFile: "")[0]
                let result = try Subprocess.run(command[0], Array(command.dropFirst()))
                // Already gone (the user removed it by hand) is fine; anything else is an error.
                if result.status != 0 && !result.stderrText.contains("could not find certificate named") {
                    throw CommandError(command: command.joined(separator: " "), reason: result.stderrText)
                }
            }
        }
    }

    func loadManifest() throws -> [TrustTarget] {
        guard PrivateFiles.exists(manifest) else { return [] }
        let bytes = try PrivateFiles.read(manifest)
        do {
            return try JSONDecoder().decode([TrustTarget].self, from: Data(bytes))
        } catch {
            throw FileError(path: manifest, reason: "not a trust manifest (\(error)); left as it is")
        }
    }

    func saveManifest(_ targets: [TrustTarget]) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try PrivateFiles.makeDirectory(PrivateFiles.directory(of: manifest))
        try PrivateFiles.atomicWrite(manifest, Array(try encoder.encode(targets)) + [0x0A])
    }
}
