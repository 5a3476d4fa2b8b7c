import Glibc
import Platform
import Testing

@Suite struct OpenFileLimitTests {
    /// A soft limit below the hard one is raised to it (the proxy needs two descriptors per
    /// connection; 1024 would stop it near 500).
    @Test func theSoftLimitIsRaisedToTheHardOne() {
        var limit = rlimit()
        #expect(getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0)
        guard limit.rlim_max > 2048 else { Issue.record("hard limit \(limit.rlim_max) too low to test"); return }
        // Just below the hard limit: other tests in this process keep opening files meanwhile.
        var lowered = limit
        lowered.rlim_cur = limit.rlim_max - 1
        #expect(setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lowered) == 0)
        let now = OpenFileLimit.raiseToHardLimit()
        var after = rlimit()
        _ = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &after)
        #expect(now == UInt64(limit.rlim_max) && after.rlim_cur == limit.rlim_max)
    }
}
