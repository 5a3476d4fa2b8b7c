import COpenSSL
import Foundation
import Synchronization

/// An NSS key log (the SSLKEYLOGFILE format Wireshark reads): one line per secret, for both legs
/// of every handshake on the contexts it is attached to. Off unless configured; the file is
/// created 0600 and must be a regular file owned by us (no symlink games in shared directories).
public final class KeyLog: Sendable {
    let fd: Int32
    let lock = Mutex(())

    public init(path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw OpenSSLError(operation: "key log \(path)", details: [String(cString: strerror(errno))]) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG, info.st_uid == geteuid() else {
            close(fd)
            throw OpenSSLError(operation: "key log \(path)", details: ["not a regular file of this user"])
        }
        fchmod(fd, 0o600)   // an existing file keeps secrets too: never wider than 0600
        self.fd = fd
    }

    deinit { close(fd) }

    func write(_ line: UnsafePointer<CChar>) {
        var bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(line).assumingMemoryBound(to: UInt8.self), count: strlen(line)))
        bytes.append(0x0A)
        lock.withLock { _ in _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
    }
}

extension TLSContext {
    /// Sends every handshake's secrets on this context to `keyLog` (nil: stop).
    public func logKeys(to keyLog: KeyLog?) {
        keyLogSink.withLock { $0 = keyLog }
        SSL_CTX_set_keylog_callback(ctx, keyLog == nil ? nil : keyLogLine)
    }

    /// Whether handshakes on this context have their secrets logged.
    public var logsKeys: Bool { keyLogSink.withLock { $0 != nil } }
}

private let keyLogLine: @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Void = { ssl, line in
    guard let ssl, let line, let raw = SSL_get_ex_data(ssl, 0) else { return }
    let session = Unmanaged<TLSSession>.fromOpaque(raw).takeUnretainedValue()
    session.context.keyLogSink.withLock { $0 }?.write(line)
}
