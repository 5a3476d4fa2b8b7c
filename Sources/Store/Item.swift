import Foundation
import TLS

/// The three kinds of thing the store keeps, as a keychain does.
public enum ItemClass: String, Sendable, Codable, CaseIterable {
    case key, certificate, secret

    /// Attributes that together must be unique within the class.
    var uniqueAttributes: [String] {
        switch self {
        case .key: ["public-key-sha256"]
        case .certificate: ["issuer", "serial"]
        case .secret: ["label"]
        }
    }
}

/// One stored item. `ref` is its persistent reference: stable for the item's life, kept by updates.
public struct Item: Sendable, Equatable {
    public var ref: String
    public var itemClass: ItemClass
    public var attributes: [String: String]
    /// The secret bytes (PKCS#8 key, DER certificate, or the secret). Never printed.
    public var data: [UInt8]
    public var created: Date
    public var modified: Date

    public var label: String { attributes["label"] ?? "" }
}

/// Derives the attributes the store itself maintains from an item's data, so the uniqueness
/// and identity rules never trust caller-supplied copies.
enum DerivedAttributes {
    static func make(_ itemClass: ItemClass, data: [UInt8]) throws -> [String: String] {
        switch itemClass {
        case .key:
            let key = try PrivateKey(der: data)
            return ["public-key-sha256": Crypto.sha256Hex(try key.publicKeyDER()), "key-type": key.typeDescription]
        case .certificate:
            let cert = try Certificate(der: data)
            return [
                "subject": cert.subject, "issuer": cert.issuer, "serial": cert.serialHex,
                "sha256": cert.sha256Fingerprint, "public-key-sha256": Crypto.sha256Hex(cert.publicKeyDER),
                "not-after": ISO8601DateFormatter().string(from: cert.notAfter),
            ]
        case .secret:
            return [:]
        }
    }
}

/// A certificate together with the stored key whose public key matches it.
public struct Identity: Sendable {
    public var certificate: Item
    public var key: Item
}

/// A file in the store that could not be read as an item. Reported, never deleted.
public struct ItemProblem: Sendable, CustomStringConvertible {
    public var file: String
    public var reason: String
    public var description: String { "\(file): \(reason)" }
}
