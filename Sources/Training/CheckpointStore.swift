import Foundation
import Tensors
import NN

/// Where a run stands: the next batch to train is step `stepInEpoch` of epoch `epoch`.
public struct TrainingPosition: Sendable, Equatable, Codable {
    public var epoch: Int
    public var stepInEpoch: Int
    /// Steps trained so far, over all epochs.
    public var globalStep: Int
    /// Wall-clock seconds spent training before this position (over all resumed runs).
    public var elapsedSeconds: Double
    /// The best test top-1 of the epochs finished so far.
    public var bestTestTop1: Double

    public init(epoch: Int, stepInEpoch: Int, globalStep: Int, elapsedSeconds: Double, bestTestTop1: Double = 0) {
        self.epoch = epoch; self.stepInEpoch = stepInEpoch; self.globalStep = globalStep; self.elapsedSeconds = elapsedSeconds
        self.bestTestTop1 = bestTestTop1
    }
}

/// The checkpoints of one network in a run directory (`OUT/checkpoints`):
///
/// - `epoch-0003.safetensors` — the weights (PyTorch `state_dict` names, loadable by PyTorch), with the
///   position and options in the metadata;
/// - `epoch-0003.state.safetensors` — the training state beside them: SGD momentum buffers
///   (`momentum.<parameter>`), the position and the options;
/// - `last.safetensors` — a copy of the newest weights whose metadata names its state file. It is written
///   last, so it always names a complete checkpoint.
///
/// Step checkpoints (`step-000500.*`) work the same way; only the newest is kept. Every file is written
/// atomically. Random choices are positional (seed, epoch, step), so the position is the whole RNG state.
public struct CheckpointStore {
    public let directory: String
    public static let format = "cohort-checkpoint/1"

    public init(directory: String) { self.directory = directory }

    public var lastPath: String { directory + "/last.safetensors" }

    /// Writes a checkpoint at `position` and makes it the newest.
    ///
    /// - Parameters:
    ///   - settings: the run's settings as JSON (stored in the metadata).
    ///   - extraState: further modules whose state goes into the training-state file under their prefix
    ///     (a cohort peer's projection head, CRCD memories, RRD queue).
    public func save(model: any Classifier, architecture: String, inputShape: [Int], optimizer: SGD,
                     settings: String, position: TrainingPosition, atEpochEnd: Bool,
                     extraState: [(String, Module)] = []) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let name = atEpochEnd ? String(format: "epoch-%04d", position.epoch) : String(format: "step-%06d", position.globalStep)
        var metadata = [
            "format": Self.format,
            "model": architecture,
            "input": inputShape.map(String.init).joined(separator: "x"),
            "classes": String(model.classCount),
            "epoch": String(position.epoch),
            "step_in_epoch": String(position.stepInEpoch),
            "global_step": String(position.globalStep),
            "elapsed_seconds": String(position.elapsedSeconds),
            "best_test_top1": String(position.bestTestTop1),
            "options": settings,
            "training_state": name + ".state.safetensors",
            "checkpoint": name,
        ]
        var state = SafeTensors(metadata: metadata)
        for (parameter, buffer) in optimizer.momentumBuffers.sorted(by: { $0.key < $1.key }) {
            state.add("momentum." + parameter, floats: buffer)
        }
        for (prefix, module) in extraState {
            let file = module.safeTensors()
            for name in file.names {
                let entry = file.entry(name)!
                if entry.dtype == .i64 {
                    state.add(prefix + "." + name, integers: try file.integers(name), shape: entry.shape)
                } else {
                    state.add(prefix + "." + name, floats: try file.floats(name))
                }
            }
        }
        try state.write(to: directory + "/" + name + ".state.safetensors", checksum: true)
        metadata["training_state"] = name + ".state.safetensors"
        let weights = model.safeTensors(metadata: metadata)
        try weights.write(to: directory + "/" + name + ".safetensors", checksum: true)
        try weights.write(to: lastPath, checksum: true)
        if !atEpochEnd { removeOlderStepCheckpoints(keeping: name) }
    }

    /// Keeps the two newest step checkpoints (`name` and the one before): a resumed cohort may go back
    /// one checkpoint to the step every member reached.
    private func removeOlderStepCheckpoints(keeping name: String) {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let names = Set(files.filter { $0.hasPrefix("step-") }.map { String($0.prefix { $0 != "." }) }).filter { $0 <= name }.sorted()
        for file in files where file.hasPrefix("step-") && names.dropLast(2).contains(String(file.prefix { $0 != "." })) {
            try? FileManager.default.removeItem(atPath: directory + "/" + file)
        }
    }

    /// A checkpoint read back: weights file, training state and position.
    public struct Loaded {
        public let path: String
        public let weights: SafeTensors
        public let state: SafeTensors
        public let position: TrainingPosition
        /// The run's settings as saved (JSON); the caller knows their type.
        public let settings: String?
    }

    /// The newest usable checkpoint: of `last.safetensors` and the named checkpoints, the one with the
    /// highest global step that reads back whole with its training state (`last` first among equals).
    /// A checkpoint whose weights file exists is complete — its state file is written before it — so a
    /// crash between a checkpoint and the update of `last` loses nothing. `skipped` collects what was
    /// passed over and why (missing, corrupt or partial files).
    public func newest(skipped: inout [String]) -> Loaded? { newest(atMost: nil, skipped: &skipped) }

    /// The newest usable checkpoint at `atMost` steps or fewer (`nil`: any), as ``newest(skipped:)``.
    public func newest(atMost limit: Int?, skipped: inout [String]) -> Loaded? {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let named = files.filter { ($0.hasPrefix("epoch-") || $0.hasPrefix("step-")) && $0.hasSuffix(".safetensors")
            && !$0.hasSuffix(".state.safetensors") }.sorted()
        var candidates: [(step: Int, order: Int, path: String)] = []
        for (order, path) in ([lastPath] + named.map { directory + "/" + $0 }).enumerated()
        where FileManager.default.fileExists(atPath: path) {
            do {
                let step = try SafeTensors.readMetadata(path)["global_step"].flatMap(Int.init) ?? -1
                candidates.append((step, order, path))
            } catch {
                skipped.append("\(path): \(error)")
            }
        }
        for candidate in candidates.sorted(by: { ($0.step, -$0.order) > ($1.step, -$1.order) }) where candidate.step <= (limit ?? Int.max) {
            do {
                return try load(candidate.path)
            } catch {
                skipped.append("\(candidate.path): \(error)")
            }
        }
        return nil
    }

    /// Reads the checkpoint whose weights are at `path`, with its training state.
    public func load(_ path: String) throws -> Loaded {
        let weights = try SafeTensors.read(path)
        let m = weights.metadata
        guard m["format"] == Self.format, let stateName = m["training_state"],
              let epoch = m["epoch"].flatMap(Int.init), let step = m["step_in_epoch"].flatMap(Int.init),
              let global = m["global_step"].flatMap(Int.init) else {
            throw TrainingError.corruptCheckpoint(path: path, reason: "metadata lacks the Cohort checkpoint fields")
        }
        let statePath = (path as NSString).deletingLastPathComponent + "/" + stateName
        let state = try SafeTensors.read(statePath)
        guard state.metadata["global_step"] == m["global_step"] else {
            throw TrainingError.corruptCheckpoint(path: path, reason: "training state \(statePath) is from step \(state.metadata["global_step"] ?? "?"), weights from step \(global)")
        }
        return Loaded(path: path, weights: weights, state: state,
                      position: TrainingPosition(epoch: epoch, stepInEpoch: step, globalStep: global,
                                                 elapsedSeconds: m["elapsed_seconds"].flatMap(Double.init) ?? 0,
                                                 bestTestTop1: m["best_test_top1"].flatMap(Double.init) ?? 0),
                      settings: m["options"])
    }

    /// The momentum buffers of a training state.
    public static func momentumBuffers(_ state: SafeTensors) throws -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for name in state.names where name.hasPrefix("momentum.") {
            result[String(name.dropFirst("momentum.".count))] = try state.floats(name)
        }
        return result
    }
}
