import Foundation
import Synchronization
import TLS

/// Minted leaves by (request, root), with single-flight: concurrent requests for a leaf not yet
/// cached wait for the one mint already under way instead of signing again. Bounded; entries
/// are dropped a day before their leaf expires so a served leaf is always valid.
public final class LeafCache: Sendable {
    public let minter: LeafMinter
    private let capacity: Int
    private let state: Mutex<State>

    public struct Statistics: Sendable, Equatable {
        public var hits = 0
        public var misses = 0
        /// Requests that waited for another caller's mint.
        public var joined = 0
        public var mints = 0
        public var failures = 0
    }

    private struct Key: Hashable {
        var request: LeafRequest
        var root: String
    }

    private enum Entry {
        case ready(Leaf, refreshAfter: Date)
        case minting([CheckedContinuation<Leaf, any Error>])
    }

    private struct State {
        var entries: [Key: Entry] = [:]
        /// Insertion order, for eviction; may hold keys already removed.
        var order: [Key] = []
        var statistics = Statistics()
    }

    public init(minter: LeafMinter, capacity: Int = 10_000) {
        self.minter = minter
        self.capacity = max(1, capacity)
        self.state = Mutex(State())
    }

    public var statistics: Statistics { state.withLock { $0.statistics } }
    public var count: Int { state.withLock { $0.entries.count } }

    private func key(_ request: LeafRequest) -> Key { Key(request: request, root: minter.root.certificateRef) }

    /// The cached leaf, without minting (the proxy's synchronous fast path).
    public func cached(_ request: LeafRequest, now: Date = Date()) -> Leaf? {
        let key = key(request)
        return state.withLock { state in
            if case .ready(let leaf, let refresh)? = state.entries[key], refresh > now {
                state.statistics.hits += 1
                return leaf
            }
            return nil
        }
    }

    /// The leaf for `request`: cached, joined to a mint in flight, or minted here.
    public func leaf(for request: LeafRequest, now: Date = Date()) async throws -> Leaf {
        // Hits never suspend: a continuation would cost a trip through the executor.
        if let hit = cached(request, now: now) { return hit }
        let key = key(request)
        enum Step { case hit(Leaf), wait, mint }
        // Decide under the lock, but suspend outside it: the continuation is registered in the
        // same critical section that saw the mint in flight, so no completion can be missed.
        return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Leaf, any Error>) in
            let step: Step = state.withLock { state in
                switch state.entries[key] {
                case .ready(let leaf, let refresh)? where refresh > now:
                    state.statistics.hits += 1
                    return .hit(leaf)
                case .minting(var waiters)?:
                    waiters.append(continuation)
                    state.entries[key] = .minting(waiters)
                    state.statistics.joined += 1
                    return .wait
                default:
                    state.entries[key] = .minting([continuation])
                    state.order.append(key)
                    state.statistics.misses += 1
                    return .mint
                }
            }
            switch step {
            case .hit(let leaf): continuation.resume(returning: leaf)
            case .wait: break
            case .mint: finishMint(key, request, now: now)
            }
        }
    }

    private func finishMint(_ key: Key, _ request: LeafRequest, now: Date) {
        let result = Result { try minter.mint(request, now: now) }
        let waiters: [CheckedContinuation<Leaf, any Error>] = state.withLock { state in
            guard case .minting(let waiters)? = state.entries[key] else { return [] }
            switch result {
            case .success(let leaf):
                state.statistics.mints += 1
                state.entries[key] = .ready(leaf, refreshAfter: leaf.certificate.notAfter.addingTimeInterval(-86_400))
                evict(&state)
            case .failure:
                // Failures are not cached: the next request tries again.
                state.statistics.failures += 1
                state.entries[key] = nil
            }
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    private func evict(_ state: inout State) {
        while state.entries.count > capacity, !state.order.isEmpty {
            let oldest = state.order.removeFirst()
            if case .ready? = state.entries[oldest] { state.entries[oldest] = nil }
        }
        // Drop keys that no longer have entries once they dominate the order list.
        if state.order.count > 2 * capacity { state.order.removeAll { state.entries[$0] == nil } }
    }
}
