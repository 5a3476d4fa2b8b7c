import Foundation
import NIOCore
import NIOPosix
import Platform
import Wire

/// What the agent answers: lines to send, then close; or a stream that ends when the client goes.
public enum ControlReply: Sendable {
    case lines([String])
    /// Sends `initial`, then calls `start` with a writer; `stop` runs when the client closes.
    case stream(initial: [String], start: @Sendable (@escaping @Sendable (String) -> Void) -> UInt64, stop: @Sendable (UInt64) -> Void)
}

/// The unix control socket. Each client is identified by SO_PEERCRED before its request is read
/// further than one line; refusals are answered and logged, never acted on.
public final class ControlServer: Sendable {
    let path: String
    let group: MultiThreadedEventLoopGroup
    let serve: @Sendable (ControlRequest, ControlPeer) async -> ControlReply

    public init(path: String, group: MultiThreadedEventLoopGroup, serve: @escaping @Sendable (ControlRequest, ControlPeer) async -> ControlReply) {
        self.path = path
        self.group = group
        self.serve = serve
    }

    public func start() async throws -> Channel {
        let directory = PrivateFiles.directory(of: path)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        let serve = self.serve
        let channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ControlConnection(serve: serve))
                }
            }
            .bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).get()
        // Group `loupe` may connect (reads); everyone else is refused by the file mode already.
        if let gid = GroupMembership.loupeGroupID() {
            chown(path, 0, gid)
            chmod(path, 0o660)
        } else {
            chmod(path, 0o600)
        }
        return channel
    }
}

/// Resolves membership of the `loupe` group.
public enum GroupMembership {
    public static let name = "loupe"

    public static func loupeGroupID() -> gid_t? {
        var entry = group(), result: UnsafeMutablePointer<group>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getgrnam_r(name, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return nil }
        return entry.gr_gid
    }

    public static func isMember(uid: uid_t, gid: gid_t) -> Bool {
        guard let loupe = loupeGroupID() else { return false }
        if gid == loupe { return true }
        var entry = passwd(), result: UnsafeMutablePointer<passwd>?
        var buffer = [CChar](repeating: 0, count: 16_384)
        guard getpwuid_r(uid, &entry, &buffer, buffer.count, &result) == 0, result != nil else { return false }
        if entry.pw_gid == loupe { return true }
        var groups = [gid_t](repeating: 0, count: 256)
        var count = Int32(groups.count)
        guard getgrouplist(entry.pw_name, entry.pw_gid, &groups, &count) >= 0 else { return false }
        return groups.prefix(Int(count)).contains(loupe)
    }
}

/// `struct ucred` (Glibc hides it behind _GNU_SOURCE): same layout, three 32-bit fields.
struct PeerCredentials { var pid: Int32 = 0; var uid: UInt32 = 0; var gid: UInt32 = 0 }

final class ControlConnection: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let serve: @Sendable (ControlRequest, ControlPeer) async -> ControlReply
    var buffer: [UInt8] = []
    var answered = false
    /// The stream's output, once the request was a `flows --follow`.
    var follower: FollowerOutput?

    init(serve: @escaping @Sendable (ControlRequest, ControlPeer) async -> ControlReply) { self.serve = serve }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        var bytes = unwrapInboundIn(data)
        buffer += bytes.readBytes(length: bytes.readableBytes) ?? []
        guard let newline = buffer.firstIndex(of: 0x0A) else {
            if buffer.count > ControlRequest.maximumLength { refuse(context.channel, ControlRefusal("request longer than \(ControlRequest.maximumLength) bytes"), peer: nil) }
            return
        }
        answered = true
        let line = Array(buffer[..<newline])
        let channel = context.channel
        let loop = context.eventLoop
        let this = NIOLoopBound(self, eventLoop: loop)
        let credentials: EventLoopFuture<PeerCredentials>
        if let provider = channel as? SocketOptionProvider {
            credentials = provider.unsafeGetSocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(17))  // SO_PEERCRED
        } else {
            credentials = loop.makeFailedFuture(AgentError("no peer credentials"))
        }
        credentials.whenComplete { result in
            guard case .success(let cred) = result else {
                this.value.refuse(channel, ControlRefusal("cannot read the peer's credentials"), peer: nil)
                return
            }
            let peer = ControlPeer(pid: cred.pid, uid: cred.uid, gid: cred.gid, inLoupeGroup: GroupMembership.isMember(uid: cred.uid, gid: cred.gid))
            let request: ControlRequest
            do { request = try ControlRequest.parse(line) } catch {
                this.value.refuse(channel, error as? ControlRefusal ?? ControlRefusal("\(error)"), peer: peer)
                return
            }
            if let refusal = peer.refusal(for: request.command) {
                this.value.refuse(channel, refusal, peer: peer)
                return
            }
            let serve = this.value.serve
            Task {
                let reply = await serve(request, peer)
                loop.execute { this.value.send(reply, on: channel) }
            }
        }
    }

    func refuse(_ channel: Channel, _ refusal: ControlRefusal, peer: ControlPeer?) {
        answered = true
        let who = peer.map { "uid \($0.uid) pid \($0.pid)" } ?? "unknown peer"
        SystemLog.warning("control: refused \(who): \(refusal)")
        write([refusal.headerLine], on: channel, close: true)
    }

    func send(_ reply: ControlReply, on channel: Channel) {
        switch reply {
        case .lines(let lines):
            write([ControlHeader.ok] + lines, on: channel, close: true)
        case .stream(let initial, let start, let stop):
            write([ControlHeader.ok] + initial, on: channel, close: false)
            let loop = channel.eventLoop
            let output = FollowerOutput(channel: channel)
            follower = output  // told when the socket drains (channelWritabilityChanged)
            let bound = NIOLoopBound(output, eventLoop: loop)
            let id = start { line in
                loop.execute { bound.value.send(line) }
            }
            channel.closeFuture.whenComplete { _ in stop(id) }
        }
    }

    func write(_ lines: [String], on channel: Channel, close: Bool) {
        let text = lines.map { $0 + "\n" }.joined()
        let done = channel.writeAndFlush(channel.allocator.buffer(string: text))
        if close { done.whenComplete { _ in channel.close(promise: nil) } }
    }

    /// A follower's socket took what was queued: the count of the lines it missed goes now.
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { follower?.sendNotice() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) { context.close(promise: nil) }
}

/// One `flows --follow` client's lines, on its channel's event loop. Past the channel's
/// high-water mark — a client that stopped reading: a paused pager, a full pipe — lines are
/// dropped and counted, and the count goes out as a line of its own once its socket drains: the
/// agent never holds more than the mark for a reader.
final class FollowerOutput {
    let channel: Channel
    private var dropped = 0

    init(channel: Channel) { self.channel = channel }

    func send(_ line: String) {
        guard channel.isWritable else {
            dropped += 1
            return
        }
        channel.writeAndFlush(channel.allocator.buffer(string: notice() + line + "\n"), promise: nil)
    }

    /// The count of missed lines, if any, as soon as the client reads again.
    func sendNotice() {
        let text = notice()
        if !text.isEmpty { channel.writeAndFlush(channel.allocator.buffer(string: text), promise: nil) }
    }

    /// The line that counts the lines dropped since the last one ("" when none were).
    private func notice() -> String {
        guard dropped > 0 else { return "" }
        var line = JSONLine(time: Date())
        line.add("event", "follow_overflow")
        line.add("dropped_lines", dropped)
        line.add("reason", "this follower was not reading fast enough; \(dropped) lines were not sent to it")
        dropped = 0
        return line.line + "\n"
    }
}
