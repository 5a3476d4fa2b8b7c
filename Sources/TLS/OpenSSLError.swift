import COpenSSL

/// An OpenSSL failure: what Loupe was doing, plus OpenSSL's own error queue (library, reason,
/// file:line) so the cause is never hidden behind a wrapper.
public struct OpenSSLError: Error, Sendable, CustomStringConvertible {
    public let operation: String
    public let details: [String]

    /// Drains this thread's OpenSSL error queue into an error for `operation`.
    public static func drain(_ operation: String) -> OpenSSLError {
        var details: [String] = []
        var buffer = [CChar](repeating: 0, count: 256)
        while true {
            var file: UnsafePointer<CChar>?
            var line: Int32 = 0
            let code = ERR_get_error_all(&file, &line, nil, nil, nil)
            if code == 0 { break }
            ERR_error_string_n(code, &buffer, buffer.count)
            let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            details.append(text)
        }
        return OpenSSLError(operation: operation, details: details)
    }

    public var description: String {
        details.isEmpty ? "\(operation) failed" : "\(operation) failed: \(details.joined(separator: "; "))"
    }
}

/// Empties this thread's error queue before a call whose outcome is read from it (SSL_get_error
/// looks there). OpenSSL 3.0's ERR_clear_error resets all sixteen slots of the queue every time —
/// ~5% of a relayed request's CPU at one call per record; a peek finds the queue empty, as it
/// nearly always is, in a fraction of that.
@inline(__always)
func clearErrorQueue() {
    if ERR_peek_error() != 0 { ERR_clear_error() }
}

/// Runs `body` with a clean error queue; a false result becomes an `OpenSSLError`.
@inline(__always)
func check(_ operation: @autoclosure () -> String, _ ok: Bool) throws(OpenSSLError) {
    if !ok { throw OpenSSLError.drain(operation()) }
}

/// Reads everything written into a memory BIO.
func readMemoryBIO(_ bio: OpaquePointer) -> [UInt8] {
    var data: UnsafeMutablePointer<CChar>?
    let length = loupe_BIO_get_mem_data(bio, &data)
    guard length > 0, let data else { return [] }
    return data.withMemoryRebound(to: UInt8.self, capacity: length) { Array(UnsafeBufferPointer(start: $0, count: length)) }
}

/// A read-only memory BIO over `bytes`, valid inside `body`.
func withMemoryBIO<T>(_ bytes: [UInt8], _ body: (OpaquePointer) throws(OpenSSLError) -> T) throws(OpenSSLError) -> T {
    let bio: OpaquePointer? = bytes.withUnsafeBytes { BIO_new_mem_buf($0.baseAddress, Int32($0.count)) }
    // BIO_new_mem_buf does not copy: the BIO must not outlive `bytes`, so both end here.
    guard let bio else { throw OpenSSLError.drain("BIO_new_mem_buf") }
    defer { BIO_free(bio) }
    return try withExtendedLifetime(bytes) { () throws(OpenSSLError) -> T in try body(bio) }
}

/// Runs `write` against a fresh memory BIO and returns what it wrote.
func writeMemoryBIO(_ operation: String, _ write: (OpaquePointer) -> Bool) throws(OpenSSLError) -> [UInt8] {
    guard let bio = BIO_new(BIO_s_mem()) else { throw OpenSSLError.drain("BIO_new") }
    defer { BIO_free(bio) }
    ERR_clear_error()
    try check(operation, write(bio))
    return readMemoryBIO(bio)
}
