import NIOCore
import Policy
@testable import Proxy
import Testing

@Suite struct SocketEndpointsTests {
    @Test func addressesConvertToEndpointsAndBack() throws {
        let v4 = try SocketAddress(ipAddress: "10.0.0.2", port: 51514)
        let endpoint = try #require(FlowFacts.Endpoint(v4))
        #expect(endpoint == FlowFacts.Endpoint(address: [10, 0, 0, 2], port: 51514))
        #expect(endpoint.socketAddress == v4)

        let v6 = try SocketAddress(ipAddress: "2001:db8::1", port: 443)
        let six = try #require(FlowFacts.Endpoint(v6))
        #expect(six == FlowFacts.Endpoint(address: [0x20, 0x01, 0x0d, 0xb8] + Array(repeating: 0, count: 11) + [1], port: 443))
        #expect(six.socketAddress == v6)
        #expect(six.socketAddress?.port == 443)
    }

    @Test func aMappedIPv4PeerComesOutAsIPv4() throws {
        let mapped = try SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 8443)
        #expect(FlowFacts.Endpoint(mapped) == FlowFacts.Endpoint(address: [192, 0, 2, 7], port: 8443))
    }

    @Test func onlyIPAddressesHaveASocketAddress() throws {
        #expect(FlowFacts.Endpoint(address: [1, 2, 3], port: 1).socketAddress == nil)
        #expect(FlowFacts.Endpoint(address: [], port: 1).socketAddress == nil)
        #expect(FlowFacts.Endpoint(try SocketAddress(unixDomainSocketPath: "/tmp/x")) == nil)
    }
}
