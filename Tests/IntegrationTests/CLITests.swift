import Foundation
import Store
import TestSupport
import Testing
import TLS

/// `loupe` as a user runs it, against real OpenSSL tools, curl and python3.
@Suite struct CACommandTests {
    @Test func initShowExportRotateRetire() throws {
        let dir = TestEnv.scratch("cli")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        let first = TestEnv.loupe("ca init \(s) --provider host-key")
        #expect(first.status == 0 && first.out.contains("created the root CA"), "\(first)")
        let second = TestEnv.loupe("ca init \(s)")
        #expect(second.status == 0 && second.out.contains("already exists and was kept"), "\(second)")

        let show = TestEnv.loupe("ca show \(s) --json")
        let json = try #require(try JSONSerialization.jsonObject(with: Data(show.out.utf8)) as? [String: Any])
        let fingerprint = try #require(json["sha256"] as? String)
        #expect(json["key_type"] as? String == "EC P-256")
        #expect(json["protection"] as? String == "host-key")
        #expect((json["subject"] as? String)?.contains("Loupe Root CA") == true)

        // PEM and DER are the same certificate; neither holds a private key.
        #expect(TestEnv.loupe("ca export \(s) --format pem --out \(dir)/root.pem").status == 0)
        #expect(TestEnv.loupe("ca export \(s) --format der --out \(dir)/root.der").status == 0)
        let fromDER = TestEnv.sh("openssl x509 -inform der -in \(dir)/root.der -noout -fingerprint -sha256").out
        #expect(fromDER.replacingOccurrences(of: ":", with: "").lowercased().contains(fingerprint))
        #expect(!(try String(contentsOfFile: "\(dir)/root.pem", encoding: .utf8)).contains("PRIVATE KEY"))

        // The Apple profile: a plist with one com.apple.security.root payload carrying the DER.
        #expect(TestEnv.loupe("ca export \(s) --format mobileconfig --out \(dir)/root.mobileconfig").status == 0)
        let plist = TestEnv.sh("""
            python3 -c '
            import plistlib, hashlib, sys
            p = plistlib.load(open("\(dir)/root.mobileconfig", "rb"))
            payloads = p["PayloadContent"]
            assert p["PayloadType"] == "Configuration", p["PayloadType"]
            assert len(payloads) == 1
            assert payloads[0]["PayloadType"] == "com.apple.security.root"
            der = payloads[0]["PayloadContent"]
            assert der == open("\(dir)/root.der", "rb").read()
            print(hashlib.sha256(der).hexdigest(), p["PayloadUUID"], payloads[0]["PayloadUUID"], p["PayloadIdentifier"])
            '
            """)
        #expect(plist.status == 0, "\(plist)")
        let fields = plist.out.split(separator: " ").map(String.init)
        #expect(fields.first == fingerprint)
        // Stable: the same root exports the same profile identifiers.
        let again = TestEnv.loupe("ca export \(s) --format mobileconfig").out
        #expect(again == (try String(contentsOfFile: "\(dir)/root.mobileconfig", encoding: .utf8)))

        // MDM round trip: the endpoint's line becomes the same profile on the admin's side.
        let mdm = TestEnv.loupe("ca export \(s) --format mdm")
        #expect(mdm.out.hasPrefix("<result>loupe-root sha256=\(fingerprint) der="))
        try mdm.out.write(toFile: "\(dir)/collected.txt", atomically: true, encoding: .utf8)
        let pushed = TestEnv.loupe("ca export --from \(dir)/collected.txt --format mobileconfig")
        #expect(pushed.status == 0 && pushed.out == again, "\(pushed.err)")

        // Rotation: new current, old one still exportable as previous until retired.
        let rotate = TestEnv.loupe("ca rotate \(s)")
        #expect(rotate.status == 0, "\(rotate)")
        let previous = TestEnv.loupe("ca export \(s) --previous --format der").status
        #expect(previous == 0)
        let showBoth = try #require(try JSONSerialization.jsonObject(with: Data(TestEnv.loupe("ca show \(s) --json").out.utf8)) as? [String: Any])
        #expect(showBoth["sha256"] as? String != fingerprint)
        #expect((showBoth["previous"] as? [String: Any])?["sha256"] as? String == fingerprint)
        let refused = TestEnv.loupe("ca rotate \(s)")
        #expect(refused.status == 1 && refused.err.contains("retire-previous"), "\(refused)")
        #expect(TestEnv.loupe("ca retire-previous \(s)").status == 0)
        #expect(TestEnv.loupe("ca export \(s) --previous").status == 1)
    }

    @Test func mintedLeafCompletesARealHandshake() throws {
        let dir = TestEnv.scratch("tls")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        #expect(TestEnv.loupe("ca init \(s) --provider host-key").status == 0)
        #expect(TestEnv.loupe("ca export \(s) --out \(dir)/root.pem").status == 0)
        let mint = TestEnv.loupe("ca mint \(s) localhost 127.0.0.1 --with-key --out \(dir)/leaf.pem")
        #expect(mint.status == 0, "\(mint)")
        #expect(TestEnv.sh("openssl verify -CAfile \(dir)/root.pem \(dir)/leaf.pem").status == 0)
        let (server, port) = try BackgroundProcess.tlsServer(cert: "\(dir)/leaf.pem", key: "\(dir)/leaf.pem", directory: dir)
        defer { server.stop() }
        for host in ["localhost", "127.0.0.1"] {
            let ok = TestEnv.sh("curl -sS --max-time 5 --cacert \(dir)/root.pem https://\(host):\(port)/ -o /dev/null -w '%{http_code}'")
            #expect(ok.status == 0 && ok.out == "200", "\(host): \(ok)")
        }
        // Without the root, the same client refuses: the trust comes from the exported root.
        let untrusted = TestEnv.sh("curl -sS --max-time 5 --cacert /etc/ssl/certs/ca-certificates.crt https://localhost:\(port)/ -o /dev/null")
        #expect(untrusted.status == 60, "\(untrusted)")
        // A name the leaf does not carry fails.
        let wrong = TestEnv.sh("curl -sS --max-time 5 --cacert \(dir)/root.pem --resolve other.test:\(port):127.0.0.1 https://other.test:\(port)/ -o /dev/null")
        #expect(wrong.status == 60, "\(wrong)")
    }

    @Test func mintLikeMirrorsAnUpstream() throws {
        let dir = TestEnv.scratch("like")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        #expect(TestEnv.loupe("ca init \(s) --provider host-key").status == 0)
        let made = TestEnv.sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(dir)/up.key -out \(dir)/up.pem -subj '/O=Origin/CN=origin.test' -addext 'subjectAltName=DNS:origin.test,DNS:www.origin.test' -days 10 2>&1")
        #expect(made.status == 0, "\(made)")
        let mint = TestEnv.loupe("ca mint \(s) --like \(dir)/up.pem")
        #expect(mint.status == 0, "\(mint)")
        let leaf = try Certificate.parsePEM(mint.out)
        let upstream = try Certificate.parsePEM(try String(contentsOfFile: "\(dir)/up.pem", encoding: .utf8))[0]
        #expect(leaf.count == 2)  // leaf + root
        #expect(leaf[0].subject == "CN=origin.test,O=Origin")
        #expect(leaf[0].subjectAltNames == upstream.subjectAltNames)
        #expect(leaf[0].notAfter <= upstream.notAfter)
        let bad = TestEnv.loupe("ca mint \(s) --like /nonexistent.pem")
        #expect(bad.status == 1 && bad.err.contains("loupe: error:"))
    }
}

@Suite struct StoreCommandTests {
    @Test func statusListImportSecretsAndDelete() throws {
        let dir = TestEnv.scratch("store-cli")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        let none = TestEnv.loupe("store status \(s)")
        #expect(none.status == 1 && none.err.contains("no store"), "\(none)")
        #expect(TestEnv.loupe("ca init \(s) --provider host-key").status == 0)

        // A client identity from PKCS#12.
        #expect(TestEnv.sh("""
            cd \(dir) && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout k.pem -out c.pem -subj /CN=mtls-client -days 2 2>&1 && \
            openssl pkcs12 -export -inkey k.pem -in c.pem -out id.p12 -passout pass:pw 2>&1 && printf 'pw\\n' > pw.txt && printf 'nope\\n' > bad.txt
            """).status == 0)
        let imported = TestEnv.loupe("store import-p12 \(dir)/id.p12 \(s) --password-file \(dir)/pw.txt --label mtls")
        #expect(imported.status == 0 && imported.out.contains("CN=mtls-client"), "\(imported)")
        let wrongPassword = TestEnv.loupe("store import-p12 \(dir)/id.p12 \(s) --password-file \(dir)/bad.txt --label other")
        #expect(wrongPassword.status == 1 && wrongPassword.err.contains("wrong password"), "\(wrongPassword)")
        let twice = TestEnv.loupe("store import-p12 \(dir)/id.p12 \(s) --password-file \(dir)/pw.txt --label mtls")
        #expect(twice.status == 1 && twice.err.contains("already exists"), "\(twice)")

        try "token-value-123".write(toFile: "\(dir)/secret.txt", atomically: true, encoding: .utf8)
        #expect(TestEnv.loupe("store set-secret api \(s) --value-file \(dir)/secret.txt").status == 0)

        let status = TestEnv.loupe("store status \(s) --json")
        #expect(status.status == 0, "\(status)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(status.out.utf8)) as? [String: Any])
        #expect(report["provider"] as? String == "host-key")
        #expect(report["items"] as? [String: Int] == ["key": 2, "certificate": 2, "secret": 1])
        #expect(report["identities"] as? Int == 2)
        #expect((report["does_not_protect_against"] as? [String])?.isEmpty == false)

        let list = TestEnv.loupe("store list \(s) --json")
        #expect(!list.out.contains("token-value-123") && !list.out.contains("dG9rZW4t"))
        let items = try #require(try JSONSerialization.jsonObject(with: Data(list.out.utf8)) as? [[String: Any]])
        #expect(items.count == 5)
        let secretRef = try #require(items.first { ($0["attributes"] as? [String: String])?["label"] == "api" }?["reference"] as? String)
        let rootRef = try #require(items.first { ($0["attributes"] as? [String: String])?["label"] == "loupe-root" }?["reference"] as? String)
        #expect(TestEnv.loupe("store delete \(rootRef) \(s)").status == 1)
        #expect(TestEnv.loupe("store delete \(secretRef) \(s)").status == 0)
        #expect(TestEnv.loupe("store delete \(secretRef) \(s)").err.contains("no item"))

        // A corrupt item is reported (exit 1) and left in place.
        let itemFile = "\(dir)/state/store/items/\(rootRef).item"
        let original = try Data(contentsOf: URL(fileURLWithPath: itemFile))
        var damaged = original
        damaged[damaged.count - 1] ^= 0x55
        try damaged.write(to: URL(fileURLWithPath: itemFile))
        let corrupt = TestEnv.loupe("store status \(s)")
        #expect(corrupt.status == 1 && corrupt.out.contains("problem") && corrupt.out.contains(rootRef), "\(corrupt)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: itemFile)) == damaged)
        // And `ca init` does not "repair" it by making a new root.
        let initAgain = TestEnv.loupe("ca init \(s)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: itemFile)) == damaged, "\(initAgain)")
    }

    @Test func loosePermissionsAreRefusedByTheCLI() throws {
        let dir = TestEnv.scratch("perm")
        defer { TestEnv.remove(dir) }
        #expect(TestEnv.loupe("ca init --state-dir \(dir)/state --provider host-key").status == 0)
        chmod("\(dir)/state/store", 0o777)
        let refused = TestEnv.loupe("ca show --state-dir \(dir)/state")
        #expect(refused.status == 1 && refused.err.contains("0777") && refused.err.contains("chmod 700"), "\(refused)")
    }

    /// kill -9 in the middle of writes: the item is afterwards the old or the new value, whole.
    @Test func killedMidWriteLeavesOldOrNew() throws {
        let dir = TestEnv.scratch("kill")
        defer { TestEnv.remove(dir) }
        let state = "\(dir)/state"
        #expect(TestEnv.loupe("ca init --state-dir \(state) --provider host-key").status == 0)
        let a = [UInt8](repeating: 0x41, count: 4 << 20), b = [UInt8](repeating: 0x42, count: 4 << 20)
        try Data(a).write(to: URL(fileURLWithPath: "\(dir)/a"))
        try Data(b).write(to: URL(fileURLWithPath: "\(dir)/b"))
        #expect(TestEnv.loupe("store set-secret big --state-dir \(state) --value-file \(dir)/a").status == 0)
        var killed = 0
        for round in 0..<24 {
            let value = round % 2 == 0 ? "b" : "a"
            let log = "\(dir)/writer-\(round).log"
            let writer = try BackgroundProcess("LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca \(TestEnv.loupe) store set-secret big --state-dir \(state) --value-file \(dir)/\(value)", log: log)
            usleep(UInt32.random(in: 20_000...160_000))
            writer.stop()  // SIGKILL, wherever it is
            // A writer that finished says so; one killed mid-way printed nothing.
            if !(try String(contentsOfFile: log, encoding: .utf8)).contains("updated secret") { killed += 1 }
            let store = try SealedStore.open(stateDirectory: state)
            #expect(store.problems.isEmpty, "\(store.problems)")
            let data = try #require(store.find(.secret, matching: ["label": "big"]).first).data
            #expect(data == a || data == b, "round \(round): a torn item of \(data.count) bytes")
        }
        #expect(killed > 0, "no writer was killed mid-way; the test proved nothing")
    }
}
