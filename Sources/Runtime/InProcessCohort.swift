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

    /// Loads the data (telling `report` what it loads) and builds every network.
    public init(configuration: CohortConfiguration, report: (String) -> Void = { _ in }) throws {
        self.configuration = configuration
        // The teacher first: a wrong checkpoint is reported before the data set is loaded.
        let teacherRunner = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
        data = try CohortData.loading(configuration: configuration, report: report)
        teacher = teacherRunner
        let teacherFeatures = teacherRunner?.model.featureCount
        let (count, steps) = (data.trainSet.count, data.stepsPerEpoch)
        peers = (0..<configuration.peers.count).map {
            PeerTrainer(rank: $0, configuration: configuration, dataCount: count, teacherFeatureCount: teacherFeatures, stepsPerEpoch: steps)
        }
    }

    /// Trains every epoch; writes per-peer metrics and checkpoints, the cohort's metrics and summary.
    /// - Parameters:
    ///   - resume: continue from the peers' newest common checkpoint (refused when the run was started
    ///     with other settings); the logs are cut back to that step, so each stays one history.
    ///   - shouldStop: asked between steps; when it returns true every peer writes a checkpoint at the
    ///     step reached and ``CohortStopped`` is thrown (continue with `resume`).
    public func run(resume: Bool = false, shouldStop: () -> Bool = { false },
                    progress: ProgressReporter = ProgressReporter()) throws -> CohortSummary {
        let out = configuration.output
        let cohortDirectory = try CohortRunDirectory(output: out)
        let peerDirectories = try peers.map { try PeerRunDirectory(output: out, rank: $0.rank) }
        let kind = configuration.data.dataSet
        let shape = [kind.channels, kind.height, kind.width]
        let spe = data.stepsPerEpoch
        let totalSteps = configuration.epochs * spe
        var position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
        if resume, let restored = try restore(peerDirectories, progress: progress) {
            position = restored
            try cohortDirectory.truncateHistory(afterGlobalStep: position.globalStep)
        }
        let teacherTop1 = teacher.map { teacher in
            let phase = PhaseProgress("evaluating the teacher (\(configuration.teacher!.model)) on the test set", total: data.testSet.count,
                                      report: progress.log)
            let top1 = evaluate(teacher.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: phase).top1
            phase.finish(String(format: "test top-1 %.2f%%", 100 * top1))
            return top1
        }
        progress.log("cohort of \(peers.count) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(kind.rawValue): \(data.trainSet.count) images, \(spe) steps/epoch, \(configuration.epochs) epochs")
        let started = Date() - position.elapsedSeconds
        let runStarted = Date()
        var images = 0
        var last = CohortEvaluation(peers: [], ensembleTop1: 0, ensembleTop5: 0)
        func savedPosition() -> TrainingPosition {
            var p = position
            p.epoch = position.globalStep / spe; p.stepInEpoch = position.globalStep % spe
            p.elapsedSeconds = Date().timeIntervalSince(started)
            return p
        }
        for epoch in (position.globalStep / spe)..<configuration.epochs {
            position.epoch = epoch
            let loader = data.loader(epoch: epoch, startStep: position.globalStep - epoch * spe)
            while let batch = loader.next() {
                if shouldStop() {
                    for p in peers { try peerDirectories[p.rank].saveCheckpoint(p, position: savedPosition(), shape: shape) }
                    throw CohortStopped(globalStep: position.globalStep)
                }
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
                let elapsed = Date().timeIntervalSince(runStarted)
                let rate = Double(images) / max(elapsed, 1e-9)
                let summary = peers.map { String(format: "p%d %.3f/%.0f%%", $0.rank, peerDirectories[$0.rank].runningMean("total"),
                                                 100 * peerDirectories[$0.rank].runningMean("accuracy")) }.joined(separator: "  ")
                progress.line(String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", epoch + 1, configuration.epochs,
                                     batch.step + 1, spe, summary, rate,
                                     ProgressReporter.duration(Double(totalSteps - position.globalStep) * Double(configuration.batchSize) / max(rate, 1e-9))),
                              final: batch.step + 1 == spe)
                if configuration.checkpointEvery > 0, position.globalStep % configuration.checkpointEvery == 0, position.globalStep % spe != 0 {
                    for p in peers { try peerDirectories[p.rank].saveCheckpoint(p, position: savedPosition(), shape: shape) }
                }
            }
            let evaluated = configuration.evaluates(epoch: epoch)
            if evaluated {
                let phase = PhaseProgress("epoch \(epoch + 1): evaluating \(peers.count == 1 ? "the network" : "\(peers.count) networks") on the test set",
                                          total: peers.count * data.testSet.count, report: progress.log)
                last = evaluateCohort(peers.map(\.model), on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: phase)
                phase.finish()
            }
            let saved = savedPosition()
            for p in peers {
                try peerDirectories[p.rank].endEpoch(p, test: evaluated ? last.peers[p.rank] : nil, position: saved, shape: shape)
            }
            if evaluated {
                cohortDirectory.recordEpoch(epoch, globalStep: position.globalStep, evaluation: last, seconds: Date().timeIntervalSince(started))
                progress.log(epochReport(epoch: epoch, configuration: configuration, evaluation: last))
            }
        }
        if last.peers.isEmpty {
            // Resumed after the last epoch had ended: score what was loaded.
            last = evaluateCohort(peers.map(\.model), on: data.testSet, batchSize: configuration.evaluationBatchSize)
        }
        let summary = CohortSummary(configuration: configuration, evaluation: last, teacherTop1: teacherTop1, steps: position.globalStep,
                                    seconds: Date().timeIntervalSince(started), images: images, transport: "inproc")
        try cohortDirectory.writeSummary(summary)
        return summary
    }

    /// Loads every peer from its newest checkpoint at the step they all reached, after checking the
    /// run's recorded settings against this configuration; cuts the peers' logs back to that step.
    /// Returns the position, or nil when there is nothing to resume from.
    private func restore(_ directories: [PeerRunDirectory], progress: ProgressReporter) throws -> TrainingPosition? {
        let newest = directories.map { $0.newestCheckpoint() }
        for (_, skipped) in newest { for s in skipped { progress.log("warning: passed over a checkpoint: \(s)") } }
        guard newest.contains(where: { $0.0 != nil }) else {
            progress.log("no checkpoint to resume from; starting at step 0")
            return nil
        }
        guard let common = newest.map({ $0.0?.position.globalStep ?? -1 }).min(), common >= 0 else {
            throw ResumeError.inconsistent("some peers have no checkpoint (\(newest.enumerated().filter { $0.element.0 == nil }.map { "peer \($0.offset)" }.joined(separator: ", ")))")
        }
        var position: TrainingPosition?
        for (p, directory) in zip(peers, directories) {
            let (loaded, _) = directory.newestCheckpoint(atMost: common)
            guard let loaded, loaded.position.globalStep == common else {
                throw ResumeError.inconsistent("peer \(p.rank) has no checkpoint at step \(common), the newest every peer reached")
            }
            try configuration.checkUnchanged(since: PeerRunDirectory.cohortSettings(of: loaded))
            try p.restore(weights: loaded.weights, state: loaded.state)
            try directory.truncateHistory(afterGlobalStep: common)
            position = loaded.position
        }
        progress.log("resuming at step \(common) of \(configuration.epochs * data.stepsPerEpoch)")
        return position
    }
}

/// The in-process cohort stopped when asked (a signal), after every peer wrote a checkpoint at `globalStep`.
public struct CohortStopped: Error, CustomStringConvertible {
    public let globalStep: Int
    public var description: String { "stopped at step \(globalStep); every peer wrote a checkpoint there" }
}

/// "epoch 2/3: peer 0 (resnet8) 88.10%, peer 1 (resnet8) 87.95%; ensemble 89.02%"
public func epochReport(epoch: Int, configuration: CohortConfiguration, evaluation: CohortEvaluation) -> String {
    let perPeer = configuration.peers.enumerated().map { rank, peer in
        evaluation.peers[rank].count == 0 ? "peer \(rank) (\(peer.model)) absent"
            : String(format: "peer %d (%@) %.2f%%", rank, peer.model, 100 * evaluation.peers[rank].top1)
    }
    return String(format: "epoch %d/%d: %@; ensemble %.2f%%", epoch + 1, configuration.epochs, perPeer.joined(separator: ", "), 100 * evaluation.ensembleTop1)
}
