import Foundation
import Tensors
import NN
import Data
import Distill
import Training

/// Accuracy of each peer and of the ensemble (the mean of the peers' logits).
public struct CohortEvaluation: Sendable {
    public let peers: [EvaluationResult]
    public let ensembleTop1: Double
    public let ensembleTop5: Double
}

/// Evaluates the models on `dataSet` (evaluation mode, no gradients) in one pass, with their ensemble.
public func evaluateCohort(_ models: [any Classifier], on dataSet: DataSet, batchSize: Int) -> CohortEvaluation {
    let modes = models.map(\.isTraining)
    models.forEach { $0.eval() }
    defer { for (m, mode) in zip(models, modes) { m.train(mode) } }
    let batches = ShuffledSampler(count: dataSet.count, batchSize: batchSize, seed: 0, shuffle: false).batches(epoch: 0)
    let loader = BatchLoader(assembler: BatchAssembler(dataSet: dataSet, augment: false, seed: 0), batches: batches, epoch: 0)
    var top1 = [Int](repeating: 0, count: models.count), top5 = top1
    var loss = [Double](repeating: 0, count: models.count)
    var ensemble1 = 0, ensemble5 = 0
    while let batch = loader.next() {
        withNoGrad {
            let images = batch.imageTensor()
            var sum: Tensor?
            for (i, m) in models.enumerated() {
                let logits = m(images)
                let c = topKCorrect(logits: logits, labels: batch.labels)
                top1[i] += c.top1; top5[i] += c.top5
                loss[i] += Double(logits.crossEntropy(labels: batch.labels).item) * Double(batch.size)
                sum = sum.map { $0 + logits } ?? logits
            }
            let c = topKCorrect(logits: sum!, labels: batch.labels)
            ensemble1 += c.top1; ensemble5 += c.top5
        }
    }
    let n = Double(max(dataSet.count, 1))
    return CohortEvaluation(
        peers: (0..<models.count).map { EvaluationResult(top1: Double(top1[$0]) / n, top5: Double(top5[$0]) / n, loss: loss[$0] / n, count: dataSet.count) },
        ensembleTop1: Double(ensemble1) / n, ensembleTop5: Double(ensemble5) / n)
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
}

/// Runs a whole cohort — every peer and the teacher — in one process, passing outputs in memory.
///
/// Each step: the teacher's outputs for the batch; every peer's forward pass; then every peer finishes
/// its step with the others' outputs. All peers see the same batches (one sampler, one seed).
public final class InProcessCohort {
    public let configuration: CohortConfiguration
    public let peers: [PeerTrainer]
    public let teacher: TeacherRunner?
    let trainSet: DataSet
    let testSet: DataSet
    let sampler: any BatchSampler
    let stepsPerEpoch: Int

    public init(configuration: CohortConfiguration) throws {
        self.configuration = configuration
        let kind = configuration.data.dataSet
        trainSet = try DataSet.load(kind, split: .train, directory: configuration.data.directory).prefix(configuration.data.trainLimit)
        testSet = try DataSet.load(kind, split: .test, directory: configuration.data.directory).prefix(configuration.data.testLimit)
        switch configuration.sampler {
        case .shuffled: sampler = ShuffledSampler(count: trainSet.count, batchSize: configuration.batchSize, seed: configuration.seed)
        case .mPerClass: sampler = MPerClassSampler(labels: trainSet.labels, batchSize: configuration.batchSize, seed: configuration.seed)
        }
        let steps = sampler.batches(epoch: 0).count
        stepsPerEpoch = steps
        let teacherRunner = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: kind) }
        teacher = teacherRunner
        let teacherFeatures = teacherRunner?.model.featureCount
        let dataCount = trainSet.count
        peers = (0..<configuration.peers.count).map {
            PeerTrainer(rank: $0, configuration: configuration, dataCount: dataCount, teacherFeatureCount: teacherFeatures,
                        stepsPerEpoch: steps)
        }
    }

    /// Trains every epoch; writes per-peer metrics and checkpoints, the cohort's metrics and summary.
    public func run(progress: ProgressReporter = ProgressReporter()) throws -> CohortSummary {
        let out = configuration.output
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        let cohortMetrics = try MetricsLog(path: out + "/metrics.jsonl")
        var peerMetrics: [MetricsLog] = []
        for p in peers {
            try FileManager.default.createDirectory(atPath: out + "/peer-\(p.rank)", withIntermediateDirectories: true)
            peerMetrics.append(try MetricsLog(path: out + "/peer-\(p.rank)/metrics.jsonl"))
        }
        let teacherTop1 = teacher.map { evaluate($0.model, on: testSet, batchSize: configuration.evaluationBatchSize).top1 }
        if let teacherTop1 { progress.log(String(format: "teacher %@: test top-1 %.2f%%", configuration.teacher!.model, 100 * teacherTop1)) }
        progress.log("cohort of \(peers.count) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(configuration.data.dataSet.rawValue): \(trainSet.count) images, \(stepsPerEpoch) steps/epoch, \(configuration.epochs) epochs")
        let totalSteps = configuration.epochs * stepsPerEpoch
        var position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
        let started = Date()
        var images = 0
        var last = CohortEvaluation(peers: [], ensembleTop1: 0, ensembleTop5: 0)
        for epoch in 0..<configuration.epochs {
            position.epoch = epoch
            let loader = BatchLoader(assembler: BatchAssembler(dataSet: trainSet, augment: true, seed: configuration.seed),
                                     batches: sampler.batches(epoch: epoch), epoch: epoch)
            var running = [[String: Double]](repeating: [:], count: peers.count)
            var seen = 0
            while let batch = loader.next() {
                position.stepInEpoch = batch.step
                let teacherOutputs = teacher?.outputs(for: batch)
                let outputs = peers.map { $0.forward(batch) }
                for p in peers {
                    let terms = p.finish(others: outputs.filter { $0.rank != p.rank }, teacher: teacherOutputs,
                                         position: position, totalSteps: totalSteps)
                    var line: [String: any Sendable] = ["kind": "step", "epoch": epoch, "step": batch.step,
                                                        "global_step": position.globalStep + 1]
                    for (k, v) in terms { line[k] = v; running[p.rank][k, default: 0] += v * Double(batch.size) }
                    peerMetrics[p.rank].write(line)
                }
                seen += batch.size; images += batch.size
                position.globalStep += 1
                let elapsed = Date().timeIntervalSince(started)
                let rate = Double(images) / max(elapsed, 1e-9)
                let summary = peers.map { String(format: "p%d %.3f/%.0f%%", $0.rank, running[$0.rank]["total", default: 0] / Double(seen),
                                                 100 * running[$0.rank]["accuracy", default: 0] / Double(seen)) }.joined(separator: "  ")
                progress.line(String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", epoch + 1, configuration.epochs,
                                     batch.step + 1, stepsPerEpoch, summary, rate,
                                     ProgressReporter.duration(Double(totalSteps - position.globalStep) * Double(configuration.batchSize) / max(rate, 1e-9))),
                              final: batch.step + 1 == stepsPerEpoch)
            }
            last = evaluateCohort(peers.map(\.model), on: testSet, batchSize: configuration.evaluationBatchSize)
            for p in peers {
                var line: [String: any Sendable] = ["kind": "epoch", "epoch": epoch, "global_step": position.globalStep,
                                                    "test_top1": last.peers[p.rank].top1, "test_top5": last.peers[p.rank].top5,
                                                    "test_loss": last.peers[p.rank].loss]
                for (k, v) in running[p.rank] { line["train_" + k] = v / Double(max(seen, 1)) }
                peerMetrics[p.rank].write(line)
                var saved = position
                saved.epoch = epoch + 1; saved.stepInEpoch = 0
                saved.elapsedSeconds = Date().timeIntervalSince(started)
                try CheckpointStore(directory: out + "/peer-\(p.rank)/checkpoints").save(
                    model: p.model, architecture: p.architecture.rawValue,
                    inputShape: [configuration.data.dataSet.channels, configuration.data.dataSet.height, configuration.data.dataSet.width],
                    optimizer: p.optimizer, settings: "{\"rank\":\(p.rank),\"model\":\"\(p.architecture.rawValue)\"}",
                    position: saved, atEpochEnd: true, extraState: p.lossState)
            }
            cohortMetrics.write(["kind": "epoch", "epoch": epoch, "global_step": position.globalStep,
                                 "ensemble_top1": last.ensembleTop1, "ensemble_top5": last.ensembleTop5,
                                 "peer_top1": last.peers.map(\.top1), "seconds": Date().timeIntervalSince(started)])
            let perPeer = peers.map { String(format: "peer %d (%@) %.2f%%", $0.rank, $0.architecture.rawValue, 100 * last.peers[$0.rank].top1) }
            progress.log(String(format: "epoch %d/%d: %@; ensemble %.2f%%", epoch + 1, configuration.epochs,
                                perPeer.joined(separator: ", "), 100 * last.ensembleTop1))
        }
        let seconds = Date().timeIntervalSince(started)
        let summary = CohortSummary(
            peers: peers.map { CohortSummary.Peer(rank: $0.rank, model: $0.architecture.rawValue, test_top1: last.peers[$0.rank].top1,
                                                  test_top5: last.peers[$0.rank].top5) },
            ensemble_top1: last.ensembleTop1, ensemble_top5: last.ensembleTop5, teacher_top1: teacherTop1,
            dataset: configuration.data.dataSet.rawValue, epochs: configuration.epochs, steps: position.globalStep,
            seconds: seconds, images_per_s: Double(images) / max(seconds, 1e-9), transport: "inproc")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(summary), to: out + "/summary.json")
        return summary
    }
}
