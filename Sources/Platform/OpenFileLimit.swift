#if canImport(Glibc)
import Glibc
#endif

/// The process's open-file limit. Every bumped connection holds two descriptors, and the
/// usual soft limit (1024, what systemd and login shells give) would cap a proxy at ~500
/// connections while the hard limit allows far more — so a server raises its own soft limit,
/// as nginx and Go's runtime do.
public enum OpenFileLimit {
    /// Raises the soft limit to the hard one; returns the soft limit now in force.
    @discardableResult
    public static func raiseToHardLimit() -> UInt64 {
        #if canImport(Glibc)
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
        #else
        return 0
        #endif
    }
}
