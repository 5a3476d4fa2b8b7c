import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// File operations for secrets: owner-only permissions checked before use, and writes that are
/// atomic and durable (temp file, fsync, rename, fsync of the directory), so a crash leaves
/// either the old or the new file — never a torn one.
public struct FileError: Error, CustomStringConvertible, Sendable, Equatable {
    public var path: String
    public var reason: String
    public init(path: String, reason: String) { self.path = path; self.reason = reason }
    public var description: String { "\(path): \(reason)" }
}

public enum PrivateFiles {
    static func errnoText() -> String { String(cString: strerror(errno)) }

    /// The directory holding `path`: "." for a bare name, "/" at the top. (NSString's
    /// deletingLastPathComponent traps on a bare relative name in this toolchain's Foundation.)
    public static func directory(of path: String) -> String {
        var p = Substring(path)
        while p.count > 1, p.hasSuffix("/") { p.removeLast() }
        guard let slash = p.lastIndex(of: "/") else { return "." }
        if slash == p.startIndex { return "/" }
        return String(p[..<slash])
    }

    /// The last component of `path`.
    public static func fileName(of path: String) -> String {
        var p = Substring(path)
        while p.count > 1, p.hasSuffix("/") { p.removeLast() }
        return String(p.split(separator: "/").last ?? p)
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// Creates `path` as a directory with mode 0700 if it does not exist (parents too, 0700).
    public static func makeDirectory(_ path: String) throws(FileError) {
        if exists(path) { return }
        let parent = directory(of: path)
        if parent != path, !exists(parent) { try makeDirectory(parent) }
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw FileError(path: path, reason: "cannot create directory: \(errnoText())")
        }
    }

    /// Refuses anything that group or others can read or write, or that another user owns.
    /// `maxMode` is the loosest mode accepted (0o700 for directories, 0o600 for files).
    public static func checkPrivate(_ path: String, maxMode: mode_t, directory: Bool) throws(FileError) {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw FileError(path: path, reason: "cannot stat: \(errnoText())") }
        let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
        let isRegular = (st.st_mode & S_IFMT) == S_IFREG
        if directory && !isDirectory { throw FileError(path: path, reason: "is not a directory") }
        if !directory && !isRegular { throw FileError(path: path, reason: "is not a regular file (links are refused)") }
        let mode = st.st_mode & 0o7777
        if mode & ~maxMode != 0 {
            throw FileError(path: path, reason: String(format: "has mode %04o, looser than %04o: refusing to use it (fix: chmod %o %@)", mode, maxMode, maxMode, path))
        }
        if st.st_uid != geteuid() {
            throw FileError(path: path, reason: "is owned by uid \(st.st_uid), not by uid \(geteuid()) running Loupe: refusing to use it")
        }
    }

    public static func read(_ path: String) throws(FileError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw FileError(path: path, reason: "cannot open: \(errnoText())") }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = Glibc.read(fd, &buffer, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileError(path: path, reason: "read failed: \(errnoText())")
            }
            if n == 0 { return out }
            out.append(contentsOf: buffer[0..<n])
        }
    }

    /// Replaces `path` atomically with `bytes`, created with `mode` (owner-only).
    public static func atomicWrite(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(FileError) {
        let directory = directory(of: path)
        let name = fileName(of: path)
        let temp = "\(directory)/.tmp-\(name)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw FileError(path: temp, reason: "cannot create: \(errnoText())") }
        var ok = false
        defer { if !ok { unlink(temp) } }
        do {
            defer { close(fd) }
            // open() applies the umask; set the exact mode explicitly.
            guard fchmod(fd, mode) == 0 else { throw FileError(path: temp, reason: "chmod failed: \(errnoText())") }
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, bytes.count - offset) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FileError(path: temp, reason: "write failed: \(errnoText())")
                }
                offset += n
            }
            guard fsync(fd) == 0 else { throw FileError(path: temp, reason: "fsync failed: \(errnoText())") }
        }
        guard rename(temp, path) == 0 else { throw FileError(path: path, reason: "rename failed: \(errnoText())") }
        ok = true
        try syncDirectory(directory)
    }

    /// Creates `path` only if it does not exist yet (O_EXCL), durably. Never overwrites.
    public static func createNew(_ path: String, _ bytes: [UInt8], mode: mode_t) throws(FileError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw FileError(path: path, reason: "cannot create: \(errnoText())") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, bytes.count) }
        guard written == bytes.count, fsync(fd) == 0, fchmod(fd, mode) == 0 else {
            throw FileError(path: path, reason: "write failed: \(errnoText())")
        }
        try syncDirectory(directory(of: path))
    }

    public static func syncDirectory(_ directory: String) throws(FileError) {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw FileError(path: directory, reason: "cannot open directory: \(errnoText())") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw FileError(path: directory, reason: "fsync failed: \(errnoText())") }
    }

    /// Names in `directory`, sorted.
    public static func list(_ directory: String) throws(FileError) -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        } catch {
            throw FileError(path: directory, reason: "cannot list: \(error.localizedDescription)")
        }
    }

    /// Runs `body` holding an exclusive advisory lock on `lockPath` (serialises writers across
    /// processes: the agent and a CLI command may both write the store).
    public static func withLock<T>(_ lockPath: String, _ body: () throws -> T) throws -> T {
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw FileError(path: lockPath, reason: "cannot open lock: \(errnoText())") }
        defer { close(fd) }
        while flock(fd, LOCK_EX) != 0 {
            if errno != EINTR { throw FileError(path: lockPath, reason: "flock failed: \(errnoText())") }
        }
        return try body()
    }
}
