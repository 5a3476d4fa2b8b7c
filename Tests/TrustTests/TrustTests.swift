import Foundation
import TestSupport
import Testing
import TLS
@testable import Trust

@Suite struct TrustDiscoveryTests {
    func certificate() throws -> Certificate {
        let key = try PrivateKey.generate(.ecP256)
        let spec = CertificateSpec(subject: .attributes([("CN", "root")]), serial: try CertificateSpec.randomSerial(),
                                   notBefore: Date(), notAfter: Date().addingTimeInterval(86_400), publicKey: key, extensions: [])
        return try CertificateBuilder.sign(spec, issuer: nil, issuerKey: key)
    }

    @Test func findsChromiumAndFirefoxDatabasesOnly() throws {
        let dir = TestEnv.scratch("homes")
        defer { TestEnv.remove(dir) }
        let fm = FileManager.default
        for path in ["home/alice/.pki/nssdb", "home/bob/.mozilla/firefox/x.default", "home/bob/.mozilla/firefox/empty", "home/carol", "root/.pki/nssdb"] {
            try fm.createDirectory(atPath: "\(dir)/\(path)", withIntermediateDirectories: true)
        }
        for db in ["home/alice/.pki/nssdb", "home/bob/.mozilla/firefox/x.default", "root/.pki/nssdb"] {
            _ = fm.createFile(atPath: "\(dir)/\(db)/cert9.db", contents: Data())
        }
        var paths = TrustPaths()
        paths.homeParents = ["\(dir)/home"]
        paths.rootHome = "\(dir)/root"
        let installer = TrustInstaller(paths: paths, manifest: "\(dir)/manifest.json")
        #expect(installer.nssDatabases() == ["\(dir)/root/.pki/nssdb", "\(dir)/home/alice/.pki/nssdb", "\(dir)/home/bob/.mozilla/firefox/x.default"])
    }

    @Test func dryRunChangesNothingAndUninstallWithoutInstallIsEmpty() throws {
        let dir = TestEnv.scratch("dry")
        defer { TestEnv.remove(dir) }
        var paths = TrustPaths()
        paths.debianAnchors = "\(dir)/anchors"
        paths.fedoraAnchors = "\(dir)/none"
        paths.homeParents = []
        paths.rootHome = "\(dir)/nohome"
        try FileManager.default.createDirectory(atPath: paths.debianAnchors, withIntermediateDirectories: true)
        let installer = TrustInstaller(paths: paths, manifest: "\(dir)/manifest.json")
        let root = try certificate()
        let actions = try installer.install(root, dryRun: true)
        if TestEnv.has("update-ca-certificates") {
            #expect(actions.map(\.target.kind) == [.debian])
            #expect(actions.first?.target.location == "\(dir)/anchors/loupe-\(root.sha256Fingerprint.prefix(16)).crt")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: paths.debianAnchors).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: "\(dir)/manifest.json"))
        #expect(try installer.uninstall(dryRun: false).isEmpty)
    }

    @Test func aCorruptManifestIsAnErrorAndKept() throws {
        let dir = TestEnv.scratch("manifest")
        defer { TestEnv.remove(dir) }
        try "{not json".write(toFile: "\(dir)/manifest.json", atomically: true, encoding: .utf8)
        let installer = TrustInstaller(manifest: "\(dir)/manifest.json")
        #expect(throws: (any Error).self) { try installer.uninstall(dryRun: false) }
        #expect(try String(contentsOfFile: "\(dir)/manifest.json", encoding: .utf8) == "{not json")
    }
}
