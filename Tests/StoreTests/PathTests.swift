import Platform
import TestSupport
import Testing

@Suite struct PathTests {
    @Test(arguments: [("o", "."), ("o/store", "o"), ("/var/lib/loupe", "/var/lib"), ("/x", "/"), ("/", "/"),
                      ("a/b/", "a"), ("./state", "."), ("", ".")])
    func directoryOf(path: String, expected: String) {
        #expect(PrivateFiles.directory(of: path) == expected, "\(path)")
    }

    /// A bare relative state directory (a Foundation path helper used to trap on it).
    @Test func relativeStateDirectories() {
        let dir = TestEnv.scratch("relative")
        defer { TestEnv.remove(dir) }
        let r = TestEnv.sh("cd \(dir) && LOUPE_CA_DIR=\(TestEnv.packageRoot)/ca \(TestEnv.loupe) ca init --state-dir o --provider host-key && ls o/store/store.json")
        #expect(r.status == 0, "\(r.out)\(r.err)")
        #expect(PrivateFiles.fileName(of: "o/store/") == "store" && PrivateFiles.fileName(of: "x") == "x")
    }
}
