import Foundation
import TestSupport
import Testing
import TLS

/// badssl-style origins through `loupe proxy`, with clients built on different TLS stacks —
/// curl and Python (OpenSSL), wget and gnutls-cli (GnuTLS), Chromium (BoringSSL and Chrome's
/// own verifier), and Node and Java (JSSE) where they are installed: each must fail through Loupe exactly when it fails direct — except
/// weak upstreams (TLS 1.1, 1024-bit keys and groups) and leaves not meant for servers, which
/// Loupe refuses for every client. Clients
/// connect by IP (wget has no --resolve), so the hello carries no SNI and Loupe names the
/// upstream by the original destination.
@Suite struct ClientStacksTests {
    static let canRun = TestEnv.isRoot && ["ip", "nft", "curl", "openssl", "wget", "gnutls-cli", "python3"].allSatisfy(TestEnv.has)

    /// Each client: a command given the CA file ($1), address ($2) and port ($3); exit 0 = a
    /// verified connection that answered.
    static let clients: [(name: String, tool: String, command: String)] = [
        ("curl", "curl", "curl -s --max-time 10 --cacert $1 https://$2:$3/ -o /dev/null"),
        ("wget (GnuTLS)", "wget", "wget -q -T 10 -t 1 -O /dev/null --ca-certificate=$1 https://$2:$3/"),
        ("gnutls-cli", "gnutls-cli", "timeout 10 gnutls-cli --x509cafile $1 -p $3 $2 </dev/null >/dev/null 2>&1"),
        ("python ssl", "python3", """
            python3 -c 'import ssl,socket,sys; c=ssl.create_default_context(cafile=sys.argv[1]); s=c.wrap_socket(socket.create_connection((sys.argv[2],int(sys.argv[3])),timeout=10),server_hostname=sys.argv[2]); s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); assert s.recv(8).startswith(b"HTTP")' $1 $2 $3 2>/dev/null
            """),
        ("node", "node", """
            node -e 'const [ca,h,p]=process.argv.slice(1);require("https").get({host:h,port:+p,path:"/",ca:require("fs").readFileSync(ca),timeout:10000},r=>process.exit(r.statusCode==200?0:3)).on("error",()=>process.exit(1))' $1 $2 $3
            """),
        // A browser: its own verifier (Chrome's, with the roots of an NSS database made for the
        // CA file), its own TLS stack (BoringSSL); success is the origin's page in the DOM. A
        // refused certificate is an error page at once; a run cut off by the timeout (a cold
        // start on a loaded machine took over 30 s in CI) decided nothing and runs once more.
        ("chromium", "chromium", """
            n=$(dirname $1)/nss-$(basename $1 .pem)
            [ -d $n ] || { mkdir -p $n/.pki/nssdb && certutil -d sql:$n/.pki/nssdb -N --empty-password && certutil -d sql:$n/.pki/nssdb -A -t C,, -n ca -i $1; } >/dev/null 2>&1
            for attempt in 1 2; do
              u=$(mktemp -d); HOME=$n timeout 45 chromium --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir=$u --dump-dom https://$2:$3/ >$u.dom 2>/dev/null; t=$?
              grep -q "Ciphers supported in s_server" $u.dom; rc=$?; rm -rf $u $u.dom
              [ $t = 124 ] || break
            done
            exit $rc
            """),
        ("java (JSSE)", "java", """
            t=$(mktemp -u).p12; keytool -importcert -noprompt -alias ca -file $1 -keystore $t -storetype PKCS12 -storepass changeit >/dev/null 2>&1
            timeout 60 java -Djavax.net.ssl.trustStore=$t -Djavax.net.ssl.trustStorePassword=changeit $(dirname $1)/Get.java https://$2:$3/ >/dev/null 2>&1; rc=$?; rm -f $t; exit $rc
            """),
    ]

    static let javaClient = """
        import java.net.*; import javax.net.ssl.*;
        public class Get { public static void main(String[] a) throws Exception {
          HttpsURLConnection c = (HttpsURLConnection) new URL(a[0]).openConnection();
          c.setConnectTimeout(10000); c.setReadTimeout(10000);
          System.exit(c.getResponseCode() == 200 ? 0 : 3); } }
        """

    @Test(.enabled(if: canRun, "needs root, ip, nft, curl, openssl, wget, gnutls-cli and python3 (CI has them)"))
    func everyStackFailsThroughTheProxyExactlyWhenItFailsDirect() throws {
        let dir = TestEnv.scratch("stacks")
        defer { TestEnv.remove(dir) }
        let sign = { try UpstreamMatrixTests.sign($0, key: $1, issuer: $2, ca: $3, subject: $4, notBefore: $5, notAfter: $6) }
        let rootKey = try PrivateKey.generate(.ecP256)
        let root = try sign([], rootKey, nil, true, nil, Date().addingTimeInterval(-3600), Date().addingTimeInterval(30 * 86_400))
        let intermediateKey = try PrivateKey.generate(.ecP256)
        let intermediate = try sign([], intermediateKey, (root, rootKey), true, nil, Date().addingTimeInterval(-3600), Date().addingTimeInterval(30 * 86_400))
        let strangerKey = try PrivateKey.generate(.ecP256)
        let stranger = try sign([], strangerKey, nil, true, nil, Date().addingTimeInterval(-3600), Date().addingTimeInterval(30 * 86_400))
        let ip: [SubjectAltName] = [.ip([10, 207, 0, 2])]
        let now = Date()
        func leaf(_ names: [SubjectAltName], _ issuer: (Certificate, PrivateKey)?, from: Date = now.addingTimeInterval(-3600), to: Date = now.addingTimeInterval(30 * 86_400)) throws -> (Certificate, PrivateKey) {
            let key = try PrivateKey.generate(.ecP256)
            return (try sign(names, key, issuer, false, nil, from, to), key)
        }
        /// `works`: what every client does direct; nil where clients differ (only the match is asserted).
        /// `strictlyRefused` (below): weak upstreams Loupe refuses on purpose, whatever a lax client does.
        var origins: [(name: String, chain: [Certificate], key: PrivateKey, works: Bool?, flags: String)] = []
        var l = try leaf(ip, (intermediate, intermediateKey))
        origins.append(("valid chain", [l.0, intermediate], l.1, true, ""))
        l = try leaf(ip, (intermediate, intermediateKey))
        origins.append(("missing intermediate", [l.0], l.1, false, ""))
        l = try leaf(ip, (root, rootKey), from: now.addingTimeInterval(-90 * 86_400), to: now.addingTimeInterval(-86_400))
        origins.append(("expired", [l.0], l.1, false, ""))
        l = try leaf([.dns("other.test")], (root, rootKey))
        origins.append(("wrong name", [l.0], l.1, false, ""))
        l = try leaf(ip, nil)
        origins.append(("self-signed", [l.0], l.1, false, ""))
        l = try leaf(ip, (stranger, strangerKey))
        origins.append(("untrusted root", [l.0], l.1, false, ""))
        // An RSA leaf whose keyUsage forbids signatures: GnuTLS and Java refuse it, OpenSSL does
        // not look — each must decide the same through Loupe.
        #expect(TestEnv.sh("openssl genrsa -out \(dir)/rsa.key 2048 2>&1").status == 0)
        let rsaKey = try PrivateKey(pem: try String(contentsOfFile: "\(dir)/rsa.key", encoding: .utf8))
        let usageOnly = CertificateSpec(subject: .attributes([("CN", "origin")]), serial: try CertificateSpec.randomSerial(),
                                        notBefore: now.addingTimeInterval(-3600), notAfter: now.addingTimeInterval(30 * 86_400), publicKey: rsaKey,
                                        extensions: [try CertificateExtension.subjectAltNames(ip), try CertificateExtension.make("keyUsage", "critical,keyEncipherment")])
        let rsaLeaf = CertificateSpec(subject: .attributes([("CN", "origin")]), serial: try CertificateSpec.randomSerial(),
                                      notBefore: now.addingTimeInterval(-3600), notAfter: now.addingTimeInterval(30 * 86_400), publicKey: rsaKey,
                                      extensions: [try CertificateExtension.subjectAltNames(ip)])
        let rsaGood = try CertificateBuilder.sign(rsaLeaf, issuer: root, issuerKey: rootKey)
        #expect(TestEnv.sh("openssl genrsa -out \(dir)/weak.key 1024 2>&1").status == 0)
        let weakKey = try PrivateKey(pem: try String(contentsOfFile: "\(dir)/weak.key", encoding: .utf8))
        var weakSpec = rsaLeaf
        weakSpec.publicKey = weakKey
        #expect(TestEnv.sh("openssl genpkey -genparam -algorithm DH -pkeyopt dh_rfc5114:1 -out \(dir)/dh1024.pem 2>&1").status == 0)
        l = try leaf(ip, (root, rootKey))
        origins.append(("TLS 1.2-only origin", [l.0], l.1, true, "-tls1_2"))
        origins.append(("TLS 1.3-only origin", [l.0], l.1, true, "-tls1_3"))
        // Weak upstreams: GnuTLS takes TLS 1.1 and 1024-bit RSA and DH, Node and Java 1024-bit
        // RSA and DH; Loupe verifies strictly (DESIGN.md) and refuses them for every client.
        // So is a leaf whose extended key usage leaves out serverAuth, which GnuTLS (wget) takes.
        let strictlyRefused: Set<String> = ["TLS 1.1-only origin", "RSA 1024 key", "DHE with a 1024-bit group only",
                                            "leaf for clientAuth only (extended key usage)"]
        origins.append(("TLS 1.1-only origin", [l.0], l.1, nil, "-tls1_1 -cipher DEFAULT@SECLEVEL=0"))
        origins.append(("RSA 1024 key", [try CertificateBuilder.sign(weakSpec, issuer: root, issuerKey: rootKey)], weakKey, nil, "-cipher DEFAULT@SECLEVEL=0"))
        origins.append(("static RSA key exchange only", [rsaGood], rsaKey, nil, "-tls1_2 -cipher AES128-GCM-SHA256"))
        origins.append(("DHE with a 1024-bit group only", [rsaGood], rsaKey, nil, "-tls1_2 -cipher DHE-RSA-AES128-GCM-SHA256:@SECLEVEL=0 -dhparam $D/dh1024.pem"))
        l = try leaf(ip + (1..<300).map { .dns("n\($0).origin.test") }, (root, rootKey))
        origins.append(("300 SANs", [l.0], l.1, true, ""))
        l = try leaf(ip, (root, rootKey))
        let noSubject = try sign(ip, l.1, (root, rootKey), false, "", now.addingTimeInterval(-3600), now.addingTimeInterval(30 * 86_400))
        origins.append(("no subject, names in a critical SAN", [noSubject], l.1, nil, ""))
        origins.append(("RSA leaf without digitalSignature in keyUsage", [try CertificateBuilder.sign(usageOnly, issuer: root, issuerKey: rootKey)], rsaKey, nil, ""))
        // The address only in the subject's CN: curl falls back to the CN for an address,
        // OpenSSL's own check (Python) and GnuTLS do not — Loupe must not decide for them.
        let cnKey = try PrivateKey.generate(.ecP256)
        origins.append(("address only in the subject CN, no SAN", [try sign([], cnKey, (root, rootKey), false, "10.207.0.2", now.addingTimeInterval(-3600), now.addingTimeInterval(30 * 86_400))], cnKey, nil, ""))
        let expiredIssuerKey = try PrivateKey.generate(.ecP256)
        let expiredIssuer = try sign([], expiredIssuerKey, (root, rootKey), true, nil, now.addingTimeInterval(-90 * 86_400), now.addingTimeInterval(-86_400))
        l = try leaf(ip, (expiredIssuer, expiredIssuerKey))
        origins.append(("expired intermediate", [l.0, expiredIssuer], l.1, false, ""))
        let clientOnlyKey = try PrivateKey.generate(.ecP256)
        let clientOnly = try UpstreamMatrixTests.sign(ip, key: clientOnlyKey, issuer: (root, rootKey), extra: [("extendedKeyUsage", "clientAuth")])
        origins.append(("leaf for clientAuth only (extended key usage)", [clientOnly], clientOnlyKey, nil, ""))
        // OCSP must-staple (TLS Feature, RFC 7633): GnuTLS refuses such a leaf without a staple,
        // OpenSSL clients do not look. Loupe's leaf carries the feature as the upstream's did, and
        // its own staple only when the upstream stapled a good response.
        let mustStapleKey = try PrivateKey.generate(.ecP256)
        let mustStaple = try UpstreamMatrixTests.sign(ip, key: mustStapleKey, issuer: (root, rootKey), extra: [("tlsfeature", "status_request")])
        let staple = try OCSP.response(for: mustStaple, issuer: root, issuerKey: rootKey, revoked: false,
                                       thisUpdate: now.addingTimeInterval(-60), nextUpdate: now.addingTimeInterval(86_400))
        try Data(staple).write(to: URL(fileURLWithPath: "\(dir)/must-staple.der"))
        try root.pem.write(toFile: "\(dir)/root-only.pem", atomically: true, encoding: .utf8)
        origins.append(("must-staple leaf, no staple", [mustStaple], mustStapleKey, nil, ""))
        // The root as the whole extra chain (the later -cert_chain wins): GnuTLS takes the
        // certificate after the leaf as the staple's issuer, so the leaf must not come twice.
        origins.append(("must-staple leaf with a good staple", [mustStaple], mustStapleKey, true, "-status_file $D/must-staple.der -cert_chain $D/root-only.pem"))

        let clients = Self.clients.filter { TestEnv.has($0.tool) }
        for skipped in Self.clients where !TestEnv.has(skipped.tool) {
            print("ClientStacksTests: \(skipped.tool) is not installed here; \(skipped.name) is not compared")
        }
        try root.pem.write(toFile: "\(dir)/origin-root.pem", atomically: true, encoding: .utf8)
        try Self.javaClient.write(toFile: "\(dir)/Get.java", atomically: true, encoding: .utf8)
        var servers = "", probes = ""
        for (i, origin) in origins.enumerated() {
            let port = 4431 + i
            try (origin.chain.map(\.pem).joined() + (try origin.key.pkcs8PEM())).write(toFile: "\(dir)/o\(i).pem", atomically: true, encoding: .utf8)
            servers += RedirectedProxy.server(i, flags: origin.flags)
            for (c, client) in clients.enumerated() {
                try client.command.write(toFile: "\(dir)/client\(c).sh", atomically: true, encoding: .utf8)
                probes += """
                    ip netns exec $B bash $D/client\(c).sh $D/origin-root.pem 10.207.0.2 \(port); d=$?
                    ip netns exec $A bash $D/client\(c).sh $D/loupe-root.pem 10.207.0.2 \(port); p=$?
                    echo "CASE \(i) \(c) direct=$d proxied=$p"

                    """
            }
        }
        let run = try RedirectedProxy.run("ls\(getpid() % 100_000)", directory: dir, subnet: "10.207.0", origins: origins.count,
                                          servers: servers, probes: probes, timeout: 600)
        let lines = run.lines
        #expect(run.listening.first == "LISTENING \(origins.count)", "every origin must be listening: \(run.listening)")
        for (i, origin) in origins.enumerated() {
            for (c, client) in clients.enumerated() {
                guard let line = lines.first(where: { $0.hasPrefix("CASE \(i) \(c) ") }) else { Issue.record("\(origin.name), \(client.name): no result\n\(run.out.suffix(2000))"); continue }
                let direct = line.contains("direct=0"), proxied = line.contains("proxied=0")
                if let works = origin.works {
                    #expect(direct == works, "\(origin.name), \(client.name): the direct baseline is not what the case means (\(line))")
                }
                if strictlyRefused.contains(origin.name) {
                    #expect(!proxied, "\(origin.name), \(client.name): Loupe must refuse a weak upstream (\(line))")
                    continue
                }
                #expect(proxied == direct, "\(origin.name), \(client.name): through the proxy \(proxied ? "succeeded" : "failed") but direct \(direct ? "succeeded" : "failed") (\(line))")
            }
        }
    }
}
