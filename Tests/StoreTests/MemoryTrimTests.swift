import Foundation
import Glibc
import Platform
import Testing

@Suite struct MemoryTrimTests {
    static func residentBytes() -> Int {
        let statm = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8)) ?? ""
        let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Freed blocks pinned between live ones stay resident until trimmed (a proxy's handshake
    /// buffers between its connections' small objects); the trim gives their pages back.
    @Test(.enabled(if: MemoryTrim.isAvailable, "glibc's malloc_trim is not available here"))
    func freedPagesBetweenLiveBlocksGoBack() {
        var live: [UnsafeMutableRawPointer] = []
        var freed: [UnsafeMutableRawPointer] = []
        for _ in 0..<5_000 {
            let small = malloc(512)!, big = malloc(16 * 1024)!
            memset(small, 1, 512)
            memset(big, 1, 16 * 1024)
            live.append(small)
            freed.append(big)
        }
        defer { live.forEach { free($0) } }
        freed.forEach { free($0) }
        let before = Self.residentBytes()
        MemoryTrim.releaseFreePages()
        let after = Self.residentBytes()
        // 5,000 × 16 KiB were freed; at least half of it must leave the resident set.
        #expect(before - after > 40 * 1024 * 1024, "resident \(before >> 20) MiB before the trim, \(after >> 20) MiB after")
    }
}
