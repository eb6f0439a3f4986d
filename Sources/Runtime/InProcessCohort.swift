import Foundation
import Tensors
import NN
import Data
import Distill
import Training

/// Runs a whole cohort — every peer and the teacher — in one process, passing outputs in memory.
///
/// Each step: the teacher's outputs for the batch; every peer's forward pass; then every peer finishes
/// its step with the others' outputs. All peers see the same batches (one sampler, one seed).
public final class InProcessCohort {
    public let configuration: CohortConfiguration
    public let peers: [PeerTrainer]
    public let teacher: TeacherRunner?
    let data: CohortData

    public init(configuration: CohortConfiguration) throws {
        self.configuration = configuration
        data = try CohortData(configuration: configuration)
        let teacherRunner = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
        teacher = teacherRunner
        let teacherFeatures = teacherRunner?.model.featureCount
        let (count, steps) = (data.trainSet.count, data.stepsPerEpoch)
        peers = (0..<configuration.peers.count).map {
            PeerTrainer(rank: $0, configuration: configuration, dataCount: count, teacherFeatureCount: teacherFeatures, stepsPerEpoch: steps)
        }
    }

    /// Trains every epoch; writes per-peer metrics and checkpoints, the cohort's metrics and summary.
    public func run(progress: ProgressReporter = ProgressReporter()) throws -> CohortSummary {
        let out = configuration.output
        let cohortDirectory = try CohortRunDirectory(output: out)
        let peerDirectories = try peers.map { try PeerRunDirectory(output: out, rank: $0.rank) }
        let kind = configuration.data.dataSet
        let teacherTop1 = teacher.map { evaluate($0.model, on: data.testSet, batchSize: configuration.evaluationBatchSize).top1 }
        if let teacherTop1 { progress.log(String(format: "teacher %@: test top-1 %.2f%%", configuration.teacher!.model, 100 * teacherTop1)) }
        progress.log("cohort of \(peers.count) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(kind.rawValue): \(data.trainSet.count) images, \(data.stepsPerEpoch) steps/epoch, \(configuration.epochs) epochs")
        let totalSteps = configuration.epochs * data.stepsPerEpoch
        var position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
        let started = Date()
        var images = 0
        var last = CohortEvaluation(peers: [], ensembleTop1: 0, ensembleTop5: 0)
        for epoch in 0..<configuration.epochs {
            position.epoch = epoch
            let loader = data.loader(epoch: epoch)
            while let batch = loader.next() {
                position.stepInEpoch = batch.step
                let teacherOutputs = teacher?.outputs(for: batch)
                let outputs = peers.map { $0.forward(batch) }
                for p in peers {
                    let terms = try p.finish(others: outputs.filter { $0.rank != p.rank }, teacher: teacherOutputs,
                                         position: position, totalSteps: totalSteps)
                    peerDirectories[p.rank].recordStep(epoch: epoch, step: batch.step, globalStep: position.globalStep + 1,
                                                       batchSize: batch.size, terms: terms)
                    for warning in p.takeWarnings() { progress.log("warning: " + warning) }
                }
                images += batch.size
                position.globalStep += 1
                let elapsed = Date().timeIntervalSince(started)
                let rate = Double(images) / max(elapsed, 1e-9)
                let summary = peers.map { String(format: "p%d %.3f/%.0f%%", $0.rank, peerDirectories[$0.rank].runningMean("total"),
                                                 100 * peerDirectories[$0.rank].runningMean("accuracy")) }.joined(separator: "  ")
                progress.line(String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", epoch + 1, configuration.epochs,
                                     batch.step + 1, data.stepsPerEpoch, summary, rate,
                                     ProgressReporter.duration(Double(totalSteps - position.globalStep) * Double(configuration.batchSize) / max(rate, 1e-9))),
                              final: batch.step + 1 == data.stepsPerEpoch)
            }
            let evaluated = configuration.evaluates(epoch: epoch)
            if evaluated { last = evaluateCohort(peers.map(\.model), on: data.testSet, batchSize: configuration.evaluationBatchSize) }
            var saved = position
            saved.epoch = epoch + 1; saved.stepInEpoch = 0
            saved.elapsedSeconds = Date().timeIntervalSince(started)
            for p in peers {
                try peerDirectories[p.rank].endEpoch(p, test: evaluated ? last.peers[p.rank] : nil, position: saved,
                                                     shape: [kind.channels, kind.height, kind.width])
            }
            if evaluated {
                cohortDirectory.recordEpoch(epoch, globalStep: position.globalStep, evaluation: last, seconds: Date().timeIntervalSince(started))
                progress.log(epochReport(epoch: epoch, configuration: configuration, evaluation: last))
            }
        }
        let summary = CohortSummary(configuration: configuration, evaluation: last, teacherTop1: teacherTop1, steps: position.globalStep,
                                    seconds: Date().timeIntervalSince(started), images: images, transport: "inproc")
        try cohortDirectory.writeSummary(summary)
        return summary
    }
}

/// "epoch 2/3: peer 0 (resnet8) 88.10%, peer 1 (resnet8) 87.95%; ensemble 89.02%"
public func epochReport(epoch: Int, configuration: CohortConfiguration, evaluation: CohortEvaluation) -> String {
    let perPeer = configuration.peers.enumerated().map { rank, peer in
        evaluation.peers[rank].count == 0 ? "peer \(rank) (\(peer.model)) absent"
            : String(format: "peer %d (%@) %.2f%%", rank, peer.model, 100 * evaluation.peers[rank].top1)
    }
    return String(format: "epoch %d/%d: %@; ensemble %.2f%%", epoch + 1, configuration.epochs, perPeer.joined(separator: ", "), 100 * evaluation.ensembleTop1)
}
