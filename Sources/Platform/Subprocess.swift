import Foundation

/// Runs an external tool (tpm2-tools, update-ca-certificates, certutil) and captures its output.
/// Secrets pass through pipes only, never through argv or temporary files.
public struct CommandResult: Sendable {
    public var status: Int32
    public var stdout: [UInt8]
    public var stderr: [UInt8]
    public var stderrText: String { String(decoding: stderr, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
    public var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
}

public struct CommandError: Error, CustomStringConvertible, Sendable {
    public var command: String
    public var reason: String
    public init(command: String, reason: String) { self.command = command; self.reason = reason }
    public var description: String { "\(command): \(reason)" }
}

public enum Subprocess {
    /// Finds `name` on PATH (plus the sbin directories, which a non-login root shell may lack).
    public static func which(_ name: String) -> String? {
        if name.contains("/") { return FileManager.default.isExecutableFile(atPath: name) ? name : nil }
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let dirs = path.split(separator: ":").map(String.init) + ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        return dirs.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    public static func run(_ tool: String, _ arguments: [String], stdin: [UInt8] = [], environment: [String: String] = [:], timeout: TimeInterval = 60) throws(CommandError) -> CommandResult {
        let display = ([tool] + arguments).joined(separator: " ")
        guard let executable = which(tool) else {
            throw CommandError(command: display, reason: "'\(tool)' is not installed (not found on PATH)")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        do { try process.run() } catch {
            throw CommandError(command: display, reason: "could not start: \(error)")
        }
        let collected = Collected()
        let group = DispatchGroup()
        let outHandle = output.fileHandleForReading, errHandle = errors.fileHandleForReading, inHandle = input.fileHandleForWriting
        DispatchQueue.global().async(group: group) { collected.setOut(outHandle.readDataToEndOfFile()) }
        DispatchQueue.global().async(group: group) { collected.setErr(errHandle.readDataToEndOfFile()) }
        DispatchQueue.global().async(group: group) {
            if !stdin.isEmpty { try? inHandle.write(contentsOf: stdin) }
            try? inHandle.close()
        }
        let timer = DispatchWorkItem { [process] in if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer)
        process.waitUntilExit()
        timer.cancel()
        group.wait()
        if process.terminationReason == .uncaughtSignal {
            throw CommandError(command: display, reason: "killed by signal \(process.terminationStatus) (timeout \(Int(timeout)) s?)")
        }
        return CommandResult(status: process.terminationStatus, stdout: collected.out, stderr: collected.err)
    }

    /// Like `run`, but a non-zero exit is an error carrying the tool's stderr.
    @discardableResult
    public static func check(_ tool: String, _ arguments: [String], stdin: [UInt8] = [], environment: [String: String] = [:], timeout: TimeInterval = 60) throws(CommandError) -> CommandResult {
        let result = try run(tool, arguments, stdin: stdin, environment: environment, timeout: timeout)
        guard result.status == 0 else {
            let detail = result.stderrText.isEmpty ? result.stdoutText.trimmingCharacters(in: .whitespacesAndNewlines) : result.stderrText
            throw CommandError(command: ([tool] + arguments).joined(separator: " "), reason: "exit \(result.status): \(detail)")
        }
        return result
    }
}

/// Output gathered by reader threads.
private final class Collected: @unchecked Sendable {
    private let lock = NSLock()
    private var _out: [UInt8] = []
    private var _err: [UInt8] = []
    func setOut(_ d: Data) { lock.withLock { _out = Array(d) } }
    func setErr(_ d: Data) { lock.withLock { _err = Array(d) } }
    var out: [UInt8] { lock.withLock { _out } }
    var err: [UInt8] { lock.withLock { _err } }
}
