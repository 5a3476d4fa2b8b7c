import ArgumentParser
import CA
import Foundation
import Store
import TLS

/// Options every command takes.
struct StateOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("State directory holding the sealed store (env LOUPE_STATE_DIR).", valueName: "dir"))
    var stateDir: String = ProcessInfo.processInfo.environment["LOUPE_STATE_DIR"] ?? "/var/lib/loupe"

    @Option(name: .customLong("tcti"), help: ArgumentHelp("TPM TCTI, e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321 (env LOUPE_TPM_TCTI).", valueName: "tcti"))
    var tctiOption: String?

    var tcti: String? { tctiOption ?? ProcessInfo.processInfo.environment["LOUPE_TPM_TCTI"] }
    var storeOptions: StoreOptions { StoreOptions(tcti: tcti) }

    func openStore() throws -> SealedStore {
        try SealedStore.open(stateDirectory: stateDir, options: storeOptions)
    }
}

/// Where the CA profile comes from.
struct ProfileOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("CA profile (default: root.toml in $LOUPE_CA_DIR, /etc/loupe/ca, /usr/share/loupe/ca or the checkout's ca/).", valueName: "file"))
    var profile: String?

    func load() throws -> CAProfile {
        if let profile { return try CAProfile.load(path: profile) }
        guard let dir = CAFiles.directory() else {
            printError("note: no CA profile found (ca/root.toml); using built-in defaults")
            return CAProfile()
        }
        return try CAProfile.load(path: "\(dir)/root.toml")
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}

/// Runs a command body; Loupe's own errors are printed as one clear line and exit 1.
func run(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let error as ExitCode {
        throw error
    } catch let error as CleanExit {
        throw error
    } catch {
        printError("loupe: error: \(error)")
        throw ExitCode(1)
    }
}

/// Writes to `path`, or stdout when nil or "-".
func emit(_ bytes: [UInt8], to path: String?, mode: mode_t = 0o644) throws {
    guard let path, path != "-" else {
        FileHandle.standardOutput.write(Data(bytes))
        return
    }
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
    guard fd >= 0 else { throw CAError("\(path): cannot write: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, bytes.count) }
    guard written == bytes.count else { throw CAError("\(path): short write") }
}

func printJSON(_ value: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
}

func iso(_ date: Date) -> String { ISO8601DateFormatter().string(from: date) }
