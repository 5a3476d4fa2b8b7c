import Foundation

/// The control socket's protocol: one JSON request line from the client; the answer is a header
/// line (`{"ok":true}` or `{"ok":false,"error":"…"}`) then payload lines, and the server closes
/// (except `flows --follow`, which streams until the client goes). Pure.
public struct ControlRequest: Sendable, Equatable {
    public enum Command: String, Sendable, CaseIterable {
        case status, flows, caExport = "ca-export", reload

        /// Commands that change the agent: root only. The rest: root and group `loupe`.
        /// (`loupe ca rotate` changes the root-only store, then asks for a reload.)
        public var changesState: Bool { self == .reload }
    }

    public var command: Command
    public var follow = false
    public var limit = 100
    public var format = "pem"

    public init(command: Command, follow: Bool = false, limit: Int = 100, format: String = "pem") {
        self.command = command
        self.follow = follow
        self.limit = limit
        self.format = format
    }

    public static let maximumLength = 4096

    public static func parse(_ line: [UInt8]) throws(ControlRefusal) -> ControlRequest {
        guard line.count <= maximumLength else { throw ControlRefusal("request longer than \(maximumLength) bytes") }
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any] else {
            throw ControlRefusal("malformed request: expected one JSON object")
        }
        guard let name = object["command"] as? String else { throw ControlRefusal("malformed request: no \"command\"") }
        guard let command = Command(rawValue: name) else {
            throw ControlRefusal("unknown command \"\(name)\" (known: \(Command.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        var request = ControlRequest(command: command)
        if let follow = object["follow"] { guard let b = follow as? Bool else { throw ControlRefusal("\"follow\" must be true or false") }; request.follow = b }
        if let limit = object["limit"] {
            guard let n = limit as? Int, (1...100_000).contains(n) else { throw ControlRefusal("\"limit\" must be 1…100000") }
            request.limit = n
        }
        if let format = object["format"] { guard let f = format as? String else { throw ControlRefusal("\"format\" must be a string") }; request.format = f }
        return request
    }

    public var line: String {
        var object: [String: Any] = ["command": command.rawValue]
        if follow { object["follow"] = true }
        if limit != 100 { object["limit"] = limit }
        if command == .caExport { object["format"] = format }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

public struct ControlRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }

    public var headerLine: String {
        let data = (try? JSONSerialization.data(withJSONObject: ["ok": false, "error": description], options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }
}

/// Who is on the other end of the socket (SO_PEERCRED), and what they may do.
public struct ControlPeer: Sendable, Equatable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    /// Member of the `loupe` group (primary or supplementary).
    public var inLoupeGroup: Bool

    public init(pid: Int32, uid: UInt32, gid: UInt32, inLoupeGroup: Bool) {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.inLoupeGroup = inLoupeGroup
    }

    /// nil when allowed, else the refusal.
    public func refusal(for command: ControlRequest.Command) -> ControlRefusal? {
        if uid == 0 { return nil }
        if command.changesState { return ControlRefusal("permission denied: '\(command.rawValue)' needs root (uid \(uid) is not)") }
        if inLoupeGroup { return nil }
        return ControlRefusal("permission denied: uid \(uid) is neither root nor in group 'loupe'")
    }
}

public enum ControlHeader {
    public static let ok = "{\"ok\":true}"
}
