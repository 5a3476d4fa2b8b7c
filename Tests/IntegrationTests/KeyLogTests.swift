import Foundation
import TLS
import TestSupport
import Testing

/// `--keylog`: both legs' secrets, exactly as the peers themselves log them (curl's
/// SSLKEYLOGFILE for the client leg, `openssl s_server -keylogfile` for the upstream leg).
@Suite struct KeyLogTests {
    static let canRun = ["curl", "openssl"].allSatisfy(TestEnv.has)

    @Test(.enabled(if: canRun, "needs curl and openssl (CI has them)"))
    func bothLegsAreLoggedExactly() throws {
        let dir = TestEnv.scratch("keylog")
        defer { TestEnv.remove(dir) }
        let origin = TestEnv.port(slot: 1), proxy = TestEnv.port(slot: 2)
        let script = LoopbackProxy.preamble(dir: dir, origin: origin, proxy: proxy, name: "origin.test",
                                            originFlags: "-keylogfile $D/origin.keys", proxyFlags: "--keylog $D/loupe.keys") + """
            : > $D/origin.keys   # the readiness probe above was direct, not through Loupe
            for v in 1.2 1.3; do
              echo "GET$v $(SSLKEYLOGFILE=$D/curl.keys curl -sS --max-time 5 --tlsv$v --tls-max $v --cacert $D/loupe-root.pem --connect-to origin.test:443:127.0.0.1:\(proxy) https://origin.test/index.html)"
            done
            echo "MODE $(stat -c %a $D/loupe.keys)"
            echo "CLIENTLEG $(grep -c . $D/curl.keys) $(grep -cxFf $D/loupe.keys $D/curl.keys)"
            echo "UPSTREAMLEG $(grep -c . $D/origin.keys) $(grep -cxFf $D/loupe.keys $D/origin.keys)"
            echo "WARNED $(grep -c 'TLS secrets' $D/proxy.err)"
            """
        let r = TaggedOutput(TestEnv.sh(script, timeout: 120))
        let line = r.line
        #expect(line("GET1.2") == "GET1.2 hi" && line("GET1.3") == "GET1.3 hi", "\(r.out)\n\(r.err)")
        #expect(line("MODE") == "MODE 600")
        // Every secret a peer logged is in Loupe's log, byte for byte (TLS 1.2: CLIENT_RANDOM; 1.3: five labels).
        let client = line("CLIENTLEG").split(separator: " "), upstream = line("UPSTREAMLEG").split(separator: " ")
        #expect(client.count == 3 && Int(client[1]) ?? 0 >= 6 && client[1] == client[2], "client leg: \(r.out)")
        #expect(upstream.count == 3 && Int(upstream[1]) ?? 0 >= 6 && upstream[1] == upstream[2], "upstream leg: \(r.out)")
        #expect(line("WARNED") == "WARNED 1", "a key log is announced loudly")
    }

    @Test func refusesSymlinksAndNarrowsAnExistingFile() throws {
        let dir = TestEnv.scratch("keylog-file")
        defer { TestEnv.remove(dir) }
        let target = "\(dir)/target", link = "\(dir)/link", wide = "\(dir)/wide.log"
        #expect(FileManager.default.createFile(atPath: target, contents: Data()))
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: target)
        #expect(throws: OpenSSLError.self, "a symlink could redirect secrets anywhere") { try KeyLog(path: link) }
        #expect(FileManager.default.createFile(atPath: wide, contents: Data(), attributes: [.posixPermissions: 0o644]))
        _ = try KeyLog(path: wide)
        let mode = try FileManager.default.attributesOfItem(atPath: wide)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }
}
