import Foundation
import TestSupport
import Testing
import TOML
import Wire
@testable import Policy

func policy(_ rules: String, defaults: String = "connect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"", lists: String = "") throws -> Policy {
    try Policy.parse("[defaults]\n\(defaults)\n[lists]\n\(lists)\n\(rules)", file: "p.toml")
}

func facts(dst: String = "192.0.2.1:443", _ edit: (inout FlowFacts) -> Void = { _ in }) -> FlowFacts {
    var f = FlowFacts()
    f.dst = FlowFacts.Endpoint(dst)
    edit(&f)
    return f
}

@Suite struct HostPatternTests {
    @Test(arguments: [
        ("example.com", "example.com", true), ("example.com", "EXAMPLE.com.", true), ("example.com", "www.example.com", false),
        ("*.example.com", "example.com", false), ("*.example.com", "a.example.com", true), ("*.example.com", "a.b.example.com", true),
        (".example.com", "example.com", true), (".example.com", "deep.a.example.com", true), (".example.com", "badexample.com", false),
        ("bücher.example", "xn--bcher-kva.example", true), ("*.bücher.example", "WWW.BÜCHER.example", true),
        ("example.com.", "example.com", true),
    ])
    func patterns(pattern: String, name: String, matches: Bool) throws {
        let set = HostSet([try #require(HostPattern(pattern))])
        #expect(set.contains(name) == matches, "\(pattern) vs \(name)")
    }

    @Test func invalidPatterns() {
        for bad in ["", ".", "a..b", "*.", "a.*.b", "has space.com", "**.x"] { #expect(HostPattern(bad) == nil, "\(bad)") }
    }

    @Test func punycodeKnownAnswers() {
        #expect(HostName.normalise("münchen.de") == "xn--mnchen-3ya.de")
        #expect(HostName.normalise("例え.テスト") == "xn--r8jz45g.xn--zckzah")
    }
}

@Suite struct MatchFieldTests {
    @Test(arguments: [
        // (condition, flow edit, should match)
        ("proto = \"udp\"", "udp", true), ("proto = [\"tcp\"]", "udp", false),
        ("family = \"ipv6\"", "v6", true), ("family = \"ipv6\"", "", false),
        ("dst_net = [\"192.0.2.0/24\"]", "", true), ("dst_net = [\"2001:db8::/32\"]", "v6", true), ("dst_net = [\"10.0.0.0/8\"]", "", false),
        ("src_net = [\"10.0.0.0/8\"]", "src", true), ("src_net = [\"10.0.0.0/8\"]", "", false),
        ("dst_port = [443]", "", true), ("dst_port = [\"400-500\"]", "", true), ("dst_port = [80, \"8000-8999\"]", "", false),
        ("src_port = [\"50000-60000\"]", "src", true),
        ("uid = 1000", "ids", true), ("uid = [0, 1]", "ids", false), ("uid = 1000", "", false),
        ("user = \"alice\"", "ids", true), ("gid = [100]", "ids", true), ("group = [\"staff\"]", "ids", false),
        ("exe = [\"/usr/bin/*\"]", "ids", true), ("exe = [\"/usr/*\"]", "ids", false), ("exe = [\"/usr/bin/cur[lx]\"]", "ids", true),
        ("names = [\".example.com\"]", "names", true), ("names = [\"other.test\"]", "names", false),
    ])
    func connectFields(condition: String, edit: String, matches: Bool) throws {
        let p = try policy("[[rule]]\nname = \"r\"\nstage = \"connect\"\n\(condition)\naction = \"block\"")
        let f = facts(dst: edit == "v6" ? "[2001:db8::1]:443" : "192.0.2.1:443") { f in
            if edit == "udp" { f.proto = .udp }
            if edit == "src" { f.src = FlowFacts.Endpoint("10.1.2.3:55555") }
            if edit == "ids" { (f.uid, f.user, f.gid, f.group, f.exe) = (1000, "alice", 100, "users", "/usr/bin/curl") }
            if edit == "names" { f.names = ["cdn.example.com"] }
        }
        #expect((p.decide(.connect, f).verdict == .block) == matches, "\(condition) with \(edit)")
    }

    /// What a learnt splice would let past: a request block whose known conditions hold for the
    /// flow (method and path unknown before the request; URL rules only for their host), or a
    /// blocking request default. Allow rules never count.
    @Test func requestBlocksThatCouldApplyBeforeTheRequest() throws {
        let p = try policy("""
            [[rule]]
            name = "corp-admin"
            stage = "request"
            sni = [".corp.test"]
            path = ["/admin"]
            action = "block"
            [[rule]]
            name = "files"
            stage = "request"
            url = ["https://Files.Example.com:8443/private/"]
            action = "block"
            [[rule]]
            name = "uid-7"
            stage = "request"
            uid = [7]
            method = ["POST"]
            action = "block"
            [[rule]]
            name = "allowed"
            stage = "request"
            sni = ["open.test"]
            action = "allow"
            """)
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "app.corp.test" }) == "request rule corp-admin")
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "files.example.com" }) == "request rule files")
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "FILES.example.com." }) == "request rule files")
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "pinned.test"; $0.uid = 7 }) == "request rule uid-7")
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "pinned.test"; $0.uid = 1000 }) == nil)
        #expect(p.requestBlock(couldApplyTo: facts { $0.sni = "open.test" }) == nil)
        // Without an SNI a URL rule's host cannot be ruled out.
        #expect(p.requestBlock(couldApplyTo: facts()) == "request rule files")
        let strict = try policy("", defaults: "connect = \"allow\"\nhello = \"bump\"\nrequest = \"block\"")
        #expect(strict.requestBlock(couldApplyTo: facts { $0.sni = "any.test" }) == "the request default (block)")
    }

    @Test func helloAndRequestFields() throws {
        let p = try policy("""
            [[rule]]
            name = "h2-only"
            stage = "hello"
            sni = ["*.example.com"]
            alpn = ["h2"]
            action = "splice"
            [[rule]]
            name = "admin"
            stage = "request"
            method = ["post"]
            path = ["/admin"]
            action = "block"
            [[rule]]
            name = "by-url"
            stage = "request"
            url = ["HTTPS://Files.Example.com/private/"]
            action = "block"
            """)
        var f = facts { $0.sni = "www.example.com"; $0.alpn = ["http/1.1", "H2"] }
        #expect(p.decide(.hello, f).rule == "h2-only")
        f.alpn = ["http/1.1"]
        #expect(p.decide(.hello, f).rule == "default")
        f.method = "POST"; f.url = "https://x.example.com/admin/panel?x=1"
        #expect(p.decide(.request, f).rule == "admin")
        f.method = "GET"
        #expect(p.decide(.request, f).rule == "default")
        f.url = "https://files.example.com/private/report.pdf"
        #expect(p.decide(.request, f).rule == "by-url")
        f.url = "https://files.example.com/Private/report.pdf"
        #expect(p.decide(.request, f).rule == "default")
        #expect(f.host == "files.example.com" && f.path == "/Private/report.pdf")
    }

    /// A URL rule names one origin as servers take it: the case of its scheme and host, the
    /// default port, a trailing dot and userinfo change nothing, and a host that only starts
    /// like the rule's is another host.
    @Test func urlRulesNameOneOrigin() throws {
        let p = try policy("""
            [[rule]]
            name = "admin"
            stage = "request"
            url = ["https://www.origin.test/admin"]
            action = "block"
            [[rule]]
            name = "intranet"
            stage = "request"
            url = ["https://intranet.test"]
            action = "block"
            """)
        for blocked in ["https://www.origin.test/admin", "https://www.origin.test:443/admin/x", "https://WWW.Origin.Test./admin",
                        "HTTPS://www.origin.test:/admin", "https://user@www.origin.test/admin", "https://intranet.test", "https://intranet.test/x", "https://intranet.test.:443/",
                        "https://www.origin.test:0443/admin"] {
            #expect(p.decide(.request, facts { $0.url = blocked }).verdict == .block, "\(blocked)")
        }
        for allowed in ["https://www.origin.test:8443/admin", "http://www.origin.test/admin", "https://www.origin.test.evil.test/admin",
                        "https://intranet.test.evil.test/", "https://intranet.testing/", "https://[::1]:443/admin"] {
            #expect(p.decide(.request, facts { $0.url = allowed }).rule == "default", "\(allowed)")
        }
        #expect(URLPath.canonicalURL("https://[2001:DB8::1]:443/a") == "https://[2001:db8::1]/a")
        #expect(URLPath.canonicalURL("http://h.example:80/") == "http://h.example/" && URLPath.canonicalURL("https://h.example:80/") == "https://h.example:80/")
        #expect(URLPath.canonicalURL("https://h.example:08443/") == "https://h.example:8443/")
        let plain = "https://h.example/app.js?v=2"
        #expect(URLPath.canonicalURL(plain) == plain)
    }

    /// Path and url rules read the request's canonical URL in place (no String built per
    /// request, bytes compared where they decide as characters do) and decide as a prefix of
    /// `path` would: a URL without a path has "/", a query right after the host ("https://h?a")
    /// is the path "/?a", a "/" inside that query is no path segment, and what Swift takes for
    /// the same text (a Kelvin sign and "K", "é" composed or not) matches alike.
    @Test func pathAndURLRulesMatchAsStringsCompare() throws {
        let urls = ["https://h.test", "https://h.test/", "https://h.test?x=/admin", "https://h.test/admin?x", "https://h.test/adminx",
                    "https://h.test:8443/a/b", "https://user@H.test./a", "no-scheme/admin", "https://h.test#/admin",
                    "https://h.test/caf\u{E9}/x", "https://h.test/cafe\u{301}/x", "https://h.test/K", "https://h.test/Kxyz", "https://h.test/\u{212A}", "https://h.test/a\u{301}"]
        let prefixes = ["", "/", "/admin", "/?x", "/a/", "admin", "/adminx/", "/caf\u{E9}", "/cafe\u{301}", "/cafe", "/\u{212A}", "/K", "/a"]
        for url in urls {
            let f = facts { $0.url = url }
            for prefix in prefixes {
                #expect(f.pathHasPrefix(prefix) == f.path.map { $0.hasPrefix(prefix) }, "\(url) against \(prefix)")
            }
        }
        // A url rule holds where its origin is the request's and the rest a prefix of the
        // request's rest, as Swift compares strings — by bytes only where that decides the same.
        let origins = ["https://h.test", "https://h.test:8443", "https://h.tes", "https://h.test/"]
        for url in urls + ["https://h.test:8443/admin", "https://h.testx/admin"] {
            let f = facts { $0.url = url }
            for origin in origins {
                for path in prefixes where path.isEmpty || path.hasPrefix("/") {
                    let prefix = URLPrefix(canonical: URLPath.canonicalURL(origin + path))
                    let (u1, u2) = URLPath.split(f.canonicalURL!), (p1, p2) = URLPath.split(prefix.text)
                    let expected = url.contains("://") && u1 == p1 && u2.hasPrefix(p2)
                    #expect(f.canonicalURLHas(prefix) == expected, "\(url) against \(prefix.text)")
                }
            }
        }
        #expect(facts { $0.url = "https://h.test?x=/admin" }.pathHasPrefix("/?x") == true)
        #expect(facts { $0.url = "https://h.test?x=/admin" }.pathHasPrefix("/admin") == false)
        #expect(facts { $0.url = "https://h.test" }.pathHasPrefix("/") == true)
        #expect(facts { $0.url = "no-scheme/admin" }.pathHasPrefix("/") == nil)
        let p = try policy("[[rule]]\nname = \"root\"\nstage = \"request\"\npath = [\"/\"]\naction = \"block\"")
        #expect(p.decide(.request, facts { $0.url = "https://h.test" }).rule == "root")
        #expect(p.decide(.request, facts { $0.url = "https://h.test?q" }).rule == "root")
        #expect(p.decide(.request, facts()).rule == "default")
    }

    /// Paths are compared as the origin resolves them: an escaped, doubled or dotted spelling
    /// of a blocked path is blocked too (the classic way past a path rule).
    @Test func pathRulesSeeThePathTheOriginServes() throws {
        let p = try policy("""
            [[rule]]
            name = "admin"
            stage = "request"
            path = ["/admin/"]
            action = "block"
            [[rule]]
            name = "by-url"
            stage = "request"
            url = ["https://files.example.com/private//"]
            action = "block"
            """)
        for blocked in ["/admin/", "/%61dmin/x", "//admin/x", "/x/../admin/", "/./admin/x", "/public/..%2fadmin/x", "/admin/?q=1", "/admin%2F", "/a/b/../../admin/",
                        "/public/..;/admin/", "/public/..;x=1/admin/x", "/public/.;/../admin/", "/admin;jsessionid=1/",
                        "/public\\..\\admin\\", "/public/..%5cadmin/x"] {
            #expect(p.decide(.request, facts { $0.url = "https://h.example\(blocked)" }).rule == "admin", "\(blocked)")
        }
        for allowed in ["/Admin/", "/administrator", "/admin", "/x/admin/", "/%2561dmin/", "/?p=/admin/"] {
            #expect(p.decide(.request, facts { $0.url = "https://h.example\(allowed)" }).rule == "default", "\(allowed)")
        }
        #expect(p.decide(.request, facts { $0.url = "https://FILES.example.com/./private/%72eport.pdf" }).rule == "by-url")
        #expect(URLPath.canonical("/a//b/./c/../d?x=/../y") == "/a/b/d?x=/../y")
        #expect(URLPath.canonical("/a/b/..") == "/a/" && URLPath.canonical("/..") == "/" && URLPath.canonical("/%zz%4") == "/%zz%4")
        // Dots inside segments are no dot segments: such paths are canonical as they are; a "."
        // or ".." segment anywhere, or a dot in a path without its leading "/", is resolved.
        for kept in ["/app.min.js?v=1.2", "/.well-known/x", "/a/.b/..c/...", "/a./b..", "/x?../y", "/", ""] {
            #expect(URLPath.canonical(kept[...]) == kept, "\(kept)")
            #expect(URLPath.canonicalURL("https://h.example\(kept)") == "https://h.example\(kept)", "\(kept)")
        }
        for (path, canonical) in [("/.", "/"), ("/a/.", "/a/"), ("/a/..", "/"), ("/a/./b.js", "/a/b.js"), ("/a.b/../c", "/c"), ("/a/.%2e/b", "/b"),
                                  ("/a;v=1/b", "/a/b"), ("/a/..;/b;x", "/b"), ("/a;x/", "/a/"), ("/a/..;", "/")] {
            #expect(URLPath.canonical(path[...]) == canonical, "\(path)")
            #expect(URLPath.canonicalURL("https://h.example\(path)") == "https://h.example\(canonical)", "\(path)")
        }
        #expect(URLPath.canonical("a.b") == "/a.b" && URLPath.canonical("ab") == "ab", "relative paths as before")
    }

    /// A request URL's host and path, as rules see them: userinfo, ports, IPv6 literals, and an
    /// authority ended by a query or fragment; no scheme, no host.
    /// A request's origin as servers take it, checked against the plain spelling of the rule
    /// (lowercase, no userinfo or trailing dot, the port as a number and not the default) over
    /// every combination of the parts that can differ.
    @Test func originsAreCanonicalised() {
        func expected(_ scheme: String, _ user: String, _ host: String, _ port: String?) -> String {
            let scheme = scheme.lowercased()
            var host = host.lowercased()
            if host.utf8.count > 1, host.hasSuffix(".") { host.removeLast() }
            var portText = port.map { ":" + (Int($0).map(String.init) ?? $0) } ?? ""
            if portText == ":" || (portText == ":443" && scheme == "https://") || (portText == ":80" && scheme == "http://") { portText = "" }
            return scheme + host + portText
        }
        for scheme in ["https://", "HTTPS://", "http://"] {
            for user in ["", "user@", "u:p@"] {
                for host in ["h.example", "H.Example", "h.example.", "[2001:db8::1]", "[2001:DB8::1]", "x", "."] {
                    for port in [nil, "", "443", "0443", "80", "8443", "08443", "0", "99999", "+443", "-1", "x1"] as [String?] {
                        let url = scheme + user + host + (port.map { ":" + $0 } ?? "") + "/p?q"
                        #expect(URLPath.canonicalURL(url) == expected(scheme, user, host, port) + "/p?q", "\(url)")
                    }
                }
            }
        }
    }

    @Test func urlHostAndPath() {
        func parts(_ url: String) -> (String?, String?) {
            var f = FlowFacts()
            f.url = url
            return (f.host, f.path)
        }
        #expect(parts("https://user:pw@h.example:8443/a?b") == ("h.example", "/a?b"))
        #expect(parts("https://[2001:db8::1]:443/x") == ("2001:db8::1", "/x"))
        #expect(parts("https://h.example?q=/p") == ("h.example", "/?q=/p"), "a slash in the query is not the path")
        #expect(parts("https://h.example#/frag") == ("h.example", "/#/frag"))
        #expect(parts("https://h.example") == ("h.example", "/"))
        #expect(parts("https://") == ("", "/"))
        #expect(parts("h.example/a") == (nil, nil))
        #expect(parts("https:/h.example/a") == (nil, nil))
        #expect(parts("a:b://h.example//x/./y") == ("h.example", "/x/y"), "the first :// starts the authority")
        #expect(URLPath.split("https://h.example:1/p?q") == ("https://h.example:1", "/p?q"))
        // Parts are found by byte offsets: a multi-byte host or path keeps them in place.
        #expect(parts("https://bücher.example:8443/é?ü") == ("bücher.example", "/é?ü"))
        #expect(parts("https://ü@[::1]/") == ("::1", "/"))
        #expect(parts("https://[/") == ("", "/") && parts("https://[x:1/") == ("", "/"), "a bracket's pair is dropped as before, even unmatched")
        func port(_ url: String) -> UInt16? {
            var f = FlowFacts()
            f.url = url
            return f.port
        }
        for (url, expected) in [("https://h.example:8443/", 8443), ("https://h.example:0443/", nil), ("https://h.example:443/", nil),
                                ("http://h.example:443/", 443), ("https://h.example:0/", 0), ("https://h.example:65535", 65535),
                                ("https://h.example:65536/", nil), ("https://h.example:99999/", nil), ("https://h.example:x1/", nil),
                                ("https://h.example:/", nil), ("https://h.example/", nil), ("https://[::1]:8080/", 8080),
                                ("HTTPS://H.example:08080/", 8080), ("https://h.example:+8080/", 8080)] as [(String, UInt16?)] {
            #expect(port(url) == expected, "\(url)")
        }
        #expect(URLPath.canonical("/a/b//") == "/a/b/" && URLPath.canonical("/ok/path?x//y") == "/ok/path?x//y")
    }

    /// `tls = false` names what is not TLS on an inspected port (plain HTTP, SSH on :443).
    @Test func helloRulesOnWhetherItIsTLS() throws {
        let p = try policy("""
            [[rule]]
            name = "no-plaintext"
            stage = "hello"
            tls = false
            action = "block"
            """)
        #expect(p.decide(.hello, facts { $0.tls = false }).rule == "no-plaintext")
        #expect(p.decide(.hello, facts { $0.tls = true; $0.sni = "a.test" }).verdict == .bump)
        let opaque = try policy("")  // hello default: bump, which cannot apply to what is not TLS
        #expect(opaque.decide(.hello, facts { $0.tls = false }).verdict == .splice)
        #expect(opaque.explain(.hello, facts { $0.tls = false }).decision.verdict == .splice, "explain says what decide does")
        let unknown = facts { _ in }
        #expect(p.rules[0].mismatch(unknown)?.contains("tls false: flow's tls is unknown") == true, "\(p.rules[0].mismatch(unknown) ?? "-")")
    }

    @Test func firstMatchWinsThenDefault() throws {
        let p = try policy("""
            [[rule]]
            name = "first"
            stage = "connect"
            dst_port = [443]
            action = "inspect"
            [[rule]]
            name = "second"
            stage = "connect"
            dst_port = [443]
            action = "block"
            block = "drop"
            [[rule]]
            name = "ssh"
            stage = "connect"
            dst_port = [22]
            action = "block"
            """, defaults: "connect = \"block\"\nhello = \"bump\"\nrequest = \"allow\"\nblock = \"drop\"")
        #expect(p.decide(.connect, facts()).rule == "first")
        let ssh = p.decide(.connect, facts(dst: "192.0.2.1:22"))
        #expect(ssh.rule == "ssh" && ssh.blockMode == .drop)  // the policy-wide block mode applies
        let other = p.decide(.connect, facts(dst: "192.0.2.1:25"))
        #expect(other.verdict == .block && other.rule == "default" && other.blockMode == .drop)
        #expect(p.decide(.hello, facts()).verdict == .bump)
        let (_, considered) = p.explain(.connect, facts(dst: "192.0.2.1:22"))
        #expect(considered.map(\.rule.name) == ["first", "second", "ssh"])
        #expect(considered[0].mismatch?.contains("port 22") == true && considered[2].mismatch == nil)
    }

    /// The port index must never change which rule wins: file order holds across indexed
    /// (dst_port) and unindexed rules, and across huge port ranges.
    @Test func portIndexKeepsFileOrder() throws {
        let p = try policy("""
            [[rule]]
            name = "net-first"
            stage = "connect"
            dst_net = ["192.0.2.0/24"]
            dst_port = ["1-65535"]
            action = "allow"
            [[rule]]
            name = "port-second"
            stage = "connect"
            dst_port = [443]
            action = "block"
            [[rule]]
            name = "any-third"
            stage = "connect"
            action = "inspect"
            """)
        #expect(p.decide(.connect, facts(dst: "192.0.2.1:443")).rule == "net-first")
        #expect(p.decide(.connect, facts(dst: "198.51.100.1:443")).rule == "port-second")
        #expect(p.decide(.connect, facts(dst: "198.51.100.1:80")).rule == "any-third")
        var noDestination = FlowFacts()
        noDestination.proto = .udp
        #expect(p.decide(.connect, noDestination).rule == "any-third")
    }

    @Test func listsInlineAndFromFiles() throws {
        let dir = TestEnv.scratch("lists")
        defer { TestEnv.remove(dir) }
        try "# comment\n\n.ads.test   # trailing\n*.track.test\n".write(toFile: "\(dir)/ads.txt", atomically: true, encoding: .utf8)
        try """
            [defaults]
            connect = "allow"
            hello = "bump"
            request = "allow"
            [lists]
            ads = { file = "ads.txt" }
            bank = ["bank.test"]
            [[rule]]
            name = "ads"
            stage = "connect"
            names = ["@ads", "extra.test"]
            action = "block"
            [[rule]]
            name = "bank"
            stage = "hello"
            sni = ["@bank"]
            action = "splice"
            """.write(toFile: "\(dir)/policy.toml", atomically: true, encoding: .utf8)
        let p = try Policy.load(path: "\(dir)/policy.toml")
        for (name, blocked) in [("ads.test", true), ("x.ads.test", true), ("track.test", false), ("a.track.test", true), ("extra.test", true), ("ok.test", false)] {
            #expect((p.decide(.connect, facts { $0.names = [name] }).verdict == .block) == blocked, "\(name)")
        }
        #expect(p.decide(.hello, facts { $0.sni = "BANK.test." }).verdict == .splice)
        try "good.test\nbad pattern\n".write(toFile: "\(dir)/ads.txt", atomically: true, encoding: .utf8)
        #expect(throws: ConfigError(file: "\(dir)/ads.txt", line: 2, message: "'bad pattern' is not a host pattern")) { try Policy.load(path: "\(dir)/policy.toml") }
        try FileManager.default.removeItem(atPath: "\(dir)/ads.txt")
        do {
            _ = try Policy.load(path: "\(dir)/policy.toml")
            Issue.record("a missing list file must be an error")
        } catch {
            #expect(error.file == "\(dir)/policy.toml" && error.line == 6 && error.message.contains("ads.txt"), "\(error)")
        }
    }

    @Test(arguments: [
        ("[defaults]\nconnect = \"allow\"\nhello = \"bump\"", 1, "needs 'request'"),
        ("[defaults]\nconnect = \"splice\"\nhello = \"bump\"\nrequest = \"allow\"", 2, "not a verdict of stage connect"),
        ("[defaults]\nconnect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"\nextra = 1", 5, "unknown key 'defaults.extra'"),
        ("[[rule]]\nname = \"r\"\nstage = \"hello\"\naction = \"allow\"", 4, "not a verdict of stage hello"),
        ("[[rule]]\nname = \"r\"\nstage = \"later\"\naction = \"allow\"", 3, "unknown stage 'later'"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\nsni = [\"a.test\"]\naction = \"allow\"", 4, "not known at stage connect"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ndst_net = [\"10.0.0.0/33\"]\naction = \"allow\"", 4, "not a CIDR"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ndst_port = [70000]\naction = \"allow\"", 4, "not a port"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ndst_port = [\"9-1\"]\naction = \"allow\"", 4, "not a port range"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\nexe = [\"/usr/[bin\"]\naction = \"allow\"", 4, "not a valid glob"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\nnames = [\"@nope\"]\naction = \"allow\"", 4, "unknown list '@nope'"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\nuid = \"root\"\naction = \"allow\"", 4, "numeric ids"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\nproto = \"icmp\"\naction = \"allow\"", 4, "tcp or udp"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ncolour = \"red\"\naction = \"allow\"", 4, "unknown key 'rule.colour'"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\naction = \"allow\"\nblock = \"drop\"", 5, "only to action"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\naction = \"allow\"\n[[rule]]\nname = \"r\"\nstage = \"connect\"\naction = \"allow\"", 5, "already used at line 5"),
        ("[[rule]]\nstage = \"connect\"\naction = \"allow\"", 1, "needs a name"),
        ("[[rule]]\nname = \"misdirected\"\nstage = \"request\"\naction = \"block\"", 2, "'misdirected' is reserved for Loupe's own decisions"),
        ("[[rule]]\nname = \"r\"\nstage = \"request\"\npath = [\"admin\"]\naction = \"allow\"", 4, "start with '/'"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ndst_port = []\naction = \"allow\"", 4, "never match"),
        ("[[rule]]\nname = \"r\"\nstage = \"hello\"\ntls = \"no\"\naction = \"block\"", 4, "true or false"),
        ("[[rule]]\nname = \"r\"\nstage = \"connect\"\ntls = false\naction = \"block\"", 4, "not known at stage connect"),
    ])
    func validationErrorsNameFileAndLine(text: String, line: Int, message: String) {
        let full = text.hasPrefix("[defaults]") ? text : "[defaults]\nconnect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"\n" + text
        let offset = text.hasPrefix("[defaults]") ? 0 : 4
        do {
            _ = try Policy.parse(full, file: "p.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.file == "p.toml" && error.line == line + offset, "\(error)")
            #expect(error.message.contains(message), "\(error)")
        }
    }
}

@Suite struct CorpusTests {
    static let policyText = """
        [defaults]
        connect = "allow"
        hello = "bump"
        request = "allow"
        [[rule]]
        name = "inspect"
        stage = "connect"
        dst_port = [443]
        action = "inspect"
        [[rule]]
        name = "block-post"
        stage = "request"
        method = ["POST"]
        action = "block"
        """

    @Test func outcomesFollowTheFlowThroughTheStages() throws {
        let p = try Policy.parse(Self.policyText, file: "p.toml")
        let flows = try Corpus.parse("""
            [[flow]]
            name = "ok"
            dst = "192.0.2.1:443"
            method = "POST"
            url = "https://a.test/"
            expect = { connect = "inspect", hello = "bump", request = "block" }
            [[flow]]
            name = "wrong verdict"
            dst = "192.0.2.1:80"
            expect = { connect = "block" }
            [[flow]]
            name = "never reaches hello"
            dst = "[2001:db8::1]:80"
            expect = { hello = "bump" }
            """, file: "c.toml")
        let outcomes = flows.map { FlowOutcome($0, policy: p) }
        #expect(outcomes.map(\.passed) == [true, false, false])
        #expect(outcomes[1].failures == ["connect: expected block, got allow (rule \"default\": no rule matched; the connect default)"])
        #expect(outcomes[2].failures.first?.contains("never reaches it (connect decided allow") == true)
        #expect(flows[2].line == 11)
        let xml = JUnitReport.render(outcomes)
        #expect(xml.contains("tests=\"3\" failures=\"2\"") && xml.contains("name=\"never reaches hello\"") && xml.contains("<failure message="))
    }

    @Test(arguments: [
        ("[[flow]]\nname = \"x\"\nexpect = { connect = \"allow\" }", 1, "needs dst"),
        ("[[flow]]\ndst = \"1.2.3.4\"\nexpect = { connect = \"allow\" }", 2, "not ADDRESS:PORT"),
        ("[[flow]]\ndst = \"2001:db8::1:443\"\nexpect = { connect = \"allow\" }", 2, "not ADDRESS:PORT"),
        ("[[flow]]\ndst = \"1.2.3.4:1\"\nexpect = { later = \"allow\" }", 3, "unknown stage 'later'"),
        ("[[flow]]\ndst = \"1.2.3.4:1\"\nexpect = { hello = \"allow\" }", 3, "not a verdict of stage hello"),
        ("[[flow]]\ndst = \"1.2.3.4:1\"\nsni = 5\nexpect = { connect = \"allow\" }", 3, "must be a string"),
        ("[[flow]]\ndst = \"1.2.3.4:1\"", 1, "needs expect"),
        ("flow = 1", 1, "[[flow]]"),
    ])
    func corpusErrorsNameFileAndLine(text: String, line: Int, message: String) {
        do {
            _ = try Corpus.parse(text, file: "c.toml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line && error.message.contains(message), "\(error)")
        }
    }

    /// The shipped example corpus passes against the shipped example policy.
    @Test func shippedCorpusPasses() throws {
        let root = TestEnv.packageRoot
        let p = try Policy.load(path: "\(root)/config/policy.toml")
        let file = "\(root)/config/verdicts/example.toml"
        let flows = try Corpus.parse(try String(contentsOfFile: file, encoding: .utf8), file: file)
        let failed = flows.map { FlowOutcome($0, policy: p) }.filter { !$0.passed }
        #expect(flows.count >= 7)
        #expect(failed.isEmpty, "\(failed.flatMap(\.failures))")
    }
}

@Suite struct BigListTests {
    @Test func aMillionEntryListLoadsAndMatches() throws {
        var text = ""
        text.reserveCapacity(25_000_000)
        for i in 0..<1_000_000 { text += i % 3 == 0 ? ".d\(i).example\n" : "h\(i).example\n" }
        let p = try Policy.parse("""
            [defaults]
            connect = "allow"
            hello = "bump"
            request = "allow"
            [lists]
            big = { file = "big.txt" }
            [[rule]]
            name = "big"
            stage = "connect"
            names = ["@big"]
            action = "block"
            """, file: "p.toml") { _, _ in (text, "big.txt") }
        #expect(p.lists["big"]?.count == 1_000_000)
        #expect(p.decide(.connect, facts { $0.names = ["h1.example"] }).verdict == .block)
        #expect(p.decide(.connect, facts { $0.names = ["deep.sub.d999999.example"] }).verdict == .block)
        #expect(p.decide(.connect, facts { $0.names = ["x.h1.example"] }).verdict == .allow)
        #expect(p.decide(.connect, facts { $0.names = ["nothere.example"] }).verdict == .allow)
    }
}

@Suite struct AutoSplicePolicyTests {
    let base = "[defaults]\nconnect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"\n"

    @Test func optionalAndValidated() throws {
        #expect(try Policy.parse(base, file: "p.toml").autoSpliceTTL == nil, "off unless asked for")
        #expect(try Policy.parse(base + "[auto_splice]\nttl = 3600\n", file: "p.toml").autoSpliceTTL == 3600)
        for (text, message) in [("[auto_splice]\n", "p.toml:5: [auto_splice] needs 'ttl'"),
                                ("[auto_splice]\nttl = 0\n", "p.toml:6: 'auto_splice.ttl' must be between 1 and"),
                                ("[auto_splice]\nttl = 60\nhosts = []\n", "p.toml:7: unknown key 'auto_splice.hosts'")] {
            do {
                _ = try Policy.parse(base + text, file: "p.toml")
                Issue.record("\(text) must be refused")
            } catch {
                #expect(error.description.hasPrefix(message), "\(error)")
            }
        }
    }
}

@Suite struct IdentityRuleTests {
    let base = "[defaults]\nconnect = \"allow\"\nhello = \"bump\"\nrequest = \"allow\"\n[[rule]]\nname = \"r\"\n"

    @Test func onlyOnHelloBumpRules() throws {
        let policy = try Policy.parse(base + "stage = \"hello\"\nsni = [\"a.test\"]\naction = \"bump\"\nidentity = \"corp\"\n", file: "p.toml")
        #expect(policy.rule(named: "r")?.identity == "corp")
        for text in ["stage = \"hello\"\naction = \"splice\"\nidentity = \"corp\"\n", "stage = \"connect\"\naction = \"allow\"\nidentity = \"corp\"\n"] {
            do {
                _ = try Policy.parse(base + text, file: "p.toml")
                Issue.record("\(text) must be refused")
            } catch {
                #expect(error.description.contains("'identity' (a client certificate for the upstream) belongs to hello rules that bump"), "\(error)")
            }
        }
    }
}

/// A capture whose name was resolved over TCP: the replayed flow carries it, as live.
@Suite struct CaptureReplayTests {
    @Test func namesLearntOverTCPNameTheNextFlow() {
        let answer = TestPackets.dnsAnswer("tcp.example", "192.0.2.9")
        let framed = [UInt8(answer.count >> 8), UInt8(answer.count & 0xFF)] + answer
        let packets: [[UInt8]] = [
            TestPackets.tcp(from: "10.0.0.1", 40000, to: "10.0.0.53", 53, seq: 1, flags: 0x02),
            TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 500, flags: 0x12),
            TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 501, flags: 0x18, payload: Array(framed[..<7])),
            TestPackets.tcp(from: "10.0.0.53", 53, to: "10.0.0.1", 40000, seq: 508, flags: 0x18, payload: Array(framed[7...])),
            TestPackets.tcpSYN(from: "10.0.0.1", 40001, to: "192.0.2.9", 443),
        ]
        let flows = CaptureReplay.flows(packets.enumerated().map { CapturedPacket(timestamp: 1000 + Double($0.offset), ip: $0.element[...]) })
        #expect(flows.map { $0.facts.dst?.description } == ["10.0.0.53:53", "192.0.2.9:443"], "the DNS connection and the flow, nothing from the answers")
        #expect(flows.last?.facts.names == ["tcp.example"])
    }
}

/// Broken configurations — mutations of the shipped policy, agent config and verdict corpus —
/// are refused with an error that names a line of the file, and never trap.
@Suite struct MutatedConfigurationTests {
    @Test func mutatedConfigurationsAreClearErrors() throws {
        var (iterations, rng) = Mutation.campaign(iterations: 4_000, seed: 0xC0F1)
        let config = "\(TestEnv.packageRoot)/config"
        let seeds = try ["policy.toml", "loupe.toml", "verdicts/example.toml"].map { Array(try String(contentsOfFile: "\(config)/\($0)", encoding: .utf8).utf8) }
        let lists: (String, Int) throws(ConfigError) -> (String, String) = { name, _ in ("ads.example\n*.tracker.test\n", "lists/\(name)") }
        for i in 0..<iterations {
            let text = String(decoding: Mutation.apply(to: seeds[i % seeds.count], rounds: 3, rng: &rng), as: UTF8.self)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).count
            func check(_ error: ConfigError) {
                #expect(error.line >= 0 && error.line <= lines + 1 && !error.message.isEmpty, "iteration \(i): \(error)")
            }
            do throws(TOMLError) { _ = try TOML.parse(text) } catch {
                #expect(error.line >= 1 && error.line <= lines + 1, "iteration \(i): \(error)")
            }
            switch i % seeds.count {
            case 0: do throws(ConfigError) { _ = try Policy.parse(text, file: "policy.toml", readList: lists) } catch { check(error) }
            case 2: do throws(ConfigError) { _ = try Corpus.parse(text, file: "example.toml") } catch { check(error) }
            default: break
            }
        }
    }
}
