import Glibc
@testable import Platform
import Testing

@Suite struct ListeningSocketsTests {
    /// Rows as the kernel writes them: only LISTEN (0A) rows count, addresses come out in
    /// network order (IPv4 one word, IPv6 four, each little-endian), the port in hex.
    @Test func listenRowsAreParsed() {
        let v4 = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
               1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
               2: 00000000:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
            """
        #expect(ListeningSockets.listeners(in: v4) == [
            .init(address: [127, 0, 0, 1], port: 8080, inode: 1),
            .init(address: [0, 0, 0, 0], port: 443, inode: 3),
        ])
        let v6 = """
              sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
               1: garbage
            """
        #expect(ListeningSockets.listeners(in: v6) == [.init(address: Array(repeating: 0, count: 15) + [1], port: 8080, inode: 4)])
    }

    /// A port this process listens on is in use, at its address and at the wildcard; the same
    /// port on another address is not; once closed, its socket is gone from the table (by
    /// inode: other tests running meanwhile may be given the same port).
    @Test func aLiveListenerIsSeen() throws {
        // Close-on-exec: a child another test spawns meanwhile would hold it open past close.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #expect(fd >= 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        #expect(bound)
        let port = Int(UInt16(bigEndian: address.sin_port))
        var info = stat()
        #expect(fstat(fd, &info) == 0)
        let inode = UInt64(info.st_ino)
        #expect(ListeningSockets.current().contains { $0.inode == inode && $0.port == port && $0.address == [127, 0, 0, 1] })
        #expect(ListeningSockets.inUse(port: port, address: [127, 0, 0, 1]))
        #expect(ListeningSockets.inUse(port: port, address: [0, 0, 0, 0]))
        #expect(ListeningSockets.inUse(port: port, address: Array(repeating: 0, count: 16)))
        #expect(!ListeningSockets.inUse(port: port, address: [127, 0, 0, 2]))
        close(fd)
        #expect(!ListeningSockets.current().contains { $0.inode == inode })
    }
}
