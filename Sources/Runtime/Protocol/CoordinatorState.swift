import Foundation
import NN
import Training

/// The coordinator's part of a cohort checkpoint, `OUTPUT/coordinator/state-<step>.json`: where the run
/// stands and what it has measured. Written atomically with a CRC-32 of its JSON on a second line; the
/// newest three are kept, and a corrupt or partial one is passed over for the one before.
public struct CoordinatorState: Codable, Equatable, Sendable {
    /// Steps the cohort has trained.
    public var globalStep = 0
    /// Epochs evaluated (their ends are behind the run).
    public var evaluatedEpochs = 0
    public var elapsedSeconds = 0.0
    public var images = 0
    public var teacherTop1: Double?
    /// Each rank's last test scores.
    public var lastEvaluation: [EvaluationResult?] = []
    public var ensembleTop1 = 0.0
    public var ensembleTop5 = 0.0
    /// The cohort's canonical settings when the run started (nil in states from before they were kept):
    /// a resume with other settings is refused.
    public var settings: String?

    public init() {}

    public static func directory(_ output: String) -> String { output + "/coordinator" }

    /// Every state under `output` that reads back whole, oldest first, and what was passed over
    /// (corrupt or partial files): what a resumed coordinator chooses among.
    public static func readable(output: String) -> (states: [CoordinatorState], skipped: [String]) {
        let directory = Self.directory(output)
        var states: [CoordinatorState] = []
        var skipped: [String] = []
        for name in files(directory) {
            let path = directory + "/" + name
            do { states.append(try read(path)) } catch { skipped.append("\(path): \(error)") }
        }
        return (states, skipped)
    }

    /// Writes this state as `state-<globalStep>.json` and removes all but the newest three.
    public func save(output: String) throws {
        let directory = Self.directory(output)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let json = try encoder.encode(self)
        let crc = json.withUnsafeBytes { CRC32.checksum($0) }
        var content = json
        content.append(Data(String(format: "\n%08x\n", crc).utf8))
        try AtomicFile.write(content, to: directory + "/" + String(format: "state-%09d.json", globalStep))
        for old in Self.files(directory).dropLast(3) { try? FileManager.default.removeItem(atPath: directory + "/" + old) }
    }

    private static func files(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("state-") && $0.hasSuffix(".json") }.sorted()
    }

    /// The newest state (at `atMost` steps or fewer) that reads back whole, and what was passed over
    /// (corrupt or partial files).
    public static func newest(output: String, atMost limit: Int? = nil) -> (CoordinatorState?, skipped: [String]) {
        let directory = Self.directory(output)
        var skipped: [String] = []
        for name in files(directory).reversed() where (Int(name.dropFirst("state-".count).prefix { $0.isNumber }) ?? Int.max) <= (limit ?? Int.max) {
            let path = directory + "/" + name
            do { return (try read(path), skipped) } catch { skipped.append("\(path): \(error)") }
        }
        return (nil, skipped)
    }

    public static func read(_ path: String) throws -> CoordinatorState {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        guard lines.count >= 2, let recorded = UInt32(String(decoding: lines[1], as: UTF8.self), radix: 16) else {
            throw SafeTensorsError.malformed("no checksum line (a partial file)")
        }
        let json = Data(lines[0])
        let crc = json.withUnsafeBytes { CRC32.checksum($0) }
        guard crc == recorded else { throw SafeTensorsError.malformed(String(format: "checksum %08x, recorded %08x (corrupt)", crc, recorded)) }
        return try JSONDecoder().decode(CoordinatorState.self, from: json)
    }
}

/// Checks cohort checkpoint files: Cohort checkpoints (`.safetensors`, their CRC-32 verified) and the
/// coordinator's states (`coordinator/state-*.json`). Returns each file with `nil` when it reads back
/// whole, or the reason it does not.
public func verifyCheckpoints(under directory: String) -> [(path: String, problem: String?)] {
    let files = (FileManager.default.enumerator(atPath: directory)?.allObjects as? [String] ?? []).sorted()
    return files.compactMap { file in
        let path = directory + "/" + file
        do {
            if file.hasSuffix(".safetensors") {
                _ = try SafeTensors.read(path)
            } else if file.hasSuffix(".json"), (file as NSString).lastPathComponent.hasPrefix("state-") {
                _ = try CoordinatorState.read(path)
            } else {
                return nil
            }
            return (path, nil)
        } catch {
            return (path, "\(error)")
        }
    }
}
