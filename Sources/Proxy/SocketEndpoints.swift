import Foundation
import NIOCore
import Policy
import Wire

/// NIO socket addresses to and from the facts' endpoints, as bytes both ways: NIO's `ipAddress`
/// formats its text with inet_ntop on every call, which the facts would only parse back.
extension FlowFacts.Endpoint {
    /// An IPv4-mapped IPv6 address (a dual-stack socket's IPv4 peer) comes out as IPv4.
    init?(_ socketAddress: SocketAddress) {
        switch socketAddress {
        case .v4(let v4):
            var raw = v4.address
            self.init(address: withUnsafeBytes(of: &raw.sin_addr) { Array($0) }, port: UInt16(bigEndian: raw.sin_port))
        case .v6(let v6):
            var raw = v6.address
            self.init(address: IPAddress.unmapped(withUnsafeBytes(of: &raw.sin6_addr) { Array($0) }), port: UInt16(bigEndian: raw.sin6_port))
        case .unixDomainSocket:
            return nil
        }
    }

    /// Nil unless the address is 4 or 16 bytes.
    var socketAddress: SocketAddress? { try? SocketAddress(packedIPAddress: ByteBuffer(bytes: address), port: Int(port)) }
}
