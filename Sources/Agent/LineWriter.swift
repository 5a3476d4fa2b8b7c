import Foundation
import Synchronization
import Wire

/// Appends lines to a file or stdout from a thread of its own. Callers (event loops, queue
/// threads) only copy the line into a buffer: a slow or stuck reader (a terminal, a full pipe,
/// a slow disk) never holds up traffic, and one write() carries every line queued meanwhile —
/// at most one write every 2 ms.
/// Past `limit` bytes waiting, lines are dropped and counted; the count is written as a line of
/// its own once the file takes bytes again.
public final class LineWriter: Sendable {
    public static let defaultLimit = 8 << 20

    private struct Pending {
        var bytes: [UInt8] = []
        var dropped = 0
        var flushed: [DispatchSemaphore] = []
        /// A file opened by `reopen`, for the writer to switch to after this batch.
        var replacement: Int32?
    }

    private let pending = Mutex(Pending())
    /// Every line lost so far (over the limit, or refused by the file), for metrics.
    private let lostTotal = Atomic<Int>(0)
    private let wake = DispatchSemaphore(value: 0)
    /// Only the writer thread uses it (and switches it).
    private nonisolated(unsafe) var fd: Int32
    private let limit: Int
    /// The file's path, for `reopen`; nil for stdout or a given descriptor.
    private let path: String?

    /// "-" is stdout; a file is opened for appending (0600 when created).
    public convenience init(path: String, limit: Int = LineWriter.defaultLimit) throws {
        if path == "-" {
            self.init(fd: STDOUT_FILENO, limit: limit)
            return
        }
        self.init(fd: try Self.open(path), limit: limit, path: path)
    }

    /// Writes to `fd`, which stays open for the life of the process.
    public init(fd: Int32, limit: Int = LineWriter.defaultLimit, path: String? = nil) {
        self.fd = fd
        self.limit = limit
        self.path = path
        Thread.detachNewThread { [self] in run() }
    }

    private static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw AgentError("\(path): cannot open the flow log: \(String(cString: strerror(errno)))") }
        return fd
    }

    /// Opens the file's path again (after logrotate moved it away): lines queued so far go to
    /// the old file, later ones to the new. Nothing to do for stdout.
    public func reopen() throws {
        guard let path else { return }
        let fresh = try Self.open(path)
        let done = DispatchSemaphore(value: 0)
        pending.withLock { p in
            if let unused = p.replacement { close(unused) }
            p.replacement = fresh
            p.flushed.append(done)
        }
        wake.signal()
        done.wait()
    }

    /// Lines lost since the writer started: dropped past the limit or refused by the file (each
    /// loss is also reported in the file once it takes lines again).
    public var lostLines: Int { lostTotal.load(ordering: .relaxed) }

    /// Queues `line` (a newline is added). Never blocks on the file.
    public func write(_ line: String) {
        let first = pending.withLock { p -> Bool in
            guard p.bytes.count + line.utf8.count < limit else {
                p.dropped += 1
                lostTotal.add(1, ordering: .relaxed)
                return false
            }
            let wasEmpty = p.bytes.isEmpty
            p.bytes.append(contentsOf: line.utf8)
            p.bytes.append(0x0A)
            return wasEmpty
        }
        // One wake-up per batch: the writer takes everything queued when it gets to it.
        if first { wake.signal() }
    }

    /// Returns once every line queued before the call is written (or found unwritable), or
    /// after `seconds` if given — on the way out, a reader that takes nothing must not keep the
    /// process from ending.
    public func flush(seconds: Double? = nil) {
        let done = DispatchSemaphore(value: 0)
        pending.withLock { $0.flushed.append(done) }
        wake.signal()
        if let seconds { _ = done.wait(timeout: .now() + seconds) } else { done.wait() }
    }

    private func run() {
        while true {
            wake.wait()
            let (batch, dropped, flushed, replacement) = pending.withLock { p in
                defer { p = Pending() }
                return (p.bytes, p.dropped, p.flushed, p.replacement)
            }
            var lost = dropped
            if lost > 0 {
                var line = JSONLine(time: Date())
                line.add("event", "flow_log_overflow")
                line.add("dropped_lines", lost)
                line.add("reason", "the flow log was not taking lines fast enough; \(lost) were dropped")
                if writeAll(Array((line.line + "\n").utf8)) { lost = 0 }
            }
            if !batch.isEmpty, !writeAll(batch) {
                let refused = batch.count(where: { $0 == 0x0A })
                lost += refused
                lostTotal.add(refused, ordering: .relaxed)
            }
            // Lines that could not be written are reported with the next overflow line.
            if lost > 0 { pending.withLock { $0.dropped += lost } }
            if let replacement {
                close(fd)
                fd = replacement
            }
            for waiter in flushed { waiter.signal() }
            // Lines arriving meanwhile gather into the next batch, and their callers find the
            // writer busy rather than waiting: no wake-up (a futex call and a context switch
            // on a busy event loop) per line. A line waits at most this long.
            usleep(Self.gatherMicroseconds)
        }
    }

    /// How long the writer lets lines gather after each write.
    static let gatherMicroseconds: UInt32 = 2_000

    /// The whole buffer, across partial writes; false if the file refuses it (EPIPE, ENOSPC…).
    private func writeAll(_ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n > 0 { offset += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && errno == EAGAIN {  // a non-blocking stdout: wait until it drains
                    var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&poller, 1, 100)
                    continue
                }
                return false
            }
            return true
        }
    }
}
