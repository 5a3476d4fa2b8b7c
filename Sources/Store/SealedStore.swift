import Foundation
import Platform
import TLS

/// Where a store's files live under a state directory.
///
///     STATE/host.key                 host-key provider only (0400)
///     STATE/store/store.json         format and provider (written last: marks a complete store)
///     STATE/store/datakey.wrapped    host-key: data key, AES-256-GCM under host.key
///     STATE/store/datakey.tpm2.{pub,priv}  tpm2: data key sealed under the TPM's primary key
///     STATE/store/items/REF.item     one item: magic ‖ AES-256-GCM(JSON), AAD binds REF
public struct StoreLayout: Sendable {
    public let stateDirectory: String
    public var directory: String { "\(stateDirectory)/store" }
    public var metadata: String { "\(directory)/store.json" }
    public var items: String { "\(directory)/items" }
    public var wrappedDataKey: String { "\(directory)/datakey.wrapped" }
    public var tpmPublic: String { "\(directory)/datakey.tpm2.pub" }
    public var tpmPrivate: String { "\(directory)/datakey.tpm2.priv" }
    public var hostKey: String { "\(stateDirectory)/host.key" }
    var lock: String { "\(directory)/.lock" }

    public init(stateDirectory: String) { self.stateDirectory = stateDirectory }

    func itemPath(_ ref: String) -> String { "\(items)/\(ref).item" }
}

struct StoreMetadata: Codable {
    var format: Int
    var provider: ProviderKind
    var created: Date
}

/// The sealed store: keychain-like items, each encrypted under a data key that a provider
/// (TPM or host key) protects. Opening never modifies anything; a failure to unseal or to read
/// an item is reported and leaves every file as it was.
public final class SealedStore: @unchecked Sendable {
    public let layout: StoreLayout
    public let provider: ProviderKind
    /// The view of the item files as of the last (re)load; guarded by `lock`.
    private var _items: [Item] = []
    private var _problems: [ItemProblem] = []
    private var _leftovers: [String] = []

    public var items: [Item] { lock.withLock { _items } }
    /// Files under items/ that could not be read as items (corrupt, truncated, foreign).
    public var problems: [ItemProblem] { lock.withLock { _problems } }
    /// Temp files of interrupted writes; the items they were replacing are intact.
    public var leftoverTempFiles: [String] { lock.withLock { _leftovers } }
    private let dataKey: [UInt8]
    private let lock = NSLock()

    static let itemMagic = Array("LOUPE-ITEM\u{1}".utf8)

    private init(layout: StoreLayout, provider: ProviderKind, dataKey: [UInt8]) {
        self.layout = layout
        self.provider = provider
        self.dataKey = dataKey
    }

    // MARK: open and create

    public static func exists(stateDirectory: String) -> Bool {
        PrivateFiles.exists(StoreLayout(stateDirectory: stateDirectory).metadata)
    }

    /// The provider recorded in store.json, read without unsealing anything.
    public static func recordedProvider(stateDirectory: String) throws -> ProviderKind {
        try readMetadata(StoreLayout(stateDirectory: stateDirectory)).provider
    }

    public static func open(stateDirectory: String, options: StoreOptions = StoreOptions()) throws -> SealedStore {
        let layout = StoreLayout(stateDirectory: stateDirectory)
        guard PrivateFiles.exists(layout.directory) else { throw StoreError.noStore(path: layout.directory) }
        try checkPermissions(layout)
        let metadata = try readMetadata(layout)
        let dataKey = try keyProvider(metadata.provider, layout, options).unseal()
        let store = SealedStore(layout: layout, provider: metadata.provider, dataKey: dataKey)
        try store.reload()
        return store
    }

    /// Creates a new, empty store. Refuses to touch a directory that already holds a store or
    /// any item, so an existing data key can never be replaced.
    public static func create(stateDirectory: String, provider: ProviderKind, options: StoreOptions = StoreOptions()) throws -> SealedStore {
        let layout = StoreLayout(stateDirectory: stateDirectory)
        do {
            try PrivateFiles.makeDirectory(stateDirectory)
            try PrivateFiles.makeDirectory(layout.directory)
            try PrivateFiles.makeDirectory(layout.items)
        } catch { throw StoreError.io(error) }
        try checkPermissions(layout)
        return try PrivateFiles.withLock(layout.lock) {
            if PrivateFiles.exists(layout.metadata) {
                throw StoreError.invalid("a store already exists at \(layout.directory)")
            }
            let existing = try PrivateFiles.list(layout.items).filter { $0.hasSuffix(".item") }
            if !existing.isEmpty {
                throw StoreError.invalid("\(layout.items) holds \(existing.count) item(s) but store.json is missing: refusing to create a new data key over them; restore store.json from a backup")
            }
            let dataKey = try Crypto.randomBytes(AESGCM.keySize)
            try keyProvider(provider, layout, options).seal(dataKey)
            let encoder = JSONEncoder()
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let json = try encoder.encode(StoreMetadata(format: 1, provider: provider, created: Date()))
            try PrivateFiles.atomicWrite(layout.metadata, Array(json) + [0x0A])
            return SealedStore(layout: layout, provider: provider, dataKey: dataKey)
        }
    }

    static func keyProvider(_ kind: ProviderKind, _ layout: StoreLayout, _ options: StoreOptions) -> KeyProvider {
        switch kind {
        case .hostKey: HostKeyProvider(layout: layout)
        case .tpm2: TPM2Provider(layout: layout, tcti: options.tcti ?? StoreOptions.defaultTCTI)
        }
    }

    static func checkPermissions(_ layout: StoreLayout) throws {
        do {
            try PrivateFiles.checkPrivate(layout.directory, maxMode: 0o700, directory: true)
            if PrivateFiles.exists(layout.items) { try PrivateFiles.checkPrivate(layout.items, maxMode: 0o700, directory: true) }
            for file in [layout.metadata, layout.wrappedDataKey, layout.tpmPublic, layout.tpmPrivate] where PrivateFiles.exists(file) {
                try PrivateFiles.checkPrivate(file, maxMode: 0o600, directory: false)
            }
        } catch {
            throw StoreError.unsafe(error)
        }
    }

    static func readMetadata(_ layout: StoreLayout) throws -> StoreMetadata {
        guard PrivateFiles.exists(layout.metadata) else {
            throw StoreError.metadata(path: layout.metadata, reason: "missing: the store is incomplete (interrupted creation?) — nothing was changed")
        }
        let bytes = try PrivateFiles.read(layout.metadata)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        do {
            let metadata = try decoder.decode(StoreMetadata.self, from: Data(bytes))
            guard metadata.format == 1 else {
                throw StoreError.metadata(path: layout.metadata, reason: "store format \(metadata.format) is newer than this Loupe understands (1)")
            }
            return metadata
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError.metadata(path: layout.metadata, reason: "not a Loupe store description (\(error))")
        }
    }

    // MARK: reading

    /// Re-reads every item file. Unreadable files become `problems`; none is touched.
    public func reload() throws {
        var loaded: [Item] = [], problems: [ItemProblem] = [], leftovers: [String] = []
        for name in try PrivateFiles.list(layout.items) {
            let path = "\(layout.items)/\(name)"
            if name.hasPrefix(".tmp-") { leftovers.append(path); continue }
            guard name.hasSuffix(".item") else {
                problems.append(ItemProblem(file: path, reason: "not an item file (foreign file left in the store)"))
                continue
            }
            do {
                try PrivateFiles.checkPrivate(path, maxMode: 0o600, directory: false)
            } catch {
                throw StoreError.unsafe(error)
            }
            let ref = String(name.dropLast(".item".count))
            do {
                loaded.append(try decodeItem(try PrivateFiles.read(path), ref: ref))
            } catch {
                problems.append(ItemProblem(file: path, reason: "\(error)"))
            }
        }
        lock.withLock {
            _items = loaded.sorted { ($0.created, $0.ref) < ($1.created, $1.ref) }
            _problems = problems
            _leftovers = leftovers
        }
    }

    public func item(_ ref: String) -> Item? { items.first { $0.ref == ref } }

    /// Items of `itemClass` whose attributes include every pair in `matching`.
    public func find(_ itemClass: ItemClass, matching: [String: String] = [:]) -> [Item] {
        items.filter { item in
            item.itemClass == itemClass && matching.allSatisfy { item.attributes[$0.key] == $0.value }
        }
    }

    /// Certificates paired with the key whose public key they carry.
    public func identities() -> [Identity] {
        let keys = find(.key)
        return find(.certificate).compactMap { cert in
            guard let hash = cert.attributes["public-key-sha256"],
                  let key = keys.first(where: { $0.attributes["public-key-sha256"] == hash }) else { return nil }
            return Identity(certificate: cert, key: key)
        }
    }

    /// Client identities imported for mTLS upstreams (`store import-p12`), by label.
    public func clientIdentities() throws -> [String: ClientIdentity] {
        var out: [String: ClientIdentity] = [:]
        for cert in find(.certificate, matching: ["role": "client-identity"]) {
            guard let label = cert.attributes["label"],
                  let key = find(.key, matching: ["role": "client-identity", "label": label, "public-key-sha256": cert.attributes["public-key-sha256"] ?? ""]).first else { continue }
            let chain = try find(.certificate, matching: ["role": "chain", "label": label]).map { try Certificate(der: $0.data) }
            out[label] = ClientIdentity(chain: [try Certificate(der: cert.data)] + chain, key: try PrivateKey(der: key.data))
        }
        return out
    }

    // MARK: writing

    /// Adds an item. The store derives the attributes it relies on (public-key hash, issuer,
    /// serial) from `data`; a clash with the class's uniqueness rule is an error naming it.
    @discardableResult
    public func add(_ itemClass: ItemClass, data: [UInt8], attributes: [String: String]) throws -> Item {
        var attributes = attributes
        do {
            attributes.merge(try DerivedAttributes.make(itemClass, data: data)) { $1 }
        } catch {
            throw StoreError.invalid("the \(itemClass.rawValue) data is not valid: \(error)")
        }
        if itemClass == .secret, attributes["label", default: ""].isEmpty {
            throw StoreError.invalid("a secret needs a label")
        }
        return try mutate {
            try self.checkUnique(itemClass, attributes, except: nil)
            let now = Date()
            let item = Item(ref: Crypto.hex(try Crypto.randomBytes(16)), itemClass: itemClass,
                            attributes: attributes, data: data, created: now, modified: now)
            try self.write(item)
            return item
        }
    }

    /// Replaces an item's data and/or merges attributes; the persistent reference is kept.
    @discardableResult
    public func update(_ ref: String, data: [UInt8]? = nil, attributes: [String: String] = [:]) throws -> Item {
        try mutate {
            guard var item = self.item(ref) else { throw StoreError.notFound(ref: ref) }
            if let data {
                item.data = data
                do { item.attributes.merge(try DerivedAttributes.make(item.itemClass, data: data)) { $1 } } catch {
                    throw StoreError.invalid("the \(item.itemClass.rawValue) data is not valid: \(error)")
                }
            }
            item.attributes.merge(attributes) { $1 }
            item.modified = Date()
            try self.checkUnique(item.itemClass, item.attributes, except: ref)
            try self.write(item)
            return item
        }
    }

    /// Deletes one item, by explicit request only.
    public func delete(_ ref: String) throws {
        try mutate {
            guard self.item(ref) != nil else { throw StoreError.notFound(ref: ref) }
            let path = self.layout.itemPath(ref)
            guard unlink(path) == 0 else { throw StoreError.io(FileError(path: path, reason: "cannot delete: \(String(cString: strerror(errno)))")) }
            try PrivateFiles.syncDirectory(self.layout.items)
        }
    }

    /// Runs a change under the cross-process lock, on a fresh view of the items.
    private func mutate<T>(_ body: () throws -> T) throws -> T {
        try PrivateFiles.withLock(layout.lock) {
            try reload()
            let result = try body()
            try reload()
            return result
        }
    }

    private func checkUnique(_ itemClass: ItemClass, _ attributes: [String: String], except ref: String?) throws {
        let keys = itemClass.uniqueAttributes
        let wanted = keys.map { attributes[$0] ?? "" }
        let clash = items.first { other in
            other.itemClass == itemClass && other.ref != ref && keys.map { other.attributes[$0] ?? "" } == wanted
        }
        if let clash {
            let description = zip(keys, wanted).map { "\($0) '\($1)'" }.joined(separator: " and ")
            throw StoreError.duplicate(itemClass: itemClass, clash: description, existing: clash.ref)
        }
    }

    // MARK: encoding

    private struct Record: Codable {
        var ref: String
        var itemClass: ItemClass
        var attributes: [String: String]
        var data: Data
        var created: Date
        var modified: Date
        enum CodingKeys: String, CodingKey { case ref, itemClass = "class", attributes, data, created, modified }
    }

    private func aad(_ ref: String) -> [UInt8] { Array("loupe-item-v1:\(ref)".utf8) }

    private func write(_ item: Item) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        let json = try encoder.encode(Record(ref: item.ref, itemClass: item.itemClass, attributes: item.attributes,
                                             data: Data(item.data), created: item.created, modified: item.modified))
        let sealed = try AESGCM.seal(Array(json), key: dataKey, aad: aad(item.ref))
        try PrivateFiles.atomicWrite(layout.itemPath(item.ref), Self.itemMagic + sealed)
    }

    private func decodeItem(_ bytes: [UInt8], ref: String) throws -> Item {
        guard bytes.count > Self.itemMagic.count else {
            throw StoreError.invalid("truncated (\(bytes.count) bytes)")
        }
        guard bytes.starts(with: Self.itemMagic) else { throw StoreError.invalid("not a Loupe item (bad header)") }
        let plaintext: [UInt8]
        do {
            plaintext = try AESGCM.open(Array(bytes[Self.itemMagic.count...]), key: dataKey, aad: aad(ref))
        } catch {
            throw StoreError.invalid("does not decrypt under this store's key: corrupt, truncated, renamed, or from another store")
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let record = try decoder.decode(Record.self, from: Data(plaintext))
        return Item(ref: record.ref, itemClass: record.itemClass, attributes: record.attributes,
                    data: Array(record.data), created: record.created, modified: record.modified)
    }
}
