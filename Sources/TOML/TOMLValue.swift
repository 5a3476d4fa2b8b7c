/// A parsed TOML document: every value remembers the line it was written on, so configuration
/// readers (CA profiles, policies, verdict corpora) can report `file:line` for what they reject.
public struct TOMLValue: Sendable, Equatable {
    public indirect enum Kind: Sendable, Equatable {
        case string(String)
        case integer(Int64)
        case float(Double)
        case bool(Bool)
        /// Offset date-times, local date-times, dates and times, kept as written.
        case datetime(String)
        case array([TOMLValue])
        case table(TOMLTable)
    }

    public var kind: Kind
    /// 1-based line of the value's first character.
    public var line: Int

    public init(_ kind: Kind, line: Int) {
        self.kind = kind
        self.line = line
    }

    /// The TOML type name, for error messages ("expected a string, found an integer").
    public var typeName: String {
        switch kind {
        case .string: "a string"
        case .integer: "an integer"
        case .float: "a float"
        case .bool: "a boolean"
        case .datetime: "a date-time"
        case .array: "an array"
        case .table: "a table"
        }
    }

    public var string: String? { if case .string(let s) = kind { s } else { nil } }
    public var integer: Int64? { if case .integer(let i) = kind { i } else { nil } }
    public var bool: Bool? { if case .bool(let b) = kind { b } else { nil } }
    public var array: [TOMLValue]? { if case .array(let a) = kind { a } else { nil } }
    public var table: TOMLTable? { if case .table(let t) = kind { t } else { nil } }
}

/// A TOML table: keys in the order they were written.
public struct TOMLTable: Sendable, Equatable {
    public private(set) var keys: [String] = []
    private var values: [String: TOMLValue] = [:]
    /// 1-based line of the table's header (or of its first key for the root and inline tables).
    public var line: Int

    public init(line: Int) { self.line = line }

    public subscript(key: String) -> TOMLValue? {
        get { values[key] }
        set {
            if values[key] == nil, newValue != nil { keys.append(key) }
            if newValue == nil { keys.removeAll { $0 == key } }
            values[key] = newValue
        }
    }

    public var isEmpty: Bool { keys.isEmpty }
}
