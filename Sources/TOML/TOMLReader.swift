/// Typed, strict access to a TOML table for configuration readers: unknown keys and wrong types
/// are errors naming the file, line and key — nothing is guessed.
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    public var description: String { "\(file):\(line): \(message)" }
}

public struct TOMLReader: Sendable {
    public let file: String
    public let table: TOMLTable
    /// Dotted path of this table inside the document, for messages ("ca.subject").
    public let path: String

    public init(file: String, table: TOMLTable, path: String = "") {
        self.file = file
        self.table = table
        self.path = path
    }

    /// Parses `text` (the contents of `file`) and wraps syntax errors as `ConfigError`.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> TOMLReader {
        do {
            return TOMLReader(file: file, table: try TOML.parse(text))
        } catch {
            throw ConfigError(file: file, line: error.line, message: error.message)
        }
    }

    func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    public func error(_ message: String, at value: TOMLValue? = nil) -> ConfigError {
        ConfigError(file: file, line: value?.line ?? table.line, message: message)
    }

    /// Rejects keys not in `known`.
    public func onlyKeys(_ known: Set<String>) throws(ConfigError) {
        for key in table.keys where !known.contains(key) {
            let allowed = known.sorted().joined(separator: ", ")
            throw error("unknown key '\(name(key))' (allowed here: \(allowed))", at: table[key])
        }
    }

    public func string(_ key: String) throws(ConfigError) -> String? {
        guard let v = table[key] else { return nil }
        guard let s = v.string else { throw error("'\(name(key))' must be a string, found \(v.typeName)", at: v) }
        return s
    }

    public func integer(_ key: String, in range: ClosedRange<Int64>? = nil) throws(ConfigError) -> Int64? {
        guard let v = table[key] else { return nil }
        guard let i = v.integer else { throw error("'\(name(key))' must be an integer, found \(v.typeName)", at: v) }
        if let range, !range.contains(i) {
            throw error("'\(name(key))' must be between \(range.lowerBound) and \(range.upperBound), found \(i)", at: v)
        }
        return i
    }

    public func bool(_ key: String) throws(ConfigError) -> Bool? {
        guard let v = table[key] else { return nil }
        guard let b = v.bool else { throw error("'\(name(key))' must be true or false, found \(v.typeName)", at: v) }
        return b
    }

    public func strings(_ key: String) throws(ConfigError) -> [String]? {
        guard let v = table[key] else { return nil }
        guard let items = v.array else { throw error("'\(name(key))' must be an array of strings, found \(v.typeName)", at: v) }
        var out: [String] = []
        for item in items {
            guard let s = item.string else { throw error("'\(name(key))' must hold only strings, found \(item.typeName)", at: item) }
            out.append(s)
        }
        return out
    }

    public func table(_ key: String) throws(ConfigError) -> TOMLReader? {
        guard let v = table[key] else { return nil }
        guard let t = v.table else { throw error("'\(name(key))' must be a table, found \(v.typeName)", at: v) }
        return TOMLReader(file: file, table: t, path: name(key))
    }
}
