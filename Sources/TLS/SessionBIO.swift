import COpenSSL
import NIOCore

/// The one BIO under a session: OpenSSL reads the peer's bytes straight from the buffer the owner
/// handed to `receive` (a socket's read, as NIO made it), and writes its records straight into
/// the buffer `takeRecords` hands back (to be written to the other socket as it is).
/// Memory BIOs cost two copies of every byte more (in and out of their own buffers), kept the
/// size of the largest burst until replaced, and four of them (with locks and buffer headers)
/// were ~1 KiB of every idle bumped pair.
enum SessionBIO {
    /// Set up once, then only read by OpenSSL.
    nonisolated(unsafe) static let method: OpaquePointer = {
        guard let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "loupe session") else {
            fatalError("BIO_meth_new failed: OpenSSL is out of memory at start-up")
        }
        _ = BIO_meth_set_read_ex(method) { bio, buffer, wanted, done in
            BIO_clear_flags(bio, retryFlags)
            var taken = 0
            if let buffer, wanted > 0 {
                taken = withSession(of: bio) { $0.takeInput(into: buffer, upTo: wanted) } ?? 0
            }
            done?.pointee = taken
            guard taken > 0 else {
                BIO_set_flags(bio, BIO_FLAGS_READ | BIO_FLAGS_SHOULD_RETRY)  // more may come
                return 0
            }
            return 1
        }
        _ = BIO_meth_set_write_ex(method) { bio, bytes, count, done in
            BIO_clear_flags(bio, retryFlags)
            let written: Void? = withSession(of: bio) { session in
                guard let bytes, count > 0 else { return }
                session.appendOutput(UnsafeRawBufferPointer(start: bytes, count: count))
            }
            guard written != nil else { return 0 }  // no session yet
            done?.pointee = count
            return 1
        }
        // OpenSSL asks several of these a record (flush, kTLS, pending): the session is looked
        // at only for the two that need it.
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH: return BIO_get_data(bio) == nil ? 0 : 1  // nothing is held back
            case BIO_CTRL_PENDING: return withSession(of: bio) { $0.inputPending } ?? 0
            case BIO_CTRL_WPENDING: return withSession(of: bio) { $0.output?.readableBytes ?? 0 } ?? 0
            default: return 0
            }
        }
        return method
    }()

    static let retryFlags = BIO_FLAGS_READ | BIO_FLAGS_WRITE | BIO_FLAGS_IO_SPECIAL | BIO_FLAGS_SHOULD_RETRY

    /// A BIO for `session` (which must outlive it: its SSL, which owns the BIO, is freed first).
    static func make(for session: TLSSession) -> OpaquePointer? {
        guard let bio = BIO_new(method) else { return nil }
        BIO_set_data(bio, Unmanaged.passUnretained(session).toOpaque())
        BIO_set_init(bio, 1)  // nothing to free with it: the session owns the bytes
        return bio
    }

    /// Runs `body` on the session a BIO of this method was made for (nil before `make` set
    /// it), without retaining and releasing it: the session outlives its SSL and so its BIO,
    /// and these callbacks run several times a record.
    private static func withSession<T>(of bio: OpaquePointer?, _ body: (TLSSession) -> T) -> T? {
        guard let data = BIO_get_data(bio) else { return nil }
        return Unmanaged<TLSSession>.fromOpaque(data)._withUnsafeGuaranteedRef(body)
    }
}

extension TLSSession {
    /// Bytes from the peer OpenSSL has not read yet.
    var inputPending: Int { input?.readableBytes ?? 0 }

    /// Queues the peer's bytes; the buffer itself when nothing is left of the last one.
    func queueInput(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        if input == nil {
            input = buffer
        } else {
            input!.writeImmutableBuffer(buffer)
        }
    }

    /// Copies up to `wanted` queued bytes for OpenSSL; once all are read the buffer is let go.
    func takeInput(into destination: UnsafeMutablePointer<CChar>, upTo wanted: Int) -> Int {
        let count = min(wanted, inputPending)
        guard count > 0 else { return 0 }
        input!.withUnsafeReadableBytes { UnsafeMutableRawPointer(destination).copyMemory(from: $0.baseAddress!, byteCount: count) }
        input!.moveReaderIndex(forwardBy: count)  // the reader index only: no copy on write
        if input!.readableBytes == 0 { input = nil }
        return count
    }

    /// Appends records OpenSSL wrote.
    func appendOutput(_ bytes: UnsafeRawBufferPointer) {
        if output == nil { output = Self.allocator.buffer(capacity: bytes.count) }
        output!.writeBytes(bytes)
    }

    static let allocator = ByteBufferAllocator()
}
