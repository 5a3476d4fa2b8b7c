import Platform

/// Why the store could not do what was asked. Every case names the file or item and the cause.
public enum StoreError: Error, CustomStringConvertible, Sendable {
    case noStore(path: String)
    case unsafe(FileError)
    case io(FileError)
    case metadata(path: String, reason: String)
    /// The data key could not be unwrapped: the store stays untouched, nothing is regenerated.
    case unseal(provider: String, reason: String)
    case tpm(String)
    case duplicate(itemClass: ItemClass, clash: String, existing: String)
    case notFound(ref: String)
    case invalid(String)

    public var description: String {
        switch self {
        case .noStore(let path): "no store at \(path) (create one with 'loupe ca init')"
        case .unsafe(let e): "unsafe permissions: \(e)"
        case .io(let e): "\(e)"
        case .metadata(let path, let reason): "\(path): \(reason)"
        case .unseal(let provider, let reason):
            "cannot unseal the store's data key (provider \(provider)): \(reason). Nothing was changed or regenerated."
        case .tpm(let reason): "TPM: \(reason)"
        case .duplicate(let itemClass, let clash, let existing):
            "a \(itemClass.rawValue) with \(clash) already exists (reference \(existing))"
        case .notFound(let ref): "no item with reference \(ref)"
        case .invalid(let reason): reason
        }
    }
}
