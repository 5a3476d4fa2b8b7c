import Foundation
import TestSupport
import Testing
@testable import Store
import TLS

/// A store in a scratch state directory, removed afterwards.
func withStore(_ provider: ProviderKind = .hostKey, options: StoreOptions = StoreOptions(), _ body: (SealedStore, String) throws -> Void) throws {
    let dir = TestEnv.scratch("store")
    defer { TestEnv.remove(dir) }
    let store = try SealedStore.create(stateDirectory: dir, provider: provider, options: options)
    try body(store, dir)
}

func fileMode(_ path: String) -> mode_t {
    var st = stat()
    lstat(path, &st)
    return st.st_mode & 0o7777
}

@Suite struct SealedStoreTests {
    @Test func addFindUpdateKeepsReferenceAndDelete() throws {
        try withStore { store, dir in
            let item = try store.add(.secret, data: Array("one".utf8), attributes: ["label": "api-token"])
            let updated = try store.update(item.ref, data: Array("two".utf8))
            #expect(updated.ref == item.ref)
            let reopened = try SealedStore.open(stateDirectory: dir)
            #expect(reopened.item(item.ref)?.data == Array("two".utf8))
            #expect(reopened.find(.secret, matching: ["label": "api-token"]).count == 1)
            try reopened.delete(item.ref)
            #expect(try SealedStore.open(stateDirectory: dir).items.isEmpty)
            #expect(throws: StoreError.self) { try reopened.delete(item.ref) }
        }
    }

    @Test func filesAreOwnerOnlyAndHoldNoPlaintext() throws {
        try withStore { store, dir in
            let marker = "very-recognisable-secret-\(UUID())"
            let item = try store.add(.secret, data: Array(marker.utf8), attributes: ["label": "marker-label"])
            let layout = StoreLayout(stateDirectory: dir)
            #expect(fileMode(layout.directory) == 0o700)
            #expect(fileMode(layout.items) == 0o700)
            #expect(fileMode(layout.hostKey) == 0o400)
            let itemFile = "\(layout.items)/\(item.ref).item"
            #expect(fileMode(itemFile) == 0o600)
            let raw = String(decoding: try Data(contentsOf: URL(fileURLWithPath: itemFile)), as: UTF8.self)
            #expect(!raw.contains(marker) && !raw.contains("marker-label"))
        }
    }

    @Test func uniquenessPerClassNamesTheClash() throws {
        try withStore { store, _ in
            let key = try PrivateKey.generate(.ecP256)
            let first = try store.add(.key, data: try key.pkcs8DER(), attributes: ["label": "a"])
            do {
                try store.add(.key, data: try key.pkcs8DER(), attributes: ["label": "b"])
                Issue.record("the same key twice must be refused")
            } catch let error as StoreError {
                #expect(error.description.contains("public-key-sha256"))
                #expect(error.description.contains(first.ref))
            }
            try store.add(.secret, data: [1], attributes: ["label": "s"])
            #expect(throws: StoreError.self) { try store.add(.secret, data: [2], attributes: ["label": "s"]) }
            #expect(throws: StoreError.self) { try store.add(.secret, data: [2], attributes: [:]) }
            #expect(throws: StoreError.self) { try store.add(.certificate, data: [0x30, 0x00], attributes: ["label": "x"]) }
        }
    }

    @Test func identitiesAreFoundByPublicKey() throws {
        try withStore { store, _ in
            let key = try PrivateKey.generate(.ecP256)
            let other = try PrivateKey.generate(.ecP256)
            let spec = CertificateSpec(subject: .attributes([("CN", "client")]), serial: try CertificateSpec.randomSerial(),
                                       notBefore: Date(), notAfter: Date().addingTimeInterval(86_400), publicKey: key, extensions: [])
            let cert = try CertificateBuilder.sign(spec, issuer: nil, issuerKey: key)
            try store.add(.key, data: try other.pkcs8DER(), attributes: ["label": "other"])
            #expect(store.identities().isEmpty)
            let certItem = try store.add(.certificate, data: cert.der, attributes: ["label": "client"])
            #expect(store.identities().isEmpty)
            let keyItem = try store.add(.key, data: try key.pkcs8DER(), attributes: ["label": "client"])
            let identities = store.identities()
            #expect(identities.count == 1)
            #expect(identities.first?.certificate.ref == certItem.ref && identities.first?.key.ref == keyItem.ref)
        }
    }

    @Test func corruptTruncatedAndForeignFilesAreReportedAndKept() throws {
        try withStore { store, dir in
            let good = try store.add(.secret, data: [1, 2, 3], attributes: ["label": "good"])
            let bad = try store.add(.secret, data: [4, 5, 6], attributes: ["label": "bad"])
            let short = try store.add(.secret, data: [7], attributes: ["label": "short"])
            let layout = StoreLayout(stateDirectory: dir)
            let badPath = "\(layout.items)/\(bad.ref).item", shortPath = "\(layout.items)/\(short.ref).item"
            var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: badPath)))
            bytes[bytes.count - 3] ^= 0xFF
            try Data(bytes).write(to: URL(fileURLWithPath: badPath))
            let shortBytes = Array(try Data(contentsOf: URL(fileURLWithPath: shortPath)).prefix(5))
            try Data(shortBytes).write(to: URL(fileURLWithPath: shortPath))
            chmod(badPath, 0o600); chmod(shortPath, 0o600)
            // An item copied in from another store: right format, wrong data key.
            let foreignDir = TestEnv.scratch("foreign")
            defer { TestEnv.remove(foreignDir) }
            let foreign = try SealedStore.create(stateDirectory: foreignDir, provider: .hostKey)
            let alien = try foreign.add(.secret, data: [9], attributes: ["label": "alien"])
            let alienPath = "\(layout.items)/\(alien.ref).item"
            try FileManager.default.copyItem(atPath: "\(StoreLayout(stateDirectory: foreignDir).items)/\(alien.ref).item", toPath: alienPath)
            try Data("hello".utf8).write(to: URL(fileURLWithPath: "\(layout.items)/notes.txt"))
            chmod("\(layout.items)/notes.txt", 0o600)

            let reopened = try SealedStore.open(stateDirectory: dir)
            #expect(reopened.items.map(\.ref) == [good.ref])
            #expect(reopened.problems.count == 4)
            #expect(reopened.problems.contains { $0.file == shortPath && $0.reason.contains("truncated") })
            #expect(reopened.problems.contains { $0.file == alienPath && $0.reason.contains("another store") })
            #expect(reopened.problems.contains { $0.file.hasSuffix("notes.txt") && $0.reason.contains("foreign") })
            // Still there, byte for byte: nothing is deleted or rewritten.
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: badPath))) == bytes)
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: shortPath))) == shortBytes)
            // And writing other items still works.
            try reopened.add(.secret, data: [0], attributes: ["label": "new"])
            #expect(Array(try Data(contentsOf: URL(fileURLWithPath: badPath))) == bytes)
        }
    }

    @Test func loosePermissionsAreRefusedWithTheReason() throws {
        try withStore { store, dir in
            let item = try store.add(.secret, data: [1], attributes: ["label": "x"])
            let layout = StoreLayout(stateDirectory: dir)
            chmod(layout.directory, 0o755)
            do {
                _ = try SealedStore.open(stateDirectory: dir)
                Issue.record("a world-readable store directory must be refused")
            } catch {
                #expect("\(error)".contains("0755") && "\(error)".contains("chmod 700"), "\(error)")
            }
            chmod(layout.directory, 0o700)
            let itemFile = "\(layout.items)/\(item.ref).item"
            chmod(itemFile, 0o644)
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir) }
            chmod(itemFile, 0o600)
            chmod(layout.hostKey, 0o444)
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir) }
            chmod(layout.hostKey, 0o400)
            #expect(try SealedStore.open(stateDirectory: dir).items.count == 1)
        }
    }

    @Test(.enabled(if: TestEnv.isRoot, "needs root: chown to another owner"))
    func foreignOwnerIsRefused() throws {
        try withStore { _, dir in
            let layout = StoreLayout(stateDirectory: dir)
            chown(layout.directory, 65534, 65534)
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir) }
            chown(layout.directory, 0, 0)
        }
    }

    @Test func unsealFailureRegeneratesNothing() throws {
        try withStore { store, dir in
            try store.add(.secret, data: [1], attributes: ["label": "x"])
            let layout = StoreLayout(stateDirectory: dir)
            let before = try Data(contentsOf: URL(fileURLWithPath: layout.wrappedDataKey))
            try FileManager.default.moveItem(atPath: layout.hostKey, toPath: "\(dir)/host.key.away")
            do {
                _ = try SealedStore.open(stateDirectory: dir)
                Issue.record("a missing host key must be an error")
            } catch {
                #expect("\(error)".contains("missing") && "\(error)".contains("Nothing was changed"), "\(error)")
            }
            // Creating over an existing store is refused too, so nothing can replace the data key.
            #expect(throws: StoreError.self) { try SealedStore.create(stateDirectory: dir, provider: .hostKey) }
            #expect(!FileManager.default.fileExists(atPath: layout.hostKey))
            #expect(try Data(contentsOf: URL(fileURLWithPath: layout.wrappedDataKey)) == before)
            // A different host key does not open it either.
            try PrivateFiles_write(layout.hostKey, try Crypto.randomBytes(32))
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir) }
            try FileManager.default.removeItem(atPath: layout.hostKey)
            try FileManager.default.moveItem(atPath: "\(dir)/host.key.away", toPath: layout.hostKey)
            #expect(try SealedStore.open(stateDirectory: dir).items.count == 1)
        }
    }

    /// Damage to any one of the store's files — metadata, wrapped data key, host key, an item —
    /// opens as an error or as a reported problem, and changes nothing on disk: once the file
    /// is put back, every item reads as it was.
    @Test func damagedFilesChangeNothingOnDisk() throws {
        var (iterations, rng) = Mutation.campaign(iterations: 300, seed: 0x5709)
        try withStore { store, dir in
            let a = try store.add(.secret, data: [1, 2, 3], attributes: ["label": "a"])
            let b = try store.add(.secret, data: Array(repeating: 7, count: 300), attributes: ["label": "b"])
            let layout = StoreLayout(stateDirectory: dir)
            let files = [layout.metadata, layout.wrappedDataKey, layout.hostKey, "\(layout.items)/\(a.ref).item", "\(layout.items)/\(b.ref).item"]
            func snapshot() throws -> [String: [UInt8]] {
                var out: [String: [UInt8]] = [:]
                for name in try FileManager.default.subpathsOfDirectory(atPath: dir) {
                    var isDirectory: ObjCBool = false
                    if FileManager.default.fileExists(atPath: "\(dir)/\(name)", isDirectory: &isDirectory), !isDirectory.boolValue {
                        out[name] = Array(try Data(contentsOf: URL(fileURLWithPath: "\(dir)/\(name)")))
                    }
                }
                return out
            }
            let pristine = try snapshot()
            for i in 0..<iterations {
                let file = files[i % files.count]
                let original = Array(try Data(contentsOf: URL(fileURLWithPath: file)))
                let mode = fileMode(file)
                chmod(file, 0o600)  // the host key is read-only
                try Data(Mutation.apply(to: original, rng: &rng)).write(to: URL(fileURLWithPath: file))
                chmod(file, mode)
                let damaged = try snapshot()
                if let opened = try? SealedStore.open(stateDirectory: dir) {
                    // What opens is only what still verifies: never an item with other contents.
                    for item in opened.items { #expect([a.ref: [1, 2, 3], b.ref: Array(repeating: 7, count: 300)][item.ref] == item.data, "iteration \(i)") }
                }
                #expect(try snapshot() == damaged, "iteration \(i): opening \(file) damaged changed the files")
                chmod(file, 0o600)
                try Data(original).write(to: URL(fileURLWithPath: file))
                chmod(file, mode)
            }
            #expect(try snapshot() == pristine)
            let reopened = try SealedStore.open(stateDirectory: dir)
            #expect(reopened.items.map(\.data).sorted { $0.count < $1.count } == [[1, 2, 3], Array(repeating: 7, count: 300)])
        }
    }

    @Test func missingMetadataWithItemsRefusesANewDataKey() throws {
        try withStore { store, dir in
            try store.add(.secret, data: [1], attributes: ["label": "x"])
            let layout = StoreLayout(stateDirectory: dir)
            try FileManager.default.removeItem(atPath: layout.metadata)
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir) }
            do {
                _ = try SealedStore.create(stateDirectory: dir, provider: .hostKey)
                Issue.record("must refuse")
            } catch {
                #expect("\(error)".contains("refusing to create a new data key"), "\(error)")
            }
        }
    }
}

func PrivateFiles_write(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    chmod(path, 0o400)
}

@Suite(.serialized) struct TPM2ProviderTests {
    static let available = TestEnv.has("swtpm") && TestEnv.has("tpm2_createprimary")

    @Test(.enabled(if: available, "swtpm or tpm2-tools is not installed (scripts/install-deps installs them)"))
    func sealsToTheTPMAndFailsOnAnotherTPM() throws {
        let tpm = try SoftwareTPM()
        defer { tpm.stop() }
        let other = try SoftwareTPM()
        defer { other.stop() }
        try withStore(.tpm2, options: StoreOptions(tcti: tpm.tcti)) { store, dir in
            let item = try store.add(.secret, data: Array("sealed".utf8), attributes: ["label": "t"])
            let layout = StoreLayout(stateDirectory: dir)
            #expect(FileManager.default.fileExists(atPath: layout.tpmPublic))
            #expect(!FileManager.default.fileExists(atPath: layout.hostKey))
            // Same TPM: opens, several times (transient objects are flushed each time).
            for _ in 0..<4 {
                #expect(try SealedStore.open(stateDirectory: dir, options: StoreOptions(tcti: tpm.tcti)).item(item.ref)?.data == Array("sealed".utf8))
            }
            // The store copied to a machine with a different TPM: a clear error, nothing changed.
            let copy = TestEnv.scratch("copied")
            defer { TestEnv.remove(copy) }
            #expect(TestEnv.sh("cp -a \(dir)/. \(copy)/").status == 0)
            let before = try Data(contentsOf: URL(fileURLWithPath: layout.tpmPrivate))
            do {
                _ = try SealedStore.open(stateDirectory: copy, options: StoreOptions(tcti: other.tcti))
                Issue.record("a store sealed to another TPM must not open")
            } catch {
                #expect("\(error)".contains("different TPM"), "\(error)")
            }
            #expect(try Data(contentsOf: URL(fileURLWithPath: "\(copy)/store/datakey.tpm2.priv")) == before)
            // An unreachable TPM is an error too, never a reason to regenerate.
            #expect(throws: StoreError.self) { try SealedStore.open(stateDirectory: dir, options: StoreOptions(tcti: "swtpm:host=127.0.0.1,port=1")) }
            #expect(try SealedStore.open(stateDirectory: dir, options: StoreOptions(tcti: tpm.tcti)).items.count == 1)
        }
    }
}
