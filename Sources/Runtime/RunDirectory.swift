import Foundation
import NN
import Training

/// One peer's part of a cohort's run directory, `OUTPUT/peer-<rank>/`: its `metrics.jsonl` (a line per
/// step with every loss term, a line per epoch with the test scores and the epoch's means) and its
/// `checkpoints/`. The in-process cohort and a peer process write it the same way.
public final class PeerRunDirectory {
    public let path: String
    let metrics: MetricsLog
    let checkpoints: CheckpointStore
    private var running: [String: Double] = [:]
    private var seen = 0

    public init(output: String, rank: Int) throws {
        path = output + "/peer-\(rank)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        metrics = try MetricsLog(path: path + "/metrics.jsonl")
        checkpoints = CheckpointStore(directory: path + "/checkpoints")
    }

    /// Records a finished step's terms (`globalStep` counts the step itself).
    public func recordStep(epoch: Int, step: Int, globalStep: Int, batchSize: Int, terms: [String: Double]) {
        for (k, v) in terms { running[k, default: 0] += v * Double(batchSize) }
        seen += batchSize
        metrics.write(.step(.init(epoch: epoch, step: step, globalStep: globalStep, values: terms)))
    }

    /// The epoch's running mean of `term` so far (per sample).
    public func runningMean(_ term: String) -> Double { running[term, default: 0] / Double(max(seen, 1)) }

    /// Writes a step checkpoint of `peer` at `position` (a cohort checkpoint between epoch ends).
    public func saveCheckpoint(_ peer: PeerTrainer, position: TrainingPosition, shape: [Int]) throws {
        try checkpoints.save(model: peer.model, architecture: peer.architecture.rawValue, inputShape: shape, optimizer: peer.optimizer,
                             settings: Self.settings(peer), position: position, atEpochEnd: false, extraState: peer.lossState)
    }

    /// The newest checkpoint that reads back whole (checksums verified) at `atMost` steps or fewer
    /// (`nil`: any), and what was passed over.
    public func newestCheckpoint(atMost limit: Int? = nil) -> (CheckpointStore.Loaded?, skipped: [String]) {
        var skipped: [String] = []
        let loaded = checkpoints.newest(atMost: limit, skipped: &skipped)
        return (loaded, skipped)
    }

    /// The `settings` a peer's checkpoints record: its rank, its model and the cohort's canonical
    /// settings (compared on resume, so that a run cannot drift to other settings).
    static func settings(_ peer: PeerTrainer) -> String {
        let object: [String: Any] = ["rank": peer.rank, "model": peer.architecture.rawValue,
                                     "cohort_settings": peer.configuration.canonicalSettings]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    /// The cohort's canonical settings a checkpoint's `settings` recorded (nil for checkpoints from
    /// before they were recorded).
    public static func cohortSettings(of loaded: CheckpointStore.Loaded) -> String? {
        guard let json = loaded.settings,
              let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] else { return nil }
        return object["cohort_settings"] as? String
    }

    /// Cuts this peer's metrics after `globalStep` (a resume from a checkpoint there).
    public func truncateHistory(afterGlobalStep globalStep: Int) throws {
        try metrics.truncate(afterGlobalStep: globalStep)
        running = [:]; seen = 0
    }

    /// Ends an epoch: writes its line with `test` (`nil`: an epoch the cohort does not evaluate) and the
    /// epoch's means, and checkpoints `peer` at `position` (the start of the next epoch).
    public func endEpoch(_ peer: PeerTrainer, test: EvaluationResult?, position: TrainingPosition, shape: [Int]) throws {
        let means = Dictionary(uniqueKeysWithValues: running.map { ("train_" + $0.key, $0.value / Double(max(seen, 1))) })
        metrics.write(.epoch(.init(epoch: position.epoch - 1, globalStep: position.globalStep, test: test, values: means)))
        running = [:]; seen = 0
        try checkpoints.save(model: peer.model, architecture: peer.architecture.rawValue, inputShape: shape, optimizer: peer.optimizer,
                             settings: Self.settings(peer), position: position, atEpochEnd: true, extraState: peer.lossState)
    }
}

/// The cohort's own files in its run directory: `metrics.jsonl` (a line per epoch with the ensemble's
/// and every peer's test accuracy) and `summary.json`.
public final class CohortRunDirectory {
    public let path: String
    let metrics: MetricsLog

    public init(output: String) throws {
        path = output
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        metrics = try MetricsLog(path: output + "/metrics.jsonl")
    }

    /// Records which peers took part in a step (`globalStep` counts the step itself).
    public func recordStep(_ globalStep: Int, present: [Int]) {
        metrics.write(.cohortStep(globalStep: globalStep, present: present))
    }

    /// Cuts the cohort's metrics after `globalStep` (a resume from a checkpoint there).
    public func truncateHistory(afterGlobalStep globalStep: Int) throws {
        try metrics.truncate(afterGlobalStep: globalStep)
    }

    public func recordEpoch(_ epoch: Int, globalStep: Int, evaluation: CohortEvaluation, seconds: Double) {
        metrics.write(.cohortEpoch(.init(epoch: epoch, globalStep: globalStep, ensembleTop1: evaluation.ensembleTop1,
                                         ensembleTop5: evaluation.ensembleTop5, peerTop1: evaluation.peers.map(\.top1), seconds: seconds)))
    }

    /// Writes `summary.json` atomically.
    public func writeSummary(_ summary: CohortSummary) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(summary), to: path + "/summary.json")
    }
}

/// `OUTPUT/summary.json` of a cohort run.
public struct CohortSummary: Codable, Sendable {
    public struct Peer: Codable, Sendable {
        public let rank: Int
        public let model: String
        public let test_top1: Double
        public let test_top5: Double
    }
    public let peers: [Peer]
    public let ensemble_top1: Double
    public let ensemble_top5: Double
    public let teacher_top1: Double?
    public let dataset: String
    public let epochs: Int
    public let steps: Int
    public let seconds: Double
    public let images_per_s: Double
    public let transport: String

    public init(configuration: CohortConfiguration, evaluation: CohortEvaluation, teacherTop1: Double?, steps: Int, seconds: Double,
                images: Int, transport: String) {
        peers = configuration.peers.enumerated().map { rank, p in
            Peer(rank: rank, model: p.model, test_top1: evaluation.peers[rank].top1, test_top5: evaluation.peers[rank].top5)
        }
        ensemble_top1 = evaluation.ensembleTop1; ensemble_top5 = evaluation.ensembleTop5; teacher_top1 = teacherTop1
        dataset = configuration.data.dataSet.rawValue; epochs = configuration.epochs; self.steps = steps
        self.seconds = seconds; images_per_s = Double(images) / max(seconds, 1e-9); self.transport = transport
    }
}
