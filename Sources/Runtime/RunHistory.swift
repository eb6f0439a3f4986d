import Foundation
import Training
import NN

/// What an output directory already holds, so that nothing finished or interrupted is overwritten: a
/// fresh start is refused where a run exists (it may be continued with `--resume`, or moved aside).
public enum ExistingRun: Equatable, Sendable {
    case none
    /// Checkpoints or logs without a summary; `step`: the newest checkpoint's global step, if any reads.
    case unfinished(step: Int?)
    /// `summary.json` is there.
    case finished

    /// Inspects `output` (a cohort's run directory: the coordinator's and the peers' parts).
    public static func inspect(_ output: String) -> ExistingRun {
        if FileManager.default.fileExists(atPath: output + "/summary.json") { return .finished }
        let peers = ((try? FileManager.default.contentsOfDirectory(atPath: output)) ?? []).compactMap { entry in
            entry.hasPrefix("peer-") ? Int(entry.dropFirst("peer-".count)) : nil
        }
        return ([inspectCoordinator(output)] + peers.map { inspectPeer(output, rank: $0) }).reduce(.none) { a, b in
            switch (a, b) {
            case (.none, let x), (let x, .none): x
            case (.unfinished(let s), .unfinished(let t)): .unfinished(step: [s, t].compactMap { $0 }.max())
            default: .finished
            }
        }
    }

    /// The coordinator's part of `output`: its states (`coordinator/state-*.json`) and `metrics.jsonl`.
    public static func inspectCoordinator(_ output: String) -> ExistingRun {
        if FileManager.default.fileExists(atPath: output + "/summary.json") { return .finished }
        let states = ((try? FileManager.default.contentsOfDirectory(atPath: output + "/coordinator")) ?? []).filter { $0.hasPrefix("state-") }
        if let newest = states.sorted().last { return .unfinished(step: Int(newest.dropFirst("state-".count).prefix { $0.isNumber })) }
        return MetricsLog.hasRecords(at: output + "/metrics.jsonl") ? .unfinished(step: nil) : .none
    }

    /// Peer `rank`'s part of `output`: its checkpoints and `metrics.jsonl`.
    public static func inspectPeer(_ output: String, rank: Int) -> ExistingRun {
        let directory = output + "/peer-\(rank)"
        let checkpoints = ((try? FileManager.default.contentsOfDirectory(atPath: directory + "/checkpoints")) ?? []).filter { $0.hasSuffix(".safetensors") }
        if !checkpoints.isEmpty {
            let steps = checkpoints.compactMap { try? SafeTensors.readMetadata(directory + "/checkpoints/" + $0)["global_step"].flatMap(Int.init) }
            return .unfinished(step: steps.max())
        }
        return MetricsLog.hasRecords(at: directory + "/metrics.jsonl") ? .unfinished(step: nil) : .none
    }

    /// Moves `output` aside to the first free `output.old-N` (N = 1, 2, ...) and returns that path.
    public static func moveAside(_ output: String) throws -> String {
        let base = output.hasSuffix("/") ? String(output.dropLast()) : output
        var n = 1
        while FileManager.default.fileExists(atPath: "\(base).old-\(n)") { n += 1 }
        let destination = "\(base).old-\(n)"
        try FileManager.default.moveItem(atPath: base, toPath: destination)
        return destination
    }
}

/// Why a run cannot be continued as asked.
public enum ResumeError: Error, CustomStringConvertible, Equatable {
    /// The file's settings differ from those the run was started with (each `key: saved -> now`).
    case settingsChanged(changes: [String])
    /// The peers' checkpoints are not at one common step.
    case inconsistent(String)

    public var description: String {
        switch self {
        case .settingsChanged(let changes):
            "the run was started with other settings: \(changes.joined(separator: ", ")); resume with the settings it was started with, or start a new run in another output"
        case .inconsistent(let why): "cannot resume: \(why)"
        }
    }
}

extension CohortConfiguration {
    /// The settings that differ between `saved` canonical settings (``canonicalSettings`` of the run when
    /// it started) and this configuration's, as `key: saved -> now` (`(unset)` where a key is absent).
    public func settingChanges(from saved: String) -> [String] {
        func entries(_ text: String) -> [String: String] {
            var result: [String: String] = [:]
            for line in text.split(separator: "\n") {
                guard let equals = line.firstIndex(of: "=") else { continue }
                result[String(line[..<equals])] = String(line[line.index(after: equals)...])
            }
            return result
        }
        let before = entries(saved), now = entries(canonicalSettings)
        return Set(before.keys).union(now.keys).sorted().compactMap { key in
            before[key] == now[key] ? nil : "\(key): \(before[key] ?? "(unset)") -> \(now[key] ?? "(unset)")"
        }
    }

    /// Throws ``ResumeError/settingsChanged(changes:)`` unless `saved` (nil: a run from before the
    /// settings were saved; nothing to compare) matches this configuration.
    public func checkUnchanged(since saved: String?) throws {
        guard let saved else { return }
        let changes = settingChanges(from: saved)
        if !changes.isEmpty { throw ResumeError.settingsChanged(changes: changes) }
    }
}
