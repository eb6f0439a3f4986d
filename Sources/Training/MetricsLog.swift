import Foundation

/// Appends one JSON object per line to a file (`metrics.jsonl`), flushed after every line so that a
/// killed run keeps everything it logged.
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String

    public init(path: String) throws {
        self.path = path
        if !FileManager.default.fileExists(atPath: path) {
            guard FileManager.default.createFile(atPath: path, contents: nil) else {
                throw TrainingError.io("cannot create \(path)")
            }
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw TrainingError.io("cannot open \(path)") }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    /// Writes `fields` as one line (keys sorted).
    public func write(_ fields: [String: any Sendable]) {
        guard let data = try? JSONSerialization.data(withJSONObject: fields.mapValues { Self.jsonValue($0) },
                                                     options: [.sortedKeys]) else { return }
        handle.write(data + Data("\n".utf8))
    }

    private static func jsonValue(_ v: any Sendable) -> Any {
        switch v {
        case let d as Double: return d.isFinite ? d : String(d)
        case let f as Float: return f.isFinite ? Double(f) : String(f)
        default: return v
        }
    }

    deinit { try? handle.close() }
}
