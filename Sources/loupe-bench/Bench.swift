// Loupe's benchmarks, printed as figures (never asserted by timed tests).
//
//   swift run -c release loupe-bench [mint] [--count N] [--root-key ec-p256|ec-p384|rsa-3072]
//
// mint: leaf minting in-process under a fresh per-host root (DESIGN.md targets: p50 ≤ 150 µs
// uncached, ≤ 5 µs cached), plus the single-flight cache's async path.
import CA
import Dispatch
import Foundation
import Store
import TLS

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
}

func report(_ name: String, _ samples: [UInt64]) {
    let sorted = samples.sorted()
    let mean = Double(samples.reduce(0, +)) / Double(samples.count) / 1000
    print(String(format: "%-34@ n=%-7d p50 %8.2f µs   p99 %8.2f µs   mean %8.2f µs", name as NSString, samples.count,
                 percentile(sorted, 0.5), percentile(sorted, 0.99), mean))
}

@inline(__always) func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

@main
struct Bench {
    static func main() async throws {
        var count = 2000
        var rootKey = KeyAlgorithm.ecP256
        var arguments = Array(CommandLine.arguments.dropFirst())
        while !arguments.isEmpty {
            let arg = arguments.removeFirst()
            switch arg {
            case "mint": break
            case "--count": count = Int(arguments.removeFirst()) ?? count
            case "--root-key": rootKey = KeyAlgorithm(rawValue: arguments.removeFirst()) ?? rootKey
            default:
                print("usage: loupe-bench [mint] [--count N] [--root-key ec-p256|ec-p384|rsa-3072]")
                Foundation.exit(2)
            }
        }

        let state = NSTemporaryDirectory() + "loupe-bench-\(getpid())"
        let store = try SealedStore.create(stateDirectory: state, provider: .hostKey)
        let authority = RootAuthority(store: store, profile: CAProfile())
        _ = try authority.initialize(algorithm: rootKey)
        let root = try authority.root()!
        let minter = try LeafMinter(root: root, profile: CAProfile())
        print("leaf minting under a \(root.certificate.keyDescription) root; leaf key \(minter.leafKey.typeDescription) (legacy EC_KEY), \(count) hosts")

        // Warm-up, then every mint is a new host name.
        for i in 0..<50 { _ = try minter.mint(.forNames(["warm\(i).bench.test"])) }
        var uncached: [UInt64] = []
        for i in 0..<count {
            let request = LeafRequest.forNames(["host\(i).bench.test"])
            let t0 = now()
            _ = try minter.mint(request)
            uncached.append(now() - t0)
        }
        report("mint, uncached (new host)", uncached)

        let cache = LeafCache(minter: minter, capacity: count + 100)
        let requests = (0..<count).map { LeafRequest.forNames(["host\($0).bench.test"]) }
        let firstFill = now()
        for request in requests { _ = try await cache.leaf(for: request) }
        print(String(format: "cache fill through leaf(for:)        %d leaves in %.1f ms", count, Double(now() - firstFill) / 1e6))

        var cached: [UInt64] = []
        for round in 0..<20 {
            for request in requests {
                let t0 = now()
                let hit = cache.cached(request)
                cached.append(now() - t0)
                precondition(hit != nil || round < 0)
            }
        }
        report("cached lookup (sync fast path)", cached)

        // Measured off the main actor, as the proxy calls it: no actor hop in the figure.
        let asyncCached = try await Task.detached {
            var samples: [UInt64] = []
            for request in requests {
                let t0 = now()
                _ = try await cache.leaf(for: request)
                samples.append(now() - t0)
            }
            return samples
        }.value
        report("cached lookup (async leaf(for:))", asyncCached)
        let stats = cache.statistics
        try? FileManager.default.removeItem(atPath: state)
        print("cache: \(stats.mints) mints, \(stats.hits) hits, \(stats.joined) joined, \(stats.failures) failures")

    }
}
