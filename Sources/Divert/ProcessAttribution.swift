import CNetfilter
import Foundation
import Platform
import Policy
import Synchronization
import Wire

/// Parses /proc/net/{tcp,tcp6,udp,udp6}: which socket inode owns a local endpoint. Pure.
public enum ProcNetTable {
    /// The inode of the socket bound to `local` (exactly, or on the wildcard address).
    public static func inode(in text: Substring, local: FlowFacts.Endpoint) -> UInt64? {
        var wildcard: UInt64?
        for line in text.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 9, let (address, port) = ProcNet.endpoint(fields[1]), port == local.port,
                  let inode = UInt64(fields[9]), inode != 0 else { continue }
            if address == local.address { return inode }
            if address.allSatisfy({ $0 == 0 }) { wildcard = wildcard ?? inode }
            // An IPv4 flow from a dual-stack socket shows as ::ffff:a.b.c.d.
            if address.count == 16, local.address.count == 4, Array(address[12...]) == local.address,
               address[10] == 0xFF, address[11] == 0xFF { return inode }
        }
        return wildcard
    }

    /// The same, read from `procRoot`/net/{tcp,tcp6} or {udp,udp6} (the fallback when sock_diag
    /// cannot answer).
    public static func inode(proto: FlowFacts.Proto, local: FlowFacts.Endpoint, procRoot: String = "/proc") -> UInt64? {
        for table in proto == .tcp ? ["tcp", "tcp6"] : ["udp", "udp6"] {
            guard let text = ProcNet.table(table, procRoot: procRoot) else { continue }
            if let found = inode(in: text[...], local: local) { return found }
        }
        return nil
    }
}

/// The socket owning a flow, by its exact 5-tuple (sock_diag netlink): ~10 µs, where reading
/// /proc/net/tcp took 30–37.5 ms with 4,001 sockets open (`loupe-bench flows`).
public enum SocketDiag {
    /// The inode of the local socket `src` → `dst` (`src` the local end); nil if none (or if
    /// the kernel has no sock_diag for the protocol — the caller falls back to /proc/net).
    public static func inode(proto: FlowFacts.Proto, src: FlowFacts.Endpoint, dst: FlowFacts.Endpoint) -> UInt64? {
        guard src.address.count == dst.address.count, src.address.count == 4 || src.address.count == 16 else { return nil }
        var inode: UInt64 = 0
        let family = src.address.count == 4 ? AF_INET : AF_INET6
        let rc = src.address.withUnsafeBufferPointer { s in
            dst.address.withUnsafeBufferPointer { d in
                loupe_sock_diag_lookup(family, Int32(proto == .tcp ? IPPROTO_TCP : IPPROTO_UDP), s.baseAddress, src.port, d.baseAddress, dst.port, &inode)
            }
        }
        return rc == 0 && inode != 0 ? inode : nil
    }

    /// Whether this kernel answers sock_diag for TCP and UDP: a listening TCP socket and a bound
    /// UDP one of our own, looked up. Without it, lookups read /proc/net instead.
    public static func works() -> Bool {
        func probe(_ type: Int32, _ proto: FlowFacts.Proto) -> Bool {
            let fd = socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { return false }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
            }
            guard bound, proto == .udp || listen(fd, 1) == 0 else { return false }
            let local = FlowFacts.Endpoint(address: [127, 0, 0, 1], port: UInt16(bigEndian: address.sin_port))
            var info = stat()
            guard fstat(fd, &info) == 0 else { return false }
            let peer = FlowFacts.Endpoint(address: proto == .tcp ? [0, 0, 0, 0] : [127, 0, 0, 1], port: proto == .tcp ? 0 : 9)
            return inode(proto: proto, src: local, dst: peer) == UInt64(info.st_ino)
        }
        return probe(Int32(SOCK_STREAM.rawValue), .tcp) && probe(Int32(SOCK_DGRAM.rawValue), .udp)
    }
}

/// Best-effort pid and executable of the local socket that sent a flow's first packet:
/// sock_diag (else /proc/net) gives the socket's inode, a scan of /proc/PID/fd the process. On
/// a miss the map is extended by a scan that stops at the socket's process, at most every
/// `rescanInterval`.
public final class ProcessAttribution: Sendable {
    struct State {
        var pidByInode: [UInt64: Int32] = [:]
        var lastScan: Double = 0
    }
    let state = Mutex(State())
    let procRoot: String
    let rescanInterval: Double
    /// Sockets are found by sock_diag when the kernel answers it (probed once): then a miss
    /// means the socket is gone, and no /proc/net table — milliseconds to read on a busy
    /// host, on the queue's thread — is read for it.
    let sockDiag: Bool

    public init(procRoot: String = "/proc", rescanInterval: Double = 0.002) {
        self.procRoot = procRoot
        self.rescanInterval = rescanInterval
        sockDiag = procRoot == "/proc" && SocketDiag.works()
    }

    public func resolve(_ facts: FlowFacts) -> (pid: Int32, exe: String?)? {
        guard let src = facts.src else { return nil }
        let found = sockDiag ? facts.dst.flatMap { SocketDiag.inode(proto: facts.proto, src: src, dst: $0) }
            : ProcNetTable.inode(proto: facts.proto, local: src, procRoot: procRoot)
        guard let inode = found else { return nil }
        let now = Date().timeIntervalSince1970
        var pid = state.withLock { $0.pidByInode[inode] }
        if pid == nil {
            let due = state.withLock { now - $0.lastScan >= rescanInterval }
            if due {
                let seen = scan(for: inode, uid: facts.uid)
                state.withLock { s in
                    // What earlier scans saw stays (they stopped early); the map starts over
                    // when it has grown past what a host holds open.
                    if s.pidByInode.count + seen.count > 262_144 { s.pidByInode = [:] }
                    s.pidByInode.merge(seen) { _, new in new }
                    s.lastScan = now
                }
                pid = seen[inode]
            }
        }
        guard let pid else { return nil }
        let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "\(procRoot)/\(pid)/exe")
        return (pid, exe)
    }

    /// Socket inodes → pid, from /proc/PID/fd, walking the processes of `uid` (the socket's
    /// owner, from the queue) first and the newest first, and stopping at the one holding
    /// `target`: a new flow's socket usually belongs to a recent process of its own user, and a
    /// whole scan of a busy host's fds costs milliseconds.
    func scan(for target: UInt64? = nil, uid: UInt32? = nil) -> [UInt64: Int32] {
        var map: [UInt64: Int32] = [:]
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: procRoot) else { return map }
        var owned: [Int32] = [], others: [Int32] = []
        for entry in entries {
            guard let pid = Int32(entry) else { continue }
            var info = stat()
            if let uid, stat("\(procRoot)/\(entry)", &info) == 0, info.st_uid == uid { owned.append(pid) } else { others.append(pid) }
        }
        var buffer = [CChar](repeating: 0, count: 64)
        for pid in owned.sorted(by: >) + others.sorted(by: >) {
            let fdDir = "\(procRoot)/\(pid)/fd"
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: fdDir) else { continue }
            var holds = false
            for fd in fds {
                let n = readlink("\(fdDir)/\(fd)", &buffer, buffer.count - 1)
                guard n > 9 else { continue }
                let text = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                guard text.hasPrefix("socket:["), let inode = UInt64(text.dropFirst(8).dropLast()) else { continue }
                map[inode] = pid
                if inode == target { holds = true }
            }
            if holds { break }
        }
        return map
    }
}
