import Foundation
import Platform
import TLS

/// Where the store's data key is protected.
public enum ProviderKind: String, Sendable, Codable, CaseIterable {
    /// Sealed to this machine's TPM 2.0.
    case tpm2
    /// Wrapped under a root-only key file beside the store.
    case hostKey = "host-key"

    public var protects: [String] {
        switch self {
        case .tpm2: [
            "a copied disk or backup: the data key unseals only inside this machine's TPM",
            "other users on this host: store files are root-only (0700/0600)",
        ]
        case .hostKey: [
            "other users on this host: store and host key are root-only (0700/0600/0400)",
            "a copy of the store directory alone, without the host key file",
        ]
        }
    }

    public var doesNotProtect: [String] {
        switch self {
        case .tpm2: [
            "root on the running host: it can ask the TPM to unseal, as Loupe does",
            "a stolen machine that still holds its TPM and boots",
        ]
        case .hostKey: [
            "root on the running host",
            "a copied disk or backup that includes the host key file beside the store",
        ]
        }
    }
}

/// Settings for opening or creating a store.
public struct StoreOptions: Sendable {
    /// The TPM's TCTI, e.g. "device:/dev/tpmrm0" or "swtpm:host=127.0.0.1,port=2321".
    public var tcti: String?

    public init(tcti: String? = nil) { self.tcti = tcti }

    public static let defaultTCTI = "device:/dev/tpmrm0"

    /// tpm2 when a TPM is reachable (a TCTI was given, or the kernel's resource manager exists).
    public var preferredProvider: ProviderKind {
        tcti != nil || FileManager.default.fileExists(atPath: "/dev/tpmrm0") ? .tpm2 : .hostKey
    }
}

/// Wraps and unwraps the store's data key.
protocol KeyProvider {
    var kind: ProviderKind { get }
    /// Protects `dataKey` and writes the provider's files into the store directory.
    func seal(_ dataKey: [UInt8]) throws -> Void
    func unseal() throws -> [UInt8]
}

/// host-key: AES-256-GCM wrap of the data key under a 32-byte key in `host.key` (0400, root).
struct HostKeyProvider: KeyProvider {
    let layout: StoreLayout
    var kind: ProviderKind { .hostKey }
    static let aad = Array("loupe-datakey-v1".utf8)

    func seal(_ dataKey: [UInt8]) throws {
        let hostKey: [UInt8]
        if PrivateFiles.exists(layout.hostKey) {
            // A store directory removed by hand can leave the host key behind; reuse, never replace.
            hostKey = try readHostKey()
        } else {
            hostKey = try Crypto.randomBytes(AESGCM.keySize)
            try PrivateFiles.createNew(layout.hostKey, hostKey, mode: 0o400)
        }
        try PrivateFiles.atomicWrite(layout.wrappedDataKey, try AESGCM.seal(dataKey, key: hostKey, aad: Self.aad))
    }

    func unseal() throws -> [UInt8] {
        let hostKey = try readHostKey()
        let wrapped = try PrivateFiles.read(layout.wrappedDataKey)
        do {
            return try AESGCM.open(wrapped, key: hostKey, aad: Self.aad)
        } catch {
            throw StoreError.unseal(provider: kind.rawValue, reason: "\(layout.hostKey) does not open \(layout.wrappedDataKey) (host key replaced, or the wrapped key was altered)")
        }
    }

    func readHostKey() throws -> [UInt8] {
        guard PrivateFiles.exists(layout.hostKey) else {
            throw StoreError.unseal(provider: kind.rawValue, reason: "the host key \(layout.hostKey) is missing")
        }
        do { try PrivateFiles.checkPrivate(layout.hostKey, maxMode: 0o600, directory: false) } catch { throw StoreError.unsafe(error) }
        let key = try PrivateFiles.read(layout.hostKey)
        guard key.count == AESGCM.keySize else {
            throw StoreError.unseal(provider: kind.rawValue, reason: "\(layout.hostKey) holds \(key.count) bytes, expected \(AESGCM.keySize)")
        }
        return key
    }
}

/// tpm2: the data key is a sealed data object under the TPM's storage primary key, which the
/// TPM re-derives from its owner seed; on another TPM (or after a TPM clear) the load fails.
/// Driven through tpm2-tools; transient objects are flushed after each step because a TPM
/// without a resource manager (swtpm, /dev/tpm0) holds only a few.
struct TPM2Provider: KeyProvider {
    let layout: StoreLayout
    let tcti: String
    var kind: ProviderKind { .tpm2 }

    func seal(_ dataKey: [UInt8]) throws {
        try withWorkDirectory { work in
            try createPrimary(work)
            try tool("tpm2_create", ["-Q", "-C", "\(work)/primary.ctx", "-g", "sha256", "-i", "-",
                                     "-u", "\(work)/seal.pub", "-r", "\(work)/seal.priv"], stdin: dataKey)
            flush()
            try PrivateFiles.atomicWrite(layout.tpmPublic, try PrivateFiles.read("\(work)/seal.pub"))
            try PrivateFiles.atomicWrite(layout.tpmPrivate, try PrivateFiles.read("\(work)/seal.priv"))
        }
    }

    func unseal() throws -> [UInt8] {
        try withWorkDirectory { work in
            try createPrimary(work)
            do {
                try tool("tpm2_load", ["-Q", "-C", "\(work)/primary.ctx", "-u", layout.tpmPublic, "-r", layout.tpmPrivate, "-c", "\(work)/seal.ctx"])
            } catch let error as StoreError {
                flush()
                throw StoreError.unseal(provider: kind.rawValue, reason: "this TPM cannot load the store's sealed data key — the store was sealed to a different TPM, or this TPM was cleared (\(error))")
            }
            flush()
            defer { flush() }
            let key: [UInt8]
            do {
                key = try Subprocess.check("tpm2_unseal", ["-T", tcti, "-c", "\(work)/seal.ctx"]).stdout
            } catch { throw StoreError.unseal(provider: kind.rawValue, reason: "\(error)") }
            guard key.count == AESGCM.keySize else {
                throw StoreError.unseal(provider: kind.rawValue, reason: "the TPM returned \(key.count) bytes, expected \(AESGCM.keySize)")
            }
            return key
        }
    }

    private func createPrimary(_ work: String) throws {
        try tool("tpm2_createprimary", ["-Q", "-C", "o", "-g", "sha256", "-G", "ecc256", "-c", "\(work)/primary.ctx"])
        flush()
    }

    private func tool(_ name: String, _ arguments: [String], stdin: [UInt8] = []) throws {
        do {
            try Subprocess.check(name, ["-T", tcti] + arguments, stdin: stdin, timeout: 30)
        } catch {
            throw StoreError.tpm("\(error)")
        }
    }

    private func flush() {
        _ = try? Subprocess.run("tpm2_flushcontext", ["-T", tcti, "-t"], timeout: 30)
    }

    private func withWorkDirectory<T>(_ body: (String) throws -> T) throws -> T {
        let work = "\(layout.directory)/.tpm-work-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(work, 0o700) == 0 else { throw StoreError.io(FileError(path: work, reason: "cannot create")) }
        defer { try? FileManager.default.removeItem(atPath: work) }
        return try body(work)
    }
}
