import Foundation
import Tensors
import NN
import Data

/// The final figures of a run (`OUT/summary.json`).
public struct RunSummary: Codable, Sendable {
    public let model: String
    public let dataset: String
    public let epochs: Int
    public let steps: Int
    public let seconds: Double
    public let images_per_s: Double
    public let test_top1: Double
    public let test_top5: Double
    public let test_loss: Double
    public let best_test_top1: Double
    public let train_samples: Int
    public let test_samples: Int
    public let seed: UInt64
    public let threads: Int
    public let resumed_from_step: Int?
}

/// Trains one classifier with SGD and cross-entropy: the engine of `cohort train`.
///
/// Per step: the learning rate from the schedule (per step), forward, cross-entropy, backward, SGD.
/// After each epoch: evaluation on the test set, a metrics line, and a checkpoint.
public final class Trainer {
    public let options: TrainingOptions
    public let outputDirectory: String
    public let model: any Classifier
    public let optimizer: SGD
    public let trainSet: DataSet
    public let testSet: DataSet
    public let threads: Int
    let sampler: any BatchSampler
    let stepsPerEpoch: Int
    let schedule: any LearningRateSchedule
    let checkpoints: CheckpointStore
    let architecture: Architecture

    /// Loads the data and builds the model and optimizer.
    /// - Throws: ``TrainingError`` for bad options, ``DataSetError`` for missing or malformed data.
    public init(options: TrainingOptions, outputDirectory: String, threads: Int = 1) throws {
        try options.validate()
        self.options = options
        self.outputDirectory = outputDirectory
        self.threads = threads
        let fullTrain = try DataSet.load(options.dataSet, split: .train, directory: options.dataDirectory)
        let fullTest = try DataSet.load(options.dataSet, split: .test, directory: options.dataDirectory)
        for (limit, full, key) in [(options.trainLimit, fullTrain, "train-limit"), (options.testLimit, fullTest, "test-limit")] {
            if let limit, limit > full.count {
                throw TrainingError.invalidOption(key: key, reason: "\(options.dataSet.rawValue) has \(full.count) images there, got \(limit)")
            }
        }
        trainSet = fullTrain.prefix(options.trainLimit)
        testSet = fullTest.prefix(options.testLimit)
        architecture = Architecture(name: options.model)!
        let kind = options.dataSet
        var seedStream = RandomStream.generator(seed: options.seed, .initialisation, 0)
        model = architecture.make(inputChannels: kind.channels, classCount: kind.classCount, seed: seedStream.next())
        optimizer = SGD(parameters: model.namedParameters(), learningRate: options.learningRate,
                        momentum: options.momentum, weightDecay: options.weightDecay, nesterov: options.nesterov)
        switch options.sampler {
        case .shuffled: sampler = ShuffledSampler(count: trainSet.count, batchSize: options.batchSize, seed: options.seed)
        case .mPerClass: sampler = MPerClassSampler(labels: trainSet.labels, batchSize: options.batchSize, seed: options.seed)
        }
        stepsPerEpoch = sampler.batches(epoch: 0).count
        schedule = options.learningRateSchedule(stepsPerEpoch: stepsPerEpoch)
        checkpoints = CheckpointStore(directory: outputDirectory + "/checkpoints")
    }

    var inputShape: [Int] { [options.dataSet.channels, options.dataSet.height, options.dataSet.width] }

    /// Trains to the last epoch and writes `metrics.jsonl`, checkpoints and `summary.json`.
    ///
    /// - Parameter resume: continue from the newest checkpoint in the output directory (its metrics are
    ///   cut back to the checkpoint's step, so they stay one history).
    /// - Throws: ``RunLock/Held`` when another process writes the output directory.
    public func run(resume: Bool, progress: ProgressReporter = ProgressReporter()) throws -> RunSummary {
        let lock = try RunLock(directory: outputDirectory, role: "train", what: "cohort train")
        defer { withExtendedLifetime(lock) {} }
        var position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
        var resumedFrom: Int?
        if resume {
            var skipped: [String] = []
            guard let loaded = checkpoints.newest(skipped: &skipped) else { throw TrainingError.noCheckpoint(directory: checkpoints.directory) }
            for s in skipped { progress.log("warning: skipped unusable checkpoint \(s)") }
            // The settings must read back, or the compatibility check below would be meaningless.
            guard let json = loaded.settings,
                  let saved = try? JSONDecoder().decode(TrainingOptions.self, from: Data(json.utf8)) else {
                throw TrainingError.corruptCheckpoint(path: loaded.path, reason: "its options are missing or do not read back")
            }
            try checkCompatible(saved)
            try model.load(loaded.weights)
            try optimizer.loadMomentumBuffers(CheckpointStore.momentumBuffers(loaded.state))
            position = loaded.position
            resumedFrom = position.globalStep
            progress.log("resuming from \(loaded.path): epoch \(position.epoch + 1), step \(position.stepInEpoch + 1) (global step \(position.globalStep))")
        } else if FileManager.default.fileExists(atPath: checkpoints.lastPath)
                    || FileManager.default.fileExists(atPath: outputDirectory + "/summary.json")
                    || MetricsLog.hasRecords(at: outputDirectory + "/metrics.jsonl") {
            throw TrainingError.invalidOption(key: "out", reason: "\(outputDirectory) already holds a run; pass --resume to continue it or choose a new --out")
        }
        try AtomicFile.write(Data(options.json().utf8), to: outputDirectory + "/options.json")
        let metrics = try MetricsLog(path: outputDirectory + "/metrics.jsonl")
        if let resumedFrom {
            try metrics.truncate(afterGlobalStep: resumedFrom)
            metrics.write(.resume(globalStep: resumedFrom))
        }

        let started = Date()
        let previousSeconds = position.elapsedSeconds
        var bestTop1 = position.bestTestTop1
        var last = EvaluationResult(top1: 0, top5: 0, loss: 0, count: 0)
        var imagesThisRun = 0
        model.train()
        progress.log("training \(options.model) on \(options.dataSet.rawValue) (\(trainSet.count) images, \(stepsPerEpoch) steps/epoch) for \(options.epochs) epochs, \(threads) thread(s)")

        while position.epoch < options.epochs {
            let epoch = position.epoch
            let epochStart = Date()
            let assembler = BatchAssembler(dataSet: trainSet, augment: true, seed: options.seed)
            let loader = BatchLoader(assembler: assembler, batches: sampler.batches(epoch: epoch), epoch: epoch,
                                     startStep: position.stepInEpoch)
            var lossSum = 0.0, correct = 0, seen = 0
            while let batch = loader.next() {
                let stepStart = Date()
                optimizer.learningRate = schedule.learningRate(at: position.globalStep)
                optimizer.zeroGrad()
                let logits = model(batch.imageTensor())
                let loss = logits.crossEntropy(labels: batch.labels)
                loss.backward()
                optimizer.step()
                let lossValue = Double(loss.item)
                let batchCorrect = topKCorrect(logits: logits, labels: batch.labels).top1
                lossSum += lossValue * Double(batch.size); correct += batchCorrect; seen += batch.size
                imagesThisRun += batch.size
                position.stepInEpoch = batch.step + 1
                position.globalStep += 1
                let elapsed = Date().timeIntervalSince(started)
                let rate = Double(imagesThisRun) / Swift.max(elapsed, 1e-9)
                metrics.write(.step(.init(epoch: epoch, step: batch.step, globalStep: position.globalStep,
                                          values: ["loss": lossValue, "accuracy": Double(batchCorrect) / Double(batch.size),
                                                   "lr": Double(optimizer.learningRate), "seconds": Date().timeIntervalSince(stepStart)])))
                let remainingSteps = options.epochs * stepsPerEpoch - position.globalStep
                progress.step(epoch: epoch, epochs: options.epochs, step: batch.step, steps: stepsPerEpoch,
                              loss: lossSum / Double(seen), accuracy: Double(correct) / Double(seen),
                              imagesPerSecond: rate,
                              eta: Double(remainingSteps * options.batchSize) / Swift.max(rate, 1e-9))
                if options.checkpointEvery > 0, position.globalStep % options.checkpointEvery == 0,
                   position.stepInEpoch < stepsPerEpoch {
                    position.elapsedSeconds = previousSeconds + Date().timeIntervalSince(started)
                    try save(position, atEpochEnd: false)
                }
            }
            let trainLoss = seen > 0 ? lossSum / Double(seen) : 0, trainAccuracy = seen > 0 ? Double(correct) / Double(seen) : 0
            var line = MetricsRecord.Epoch(epoch: epoch, globalStep: position.globalStep, test: nil,
                                           values: ["train_loss": trainLoss, "train_accuracy": trainAccuracy, "lr": Double(optimizer.learningRate)])
            var report = String(format: "epoch %d/%d: train loss %.4f, train acc %.2f%%", epoch + 1, options.epochs, trainLoss, 100 * trainAccuracy)
            if options.evaluates(epoch: epoch) {
                let phase = PhaseProgress("epoch \(epoch + 1): evaluating on the test set", total: testSet.count, report: progress.log)
                last = evaluate(model, on: testSet, batchSize: options.evaluationBatchSize, progress: phase)
                bestTop1 = Swift.max(bestTop1, last.top1)
                position.bestTestTop1 = bestTop1
                line.test = last
                report += String(format: ", test top-1 %.2f%%, top-5 %.2f%%", 100 * last.top1, 100 * last.top5)
            }
            let epochSeconds = Date().timeIntervalSince(epochStart)
            line.values["seconds"] = epochSeconds
            metrics.write(.epoch(line))
            progress.log(report + String(format: " (%.0f s)", epochSeconds))
            position.epoch += 1
            position.stepInEpoch = 0
            position.elapsedSeconds = previousSeconds + Date().timeIntervalSince(started)
            try save(position, atEpochEnd: true)
        }
        if resumedFrom != nil && last.count == 0 {
            // Resumed after the last epoch had finished: evaluate what was loaded.
            last = evaluate(model, on: testSet, batchSize: options.evaluationBatchSize)
            bestTop1 = Swift.max(bestTop1, last.top1)
        }
        let seconds = previousSeconds + Date().timeIntervalSince(started)
        let thisRun = Date().timeIntervalSince(started)
        let summary = RunSummary(model: options.model, dataset: options.dataSet.rawValue, epochs: options.epochs,
                                 steps: position.globalStep, seconds: seconds,
                                 images_per_s: Double(imagesThisRun) / Swift.max(thisRun, 1e-9),
                                 test_top1: last.top1, test_top5: last.top5, test_loss: last.loss,
                                 best_test_top1: bestTop1, train_samples: trainSet.count, test_samples: testSet.count,
                                 seed: options.seed, threads: threads, resumed_from_step: resumedFrom)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(summary), to: outputDirectory + "/summary.json")
        return summary
    }

    private func save(_ position: TrainingPosition, atEpochEnd: Bool) throws {
        try checkpoints.save(model: model, architecture: architecture.rawValue, inputShape: inputShape, optimizer: optimizer,
                             settings: options.json(), position: position, atEpochEnd: atEpochEnd)
    }

    /// A resumed run must train the same thing; only the number of epochs may grow.
    private func checkCompatible(_ saved: TrainingOptions) throws {
        var a = saved, b = options
        a.epochs = 0; b.epochs = 0
        a.dataDirectory = nil; b.dataDirectory = nil
        a.evaluateEvery = nil; b.evaluateEvery = nil
        guard a != b else { return }
        // Name the first differing setting.
        func fields(_ o: TrainingOptions) -> [String: String] {
            let object = (try? JSONSerialization.jsonObject(with: Data(o.json().utf8))) as? [String: Any] ?? [:]
            return object.mapValues { "\($0)" }
        }
        let x = fields(a), y = fields(b)
        for key in Set(x.keys).union(y.keys).sorted() where x[key] != y[key] {
            throw TrainingError.resumeMismatch(key: key, saved: x[key] ?? "(unset)", given: y[key] ?? "(unset)")
        }
        throw TrainingError.resumeMismatch(key: "options", saved: saved.json(), given: options.json())
    }
}
