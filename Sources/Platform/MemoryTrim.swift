#if canImport(Glibc)
import Glibc
#endif

/// Gives freed heap memory back to the kernel (glibc's malloc_trim). A proxy frees each
/// connection's handshake buffers while its small long-lived objects stay, so the freed pages
/// sit between live ones where malloc never returns them by itself (trimming by hand a proxy
/// holding 200 idle bumped pairs gave back ~3 KiB a pair, one measurement).
public enum MemoryTrim {
    /// Looked up at run time: Glibc's module does not export malloc.h; nil elsewhere.
    private static let mallocTrim: (@convention(c) (Int) -> Int32)? = {
        #if canImport(Glibc)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "malloc_trim") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int) -> Int32).self)
        #else
        return nil
        #endif
    }()

    private static let mallopt: (@convention(c) (Int32, Int32) -> Int32)? = {
        #if canImport(Glibc)
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return nil }
        return unsafeBitCast(symbol, to: (@convention(c) (Int32, Int32) -> Int32).self)
        #else
        return nil
        #endif
    }()

    /// Lets up to `bytes` of freed memory stay in the heap instead of going back to the kernel on
    /// every free: a relay allocating and freeing its 64 KiB buffers on every read otherwise
    /// page-faults each fresh one in again. Allocations below `bytes` come from the heap (glibc
    /// maps larger ones, 128 KiB and up once any threshold is set, each faulted in anew) and
    /// freed memory stays until `releaseFreePages` gives it all back.
    public static func holdFreedPages(upTo bytes: Int32) {
        _ = mallopt?(-3, bytes)  // M_MMAP_THRESHOLD
        _ = mallopt?(-1, bytes)  // M_TRIM_THRESHOLD
    }

    /// Has threads that allocate from now on share the arenas that exist (called before any
    /// thread runs: the main one alone) instead of making one arena per thread. A bumped pair's
    /// objects are made on both event loops; with an arena each, every arena keeps its own
    /// freed pages pinned between them, and after bulk downloads an idle pair held 44–46 KiB
    /// against 35–36 with one arena (fresh pairs 37–38 against 35–36). The event loops' small
    /// allocations come from per-thread caches either way, so CPU figures did not move.
    public static func shareArenas() {
        _ = mallopt?(-8, 1)  // M_ARENA_MAX
    }

    /// Whether this platform can trim at all.
    public static var isAvailable: Bool { mallocTrim != nil }

    /// Returns free pages of every arena to the kernel; true if any memory was released.
    @discardableResult
    public static func releaseFreePages() -> Bool {
        (mallocTrim?(0) ?? 0) == 1
    }
}
