import Foundation
import TLS

/// The forms fleet tools ingest a root certificate in. The private key is never an input here.
public enum ExportFormat: String, Sendable, CaseIterable {
    case pem, der, mobileconfig, mdm
}

public enum RootExport {
    /// Renders `certificate` as `format`. `template` is the mobileconfig template text
    /// (ca/apple-root.mobileconfig), needed only for that format.
    public static func render(_ certificate: Certificate, as format: ExportFormat, template: String? = nil) throws -> [UInt8] {
        switch format {
        case .pem: return Array(certificate.pem.utf8)
        case .der: return certificate.der
        case .mdm: return Array((mdmLine(certificate) + "\n").utf8)
        case .mobileconfig:
            guard let template else { throw CAError("the mobileconfig template (ca/apple-root.mobileconfig) was not found") }
            return Array(mobileconfig(certificate, template: template).utf8)
        }
    }

    /// The line an MDM inventory script prints (a Jamf extension attribute reads `<result>`).
    public static func mdmLine(_ certificate: Certificate) -> String {
        "<result>loupe-root sha256=\(certificate.sha256Fingerprint) der=\(Data(certificate.der).base64EncodedString())</result>"
    }

    /// Reads a certificate back from what an MDM collected (`mdmLine`), or from PEM or DER.
    public static func importCertificate(_ bytes: [UInt8]) throws -> Certificate {
        let text = String(decoding: bytes, as: UTF8.self)
        if let range = text.range(of: "der=") {
            let base64 = text[range.upperBound...].prefix { $0.isLetter || $0.isNumber || $0 == "+" || $0 == "/" || $0 == "=" }
            guard let der = Data(base64Encoded: String(base64)) else { throw CAError("the MDM line's der= field is not base64") }
            let certificate = try Certificate(der: Array(der))
            if let fp = text.range(of: "sha256=").map({ text[$0.upperBound...].prefix { $0.isHexDigit } }),
               fp.lowercased() != certificate.sha256Fingerprint {
                throw CAError("the MDM line's sha256= (\(fp)) does not match its certificate (\(certificate.sha256Fingerprint)): altered in transit")
            }
            return certificate
        }
        return try Certificate.parse(bytes)
    }

    /// An Apple configuration profile with one com.apple.security.root payload. Identifiers
    /// and UUIDs derive from the fingerprint: re-exporting the same root yields the same
    /// profile, so MDMs update it in place instead of stacking copies.
    public static func mobileconfig(_ certificate: Certificate, template: String) -> String {
        let fingerprint = certificate.sha256Fingerprint
        let name = certificate.commonName ?? "Loupe root"
        let base64 = Data(certificate.der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        let values = [
            "PROFILE_UUID": stableUUID("loupe-profile:\(fingerprint)"),
            "PAYLOAD_UUID": stableUUID("loupe-payload:\(fingerprint)"),
            "PROFILE_IDENTIFIER": "org.loupe.root.\(fingerprint.prefix(16))",
            "PAYLOAD_IDENTIFIER": "org.loupe.root.\(fingerprint.prefix(16)).certificate",
            "DISPLAY_NAME": xmlEscaped(name),
            "FINGERPRINT": fingerprint,
            "CERTIFICATE_FILE": xmlEscaped("\(name).cer"),
            "CERTIFICATE_BASE64": base64,
        ]
        var out = template
        for (key, value) in values { out = out.replacingOccurrences(of: "{{\(key)}}", with: value) }
        return out
    }

    /// A UUID (version 8, RFC 9562 "custom") from SHA-256 of `seed`.
    static func stableUUID(_ seed: String) -> String {
        var b = Crypto.sha256(Array(seed.utf8)).prefix(16).map { $0 }
        b[6] = (b[6] & 0x0F) | 0x80
        b[8] = (b[8] & 0x3F) | 0x80
        let h = Crypto.hex(b).uppercased()
        let c = Array(h)
        return "\(String(c[0..<8]))-\(String(c[8..<12]))-\(String(c[12..<16]))-\(String(c[16..<20]))-\(String(c[20..<32]))"
    }

    static func xmlEscaped(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}

/// Finds Loupe's data files (ca/root.toml, ca/apple-root.mobileconfig): $LOUPE_CA_DIR,
/// /etc/loupe/ca, /usr/share/loupe/ca, then a `ca/` folder above the executable (a checkout).
public enum CAFiles {
    public static func directory(environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        if let dir = environment["LOUPE_CA_DIR"] { return dir }
        for dir in ["/etc/loupe/ca", "/usr/share/loupe/ca"] where FileManager.default.fileExists(atPath: "\(dir)/root.toml") {
            return dir
        }
        var url = URL(fileURLWithPath: CommandLine.arguments.first ?? ".").resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            let candidate = url.appendingPathComponent("ca")
            if FileManager.default.fileExists(atPath: candidate.appendingPathComponent("root.toml").path) { return candidate.path }
            url.deleteLastPathComponent()
        }
        return nil
    }
}
