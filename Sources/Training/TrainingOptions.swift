import Foundation
import NN
import Data

/// Everything that defines a single-network training run. Saved with every checkpoint, and compared on
/// `--resume` so that a run is continued with the settings it started with.
public struct TrainingOptions: Codable, Sendable, Equatable {
    public var model: String = "resnet20"
    public var dataSet: DataSetKind = .fashionMNIST
    /// Directory of the data set's files; `nil` for the data set's default.
    public var dataDirectory: String?
    public var epochs: Int = 3
    public var batchSize: Int = 128
    public var learningRate: Float = 0.1
    public var schedule: ScheduleKind = .cosine
    /// Epochs at which a multi-step schedule multiplies the rate by `gamma`.
    public var milestones: [Int] = []
    public var gamma: Float = 0.1
    /// Epochs of linear warm-up (from 10% of the rate) before the schedule.
    public var warmupEpochs: Int = 0
    public var momentum: Float = 0.9
    public var weightDecay: Float = 5e-4
    public var nesterov: Bool = true
    public var seed: UInt64 = 0
    public var sampler: SamplerKind = .shuffled
    /// Train on the first N training samples only.
    public var trainLimit: Int?
    /// Evaluate on the first N test samples only.
    public var testLimit: Int?
    /// Also checkpoint every N steps (0: only at the end of each epoch).
    public var checkpointEvery: Int = 0
    public var evaluationBatchSize: Int = 500
    /// Evaluate on the test set every N epochs (and always after the last one); `nil`: every epoch. It does
    /// not change the weights, so a resumed run may change it (older runs' options lack it).
    public var evaluateEvery: Int?

    public init() {}

    /// Whether the test set is evaluated at the end of `epoch` (0-based): every `evaluateEvery`-th epoch
    /// and the last one.
    public func evaluates(epoch: Int) -> Bool { (epoch + 1) % (evaluateEvery ?? 1) == 0 || epoch + 1 >= epochs }

    public enum ScheduleKind: String, Codable, Sendable, CaseIterable {
        case cosine, multistep, constant
    }

    public enum SamplerKind: String, Codable, Sendable, CaseIterable {
        case shuffled
        /// MCL's sampler: each class in a batch at least twice.
        case mPerClass = "m-per-class"
    }

    /// Checks the values; the error names the option and what is allowed.
    public func validate() throws {
        func fail(_ key: String, _ why: String) -> TrainingError { .invalidOption(key: key, reason: why) }
        guard Architecture(name: model) != nil else { throw fail("model", "unknown \"\(model)\"\(suggestion(for: model, among: Architecture.allCases.map(\.rawValue))); choose one of: \(Architecture.allNames)") }
        guard epochs >= 1 else { throw fail("epochs", "must be at least 1, got \(epochs)") }
        guard batchSize >= 2 else { throw fail("batch", "must be at least 2 (batch norm needs two samples), got \(batchSize)") }
        guard learningRate > 0, learningRate.isFinite else { throw fail("lr", "must be a positive number, got \(learningRate)") }
        guard momentum >= 0, momentum < 1 else { throw fail("momentum", "must be in [0, 1), got \(momentum)") }
        guard weightDecay >= 0 else { throw fail("weight-decay", "must be non-negative, got \(weightDecay)") }
        guard !nesterov || momentum > 0 else { throw fail("nesterov", "needs --momentum > 0") }
        guard gamma > 0 else { throw fail("gamma", "must be positive, got \(gamma)") }
        guard warmupEpochs >= 0, warmupEpochs < epochs else { throw fail("warmup-epochs", "must be in 0..<epochs, got \(warmupEpochs)") }
        if schedule == .multistep && milestones.isEmpty {
            throw fail("milestones", "a multistep schedule needs milestones (epochs), e.g. --milestones 150,180,210")
        }
        if let trainLimit, trainLimit < 2 { throw fail("train-limit", "must be at least 2, got \(trainLimit)") }
        if let testLimit, testLimit < 1 { throw fail("test-limit", "must be at least 1, got \(testLimit)") }
        guard checkpointEvery >= 0 else { throw fail("checkpoint-every", "must be non-negative, got \(checkpointEvery)") }
        guard evaluationBatchSize >= 1 else { throw fail("eval-batch", "must be at least 1") }
        guard (evaluateEvery ?? 1) >= 1 else { throw fail("evaluate-every", "must be at least 1 (epochs), got \(evaluateEvery ?? 1)") }
    }

    /// The learning rate at each global step, for `stepsPerEpoch` steps per epoch.
    public func learningRateSchedule(stepsPerEpoch: Int) -> any LearningRateSchedule {
        let total = epochs * stepsPerEpoch
        let base: any LearningRateSchedule
        switch schedule {
        case .cosine: base = CosineSchedule(base: learningRate, total: total)
        case .multistep: base = MultiStepSchedule(base: learningRate, milestones: milestones.map { $0 * stepsPerEpoch }, gamma: gamma)
        case .constant: base = ConstantSchedule(base: learningRate)
        }
        return warmupEpochs > 0 ? LinearWarmup(base, steps: warmupEpochs * stepsPerEpoch) : base
    }

    /// As JSON (for checkpoints and the run directory).
    public func json() -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return String(decoding: (try? encoder.encode(self)) ?? Data(), as: UTF8.self)
    }
}

/// Errors of a training run, each saying what to do.
public enum TrainingError: Error, CustomStringConvertible {
    case invalidOption(key: String, reason: String)
    case noCheckpoint(directory: String)
    case resumeMismatch(key: String, saved: String, given: String)
    case corruptCheckpoint(path: String, reason: String)
    case io(String)

    public var description: String {
        switch self {
        case .invalidOption(let key, let reason): "invalid --\(key): \(reason)"
        case .noCheckpoint(let directory): "--resume: no usable checkpoint in \(directory)"
        case .resumeMismatch(let key, let saved, let given):
            "--resume: the run was started with \(key) = \(saved), now \(given); resume with the same settings or use a new --out"
        case .corruptCheckpoint(let path, let reason): "checkpoint \(path) is unusable: \(reason)"
        case .io(let what): what
        }
    }
}
