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

    private let encoder = MetricsRecord.makeEncoder()

    /// Writes `record` as one line.
    public func write(_ record: MetricsRecord) {
        guard let data = try? encoder.encode(record) else { return }
        handle.write(data + Data("\n".utf8))
    }

    /// Every record of the file at `path`, in order.
    /// - Throws: the number of the first line that is not a record.
    public static func records(at path: String) throws -> [MetricsRecord] {
        let content = try Data(contentsOf: URL(fileURLWithPath: path))
        let decoder = MetricsRecord.makeDecoder()
        var records: [MetricsRecord] = []
        for (number, line) in content.split(separator: UInt8(ascii: "\n")).enumerated() where !line.isEmpty {
            do { records.append(try decoder.decode(MetricsRecord.self, from: Data(line))) } catch {
                throw TrainingError.io("\(path), line \(number + 1): not a metrics record (\(error))")
            }
        }
        return records
    }

    /// Whether a metrics file exists at `path` and holds anything: a run has written there.
    public static func hasRecords(at path: String) -> Bool {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.intValue ?? 0 > 0
    }

    /// Cuts the log before its first line past `globalStep` (a line whose `global_step` is larger), so
    /// that a run resumed from a checkpoint at `globalStep` continues a single, monotone history instead
    /// of appending a second one. Lines without a `global_step` before that point are kept. Returns how
    /// many lines were removed.
    @discardableResult
    public func truncate(afterGlobalStep globalStep: Int) throws -> Int {
        let content = (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()
        var offset = 0, cut: Int?
        var removed = 0
        for line in content.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            defer { offset += line.count + 1 }
            guard !line.isEmpty else { continue }
            let step = (try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any])?["global_step"] as? Int
            if cut == nil, let step, step > globalStep { cut = offset }
            if cut != nil { removed += 1 }
        }
        guard let cut else { return 0 }
        try handle.truncate(atOffset: UInt64(cut))
        handle.seekToEndOfFile()
        return removed
    }

    deinit { try? handle.close() }
}
