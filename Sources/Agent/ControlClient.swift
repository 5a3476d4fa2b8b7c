import Foundation

/// A blocking client for the control socket, for the CLI and tests.
public enum ControlClient {
    /// For commands answered with one JSON object: that object, or the agent's `error` thrown.
    public static func call(_ request: ControlRequest, to path: String) throws -> [String: Any] {
        var object: [String: Any]?
        try send(request, to: path) { line in
            object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] ?? ["error": line]
        }
        guard let object else { throw AgentError("the agent sent no answer") }
        if let error = object["error"] as? String { throw AgentError(error) }
        return object
    }

    /// Sends `request` and hands each payload line to `line` until the server closes. Throws the
    /// server's refusal, or why the socket could not be used.
    public static func send(_ request: ControlRequest, to path: String, line: (String) -> Void) throws {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw AgentError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw AgentError("\(path): path too long for a unix socket") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard connected == 0 else {
            throw AgentError("\(path): cannot reach the agent (\(String(cString: strerror(errno)))); is 'loupe run' running?")
        }
        let out = Array((request.line + "\n").utf8)
        _ = out.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var pending: [UInt8] = []
        var header: [String: Any]?
        var chunk = [UInt8](repeating: 0, count: 65_536)
        func deliver(_ text: String) throws {
            if header == nil {
                header = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
                if header?["ok"] as? Bool != true { throw AgentError("agent refused: \(header?["error"] as? String ?? text)") }
            } else {
                line(text)
            }
        }
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            pending += chunk[..<n]
            while let newline = pending.firstIndex(of: 0x0A) {
                let text = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                try deliver(text)
            }
        }
        if !pending.isEmpty { try deliver(String(decoding: pending, as: UTF8.self)) }
        if header == nil { throw AgentError("the agent closed the connection without an answer") }
    }
}
