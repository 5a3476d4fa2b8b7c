import Foundation
import TestSupport
import Testing

/// `loupe verdict` as policy authors run it in their CI.
@Suite struct VerdictCommandTests {
    let policy = "\(TestEnv.packageRoot)/config/policy.toml"

    @Test func shippedCorpusPassesAndFailuresAreReported() throws {
        let ok = TestEnv.loupe("verdict test --policy \(policy) \(TestEnv.packageRoot)/config/verdicts")
        #expect(ok.status == 0, "\(ok)")
        #expect(ok.out.split(separator: "\n").last == "verdicts: 8 passed, 0 failed", "\(ok.out)")

        let dir = TestEnv.scratch("verdicts")
        defer { TestEnv.remove(dir) }
        try """
            [[flow]]
            name = "expects the bank bumped"
            dst = "203.0.113.10:443"
            sni = "online.bank.example"
            expect = { connect = "inspect", hello = "bump" }

            [[flow]]
            name = "fine"
            dst = "192.0.2.22:22"
            expect = { connect = "allow" }
            """.write(toFile: "\(dir)/c.toml", atomically: true, encoding: .utf8)
        let failing = TestEnv.loupe("verdict test --policy \(policy) \(dir)/c.toml --junit \(dir)/junit.xml")
        #expect(failing.status == 1, "\(failing)")
        #expect(failing.out.contains("FAIL \(dir)/c.toml:1 \"expects the bank bumped\": hello: expected bump, got splice (rule \"splice-banking\""), "\(failing.out)")
        #expect(failing.out.hasSuffix("verdicts: 1 passed, 1 failed\n"))
        let junit = try String(contentsOfFile: "\(dir)/junit.xml", encoding: .utf8)
        #expect(junit.contains("tests=\"2\" failures=\"1\""))
        #expect(TestEnv.sh("python3 -c 'import xml.dom.minidom,sys; xml.dom.minidom.parse(sys.argv[1])' \(dir)/junit.xml").status == 0)

        try "[[flow]]\ndst = \"1.2.3.4:1\"\nexpect = { connect = \"splice\" }\n".write(toFile: "\(dir)/bad.toml", atomically: true, encoding: .utf8)
        let broken = TestEnv.loupe("verdict test --policy \(policy) \(dir)/bad.toml")
        #expect(broken.status == 2 && broken.err.contains("\(dir)/bad.toml:3:"), "\(broken)")
        let badPolicy = TestEnv.loupe("verdict test --policy \(dir)/bad.toml \(dir)/c.toml")
        #expect(badPolicy.status == 2 && badPolicy.err.contains("unknown key 'flow'"), "\(badPolicy)")
    }

    @Test func explainShowsEachStageAndTheRulesConsidered() {
        let r = TestEnv.loupe("verdict explain --policy \(policy) --dst 203.0.113.10:443 --sni www.bank.example --name www.bank.example")
        #expect(r.status == 0, "\(r)")
        #expect(r.out.contains("stage connect: inspect — rule \"inspect-web\""), "\(r.out)")
        #expect(r.out.contains("no-quic: no match (proto udp: flow has tcp)"), "\(r.out)")
        #expect(r.out.contains("stage hello: splice — rule \"splice-banking\""), "\(r.out)")
        let stops = TestEnv.loupe("verdict explain --policy \(policy) --dst 192.0.2.1:22 --sni a.test")
        #expect(stops.out.contains("stage connect: allow") && stops.out.contains("the flow stops here") && !stops.out.contains("stage hello"), "\(stops.out)")
    }
}
