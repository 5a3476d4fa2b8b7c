import Foundation

/// Agent messages on stderr with sd-daemon priority prefixes (`<6>` info, `<4>` warning,
/// `<3>` error), which journald turns into levels and a terminal shows as plain lines.
public enum SystemLog {
    public static func info(_ message: String) { write(6, message) }
    public static func warning(_ message: String) { write(4, message) }
    public static func error(_ message: String) { write(3, message) }

    static func write(_ priority: Int, _ message: String) {
        FileHandle.standardError.write(Data("<\(priority)>loupe: \(message)\n".utf8))
    }
}
