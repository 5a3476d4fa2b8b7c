import Foundation
import TestSupport
import Testing

/// `loupe trust` against the real system store and NSS databases — inside a private mount
/// namespace whose /etc/ssl/certs, /usr/local/share/ca-certificates, /home and /root are
/// scratch copies, so the host's own trust is never touched.
@Suite struct TrustInstallTests {
    static let canRun = TestEnv.isRoot && TestEnv.has("unshare") && TestEnv.has("update-ca-certificates") && TestEnv.has("certutil")

    @Test(.enabled(if: canRun, "needs root, unshare, update-ca-certificates and certutil (CI has them)"))
    func installMakesCurlTrustTheRootAndUninstallUndoesExactlyThat() throws {
        let dir = TestEnv.scratch("trust")
        defer { TestEnv.remove(dir) }
        let s = "--state-dir \(dir)/state"
        #expect(TestEnv.loupe("ca init \(s) --provider host-key").status == 0)
        #expect(TestEnv.loupe("ca mint \(s) localhost --with-key --out \(dir)/leaf.pem").status == 0)
        let (server, port) = try BackgroundProcess.tlsServer(cert: "\(dir)/leaf.pem", key: "\(dir)/leaf.pem", directory: dir)
        defer { server.stop() }
        let loupe = "LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca \(TestEnv.loupe)"
        let curl = "curl -s -o /dev/null --max-time 5 -w '%{http_code}' https://localhost:\(port)/; echo \" rc=$?\""
        let script = """
            set -u
            T=\(dir)/fs
            for d in /etc/ssl/certs /usr/local/share/ca-certificates /etc/ca-certificates; do
              mkdir -p "$T$d" && cp -a "$d/." "$T$d/" && mount --bind "$T$d" "$d" || exit 90
            done
            mkdir -p "$T/home" "$T/root" && mount --bind "$T/home" /home && mount --bind "$T/root" /root || exit 91
            mkdir -p /home/alice/.pki/nssdb /home/alice/.mozilla/firefox/p1.default
            certutil -N -d sql:/home/alice/.pki/nssdb --empty-password || exit 92
            certutil -N -d sql:/home/alice/.mozilla/firefox/p1.default --empty-password || exit 93
            echo "BEFORE $(\(curl))"
            \(loupe) trust install \(s) --dry-run | sed 's/^/DRY /'
            echo "AFTER-DRY $(\(curl))"
            \(loupe) trust install \(s) | sed 's/^/INSTALL /'
            echo "INSTALLED $(\(curl))"
            \(loupe) trust status \(s) | sed 's/^/STATUS /'
            certutil -L -d sql:/home/alice/.pki/nssdb | grep -q 'Loupe root' && echo "NSS-CHROMIUM yes"
            certutil -L -d sql:/home/alice/.mozilla/firefox/p1.default | grep -q 'Loupe root' && echo "NSS-FIREFOX yes"
            \(loupe) trust install \(s) | sed 's/^/AGAIN /'
            \(loupe) trust uninstall \(s) | sed 's/^/UNINSTALL /'
            echo "REMOVED $(\(curl))"
            ls /usr/local/share/ca-certificates | grep -c loupe | sed 's/^/ANCHORS /'
            certutil -L -d sql:/home/alice/.pki/nssdb | grep -c 'Loupe root' | sed 's/^/NSS-LEFT /'
            \(loupe) trust uninstall \(s) | sed 's/^/UNINSTALL-AGAIN /'
            """
        try script.write(toFile: "\(dir)/trust.sh", atomically: true, encoding: .utf8)
        let run = TaggedOutput(TestEnv.sh("unshare --mount --propagation private bash \(dir)/trust.sh 2>&1", timeout: 300))
        let out = run.out
        #expect(run.status == 0, "\(out)")
        let lines = run.lines, line = run.line

        #expect(line("BEFORE").hasSuffix("rc=60"), "\(out)")  // curl does not trust it yet
        #expect(lines.filter { $0.hasPrefix("DRY would install") }.count == 3, "\(out)")
        #expect(line("AFTER-DRY").hasSuffix("rc=60"), "a dry run must change nothing: \(out)")
        #expect(line("INSTALLED") == "INSTALLED 200 rc=0", "\(out)")  // plain curl, no --cacert
        #expect(lines.filter { $0.hasPrefix("STATUS trusted") }.count == 3, "\(out)")
        #expect(lines.contains("NSS-CHROMIUM yes") && lines.contains("NSS-FIREFOX yes"), "\(out)")
        #expect(line("AGAIN").contains("already trusted"), "\(out)")
        #expect(lines.filter { $0.hasPrefix("UNINSTALL removed") }.count == 3, "\(out)")
        #expect(line("REMOVED").hasSuffix("rc=60"), "\(out)")
        #expect(line("ANCHORS") == "ANCHORS 0" && line("NSS-LEFT") == "NSS-LEFT 0", "\(out)")
        #expect(line("UNINSTALL-AGAIN").contains("nothing to remove"), "\(out)")
    }
}
