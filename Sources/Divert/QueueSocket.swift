import CNetfilter
import Foundation
import Synchronization

/// One packet as the queue delivered it. `bytes` is copied out of the receive buffer.
public struct QueuedPacket: Sendable {
    public var queue: UInt16
    public var id: UInt32
    public var uid: UInt32?
    public var gid: UInt32?
    public var mark: UInt32?
    public var bytes: [UInt8]

    public init(queue: UInt16, id: UInt32, uid: UInt32?, gid: UInt32?, mark: UInt32?, bytes: [UInt8]) {
        self.queue = queue
        self.id = id
        self.uid = uid
        self.gid = gid
        self.mark = mark
        self.bytes = bytes
    }
}

public struct QueueError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

/// An NFQUEUE bound through libmnl: receives packets in batches and answers them with batched
/// verdicts (several verdict messages in one sendto).
public final class QueueSocket: @unchecked Sendable {
    // Used by one thread at a time (the worker that owns it).
    let socket: OpaquePointer
    public let queue: UInt16
    var receiveBuffer = [UInt8](repeating: 0, count: 0x10000 + 4096)
    var sendBuffer = [UInt8](repeating: 0, count: 64 * 64)
    var parsed = [loupe_nfq_packet](repeating: loupe_nfq_packet(), count: 64)

    /// - Parameters:
    ///   - copyRange: bytes of each packet to copy (headers for flows, whole DNS answers).
    ///   - failOpen: the kernel accepts instead of dropping when the queue is full.
    public init(queue: UInt16, copyRange: UInt32, failOpen: Bool, maxLength: UInt32 = 4096) throws {
        guard let socket = loupe_nfq_open() else {
            throw QueueError(description: "cannot open a netfilter netlink socket: \(String(cString: strerror(errno)))")
        }
        var flags = UInt32(LOUPE_NFQA_CFG_F_UID_GID)
        if failOpen { flags |= UInt32(LOUPE_NFQA_CFG_F_FAIL_OPEN) }
        let rc = loupe_nfq_configure(socket, queue, copyRange, flags, maxLength)
        if rc < 0 {
            loupe_nfq_close(socket)
            let reason = Int32(-rc) == EBUSY ? "queue \(queue) is bound by another process" : String(cString: strerror(Int32(-rc)))
            throw QueueError(description: "cannot bind NFQUEUE \(queue): \(reason)")
        }
        var size: Int32 = 8 << 20
        setsockopt(loupe_nfq_fd(socket), SOL_SOCKET, SO_RCVBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
        self.socket = socket
        self.queue = queue
    }

    deinit { loupe_nfq_close(socket) }

    /// Waits up to `timeoutMilliseconds` for packets, then drains what is ready (≤ 64).
    public func receive(timeoutMilliseconds: Int32) throws -> [QueuedPacket] {
        let fd = loupe_nfq_fd(socket)
        var pollfd = Glibc.pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let ready = poll(&pollfd, 1, timeoutMilliseconds)
        if ready < 0 && errno != EINTR { throw QueueError(description: "poll: \(String(cString: strerror(errno)))") }
        guard ready > 0 else { return [] }
        var packets: [QueuedPacket] = []
        while packets.count < 64 {
            let n = receiveBuffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { break }
                if errno == ENOBUFS { continue }   // packets were lost to a full buffer; fail-open covers them
                throw QueueError(description: "receive: \(String(cString: strerror(errno)))")
            }
            let count = receiveBuffer.withUnsafeBytes { buffer in
                parsed.withUnsafeMutableBufferPointer { loupe_nfq_parse(buffer.baseAddress, n, $0.baseAddress, Int32($0.count - packets.count)) }
            }
            for p in parsed.prefix(Int(count)) {
                let bytes = p.payload.map { Array(UnsafeBufferPointer(start: $0, count: Int(p.payload_len))) } ?? []
                packets.append(QueuedPacket(queue: p.queue, id: p.id, uid: p.has_uid != 0 ? p.uid : nil,
                                            gid: p.has_gid != 0 ? p.gid : nil, mark: p.has_mark != 0 ? p.mark : nil, bytes: bytes))
            }
        }
        return packets
    }

    /// Sends all verdicts in as few datagrams as fit.
    public func send(_ verdicts: [(id: UInt32, verdict: PacketVerdict)]) throws {
        var length = 0
        func flush() throws {
            guard length > 0 else { return }
            let sent = sendBuffer.withUnsafeBytes { loupe_nfq_send(socket, $0.baseAddress, length) }
            length = 0
            if sent < 0 { throw QueueError(description: "verdict: \(String(cString: strerror(Int32(-sent))))") }
        }
        func put(_ id: UInt32, _ verdict: PacketVerdict) -> Int {
            sendBuffer.withUnsafeMutableBytes {
                loupe_nfq_put_verdict($0.baseAddress! + length, $0.count - length, queue, id,
                                      UInt32(verdict.accept ? LOUPE_NF_ACCEPT : LOUPE_NF_DROP),
                                      verdict.mark == nil ? 0 : 1, verdict.mark ?? 0)
            }
        }
        for (id, verdict) in verdicts {
            var written = put(id, verdict)
            if written == 0 {   // the buffer is full: send it, start again at its head
                try flush()
                written = put(id, verdict)
            }
            length += written
        }
        try flush()
    }
}

/// Runs one queue on its own thread until stopped: packets in, `handle` decides, verdicts out.
public final class QueueWorker: Sendable {
    let socket: QueueSocket
    let handle: @Sendable ([QueuedPacket]) -> [PacketVerdict]
    let running = Atomic<Bool>(true)
    let finished = Mutex<Bool>(false)
    let onError: @Sendable (String) -> Void

    public init(socket: QueueSocket, onError: @escaping @Sendable (String) -> Void, handle: @escaping @Sendable ([QueuedPacket]) -> [PacketVerdict]) {
        self.socket = socket
        self.handle = handle
        self.onError = onError
    }

    public func start() {
        let thread = Thread { [self] in
            while running.load(ordering: .relaxed) {
                do {
                    let packets = try socket.receive(timeoutMilliseconds: 200)
                    guard !packets.isEmpty else { continue }
                    let verdicts = handle(packets)
                    try socket.send(zip(packets, verdicts).map { ($0.id, $1) })
                } catch {
                    onError("queue \(socket.queue): \(error)")
                    Thread.sleep(forTimeInterval: 0.05)
                }
            }
            finished.withLock { $0 = true }
        }
        thread.name = "loupe-queue-\(socket.queue)"
        thread.start()
    }

    /// Asks the thread to stop; it does within one receive timeout.
    public func stop() { running.store(false, ordering: .relaxed) }
}
