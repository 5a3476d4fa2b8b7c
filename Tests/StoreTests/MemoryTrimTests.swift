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

    /// glibc's arenas, counted from malloc_info's report (one `<heap nr=` each).
    static func arenaCount() -> Int {
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_info") else { return -1 }
        let mallocInfo = unsafeBitCast(symbol, to: (@convention(c) (Int32, UnsafeMutablePointer<FILE>?) -> Int32).self)
        var buffer: UnsafeMutablePointer<CChar>?
        var size = 0
        guard let stream = open_memstream(&buffer, &size) else { return -1 }
        _ = mallocInfo(0, stream)
        fclose(stream)
        defer { free(buffer) }
        guard let buffer else { return -1 }
        return String(cString: buffer).components(separatedBy: "<heap nr=").count - 1
    }

    /// Starts `threads` more threads than there are arenas, all allocating at once, and gives
    /// how many arenas there are while they hold their blocks, against before.
    static func arenasGrowingWithThreads(extra: Int) -> (before: Int, during: Int) {
        let before = arenaCount()
        let threads = before + extra
        let allocated = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        for _ in 0..<threads {
            Thread {
                let block = malloc(4096)!
                memset(block, 1, 4096)
                allocated.signal()
                release.wait()
                free(block)
            }.start()
        }
        for _ in 0..<threads { allocated.wait() }
        let during = arenaCount()
        for _ in 0..<threads { release.signal() }
        return (before, during)
    }

    /// Threads started after `shareArenas` take an arena that exists, where more threads
    /// allocating at once than there are arenas would otherwise make new ones (a proxy's event
    /// loops each pinning freed pages in an arena of its own). Each case runs in a process of
    /// its own, as `loupe` calls it first thing: glibc fixes its arena limit for good once a
    /// process has made more than eight arenas, as a test process full of event loops has.
    @Test(.enabled(if: MemoryTrim.isAvailable, "glibc's malloc is not available here"))
    func threadsStartedAfterSharingMakeNoArenas() async {
        await #expect(processExitsWith: .success) {
            MemoryTrim.shareArenas()
            let (before, during) = MemoryTrimTests.arenasGrowingWithThreads(extra: 4)
            exit(before > 0 && during == before ? EXIT_SUCCESS : EXIT_FAILURE)
        }
        // Without it the same threads make arenas: what the case above would otherwise see.
        await #expect(processExitsWith: .success) {
            let (before, during) = MemoryTrimTests.arenasGrowingWithThreads(extra: 4)
            exit(during > before ? EXIT_SUCCESS : EXIT_FAILURE)
        }
    }
}
