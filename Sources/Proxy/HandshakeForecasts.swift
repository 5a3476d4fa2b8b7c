import CA
import Synchronization
import TLS
import Wire

/// How the client-facing handshake of the last bumped connection to an upstream went — the leaf
/// served, the ALPN and TLS ceiling the upstream set — by the upstream leg's resumption key
/// (name, address, offer, identity; the offer mirrors the client's suites and schemes, so the
/// leaf key it can take too). With a forecast, the next connection's client-facing
/// handshake is worked out while the upstream's answer is on its way, and sent only once the
/// upstream is verified and asked for exactly the same (ConnectionMachine). Shared by a proxy's
/// connections; bounded, the oldest forecast going first.
public final class HandshakeForecasts: Sendable {
    public struct Forecast: Sendable {
        public let leaf: Leaf
        public let alpn: [String]
        public let maximum: TLSVersion?
    }

    public struct Statistics: Sendable, Equatable {
        /// Handshakes worked out ahead and sent as they were.
        public var used = 0
        /// …and thrown away unsent: the upstream failed, or asked for something else.
        public var discarded = 0
    }

    private struct State {
        var forecasts: BoundedMap<String, Forecast>
        var statistics = Statistics()
    }

    private let state: Mutex<State>

    /// A forecast holds its leaf (certificate and key, ~3 KiB): 4,096 upstreams at most.
    public init(capacity: Int = 4_096) {
        state = Mutex(State(forecasts: BoundedMap(capacity: capacity)))
    }

    public var statistics: Statistics { state.withLock { $0.statistics } }

    func forecast(for key: String) -> Forecast? { state.withLock { $0.forecasts[key] } }

    func record(leaf: Leaf, alpn: [String], maximum: TLSVersion?, for key: String) {
        let forecast = Forecast(leaf: leaf, alpn: alpn, maximum: maximum)
        state.withLock { $0.forecasts.insert(forecast, for: key) }
    }

    func count(used: Bool) {
        state.withLock { if used { $0.statistics.used += 1 } else { $0.statistics.discarded += 1 } }
    }
}
