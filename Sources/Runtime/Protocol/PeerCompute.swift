import Foundation
import Data
import NN
import Training
import Wire

/// A peer's computations and files: carries out the ``PeerWork`` its ``PeerCore`` asks for with its
/// ``PeerTrainer`` on the batches every member derives from the shared seed, and writes
/// `OUTPUT/peer-<rank>/` (metrics, checkpoints). The same for a peer process and for a member of the
/// in-process cohort.
public final class PeerCompute {
    public let rank: Int
    public let configuration: CohortConfiguration
    public let trainer: PeerTrainer
    let data: CohortData
    let directory: PeerRunDirectory
    let host: String
    let log: (CoreLog) -> Void
    /// Told each finished step's status, terms and batch size (the Prometheus series).
    public var onStep: ((PeerStatus, [String: Double], Int) -> Void)?
    /// Told each test evaluation's top-1.
    public var onEvaluation: ((Double) -> Void)?
    /// Whether the epoch's evaluation reports its progress (a peer process does; the in-process cohort
    /// reports the cohort's).
    public var reportsEvaluationProgress = true
    private var loader: (epoch: Int, next: Int, loader: BatchLoader)?
    /// Steps this peer's state has trained.
    public private(set) var done = 0
    private var lastTestTop1: Double?
    private var imagesSince = (count: 0, since: Date())
    /// Training time before this process (from the checkpoint it resumed or went back to) and when this
    /// process's share began: checkpoints record their sum as `elapsed_seconds`.
    private var secondsBefore = 0.0
    private var runningSince = Date()

    /// Builds the network (``restore()`` loads its newest checkpoint).
    /// - Parameters:
    ///   - teacherFeatureCount: the teacher's feature size, when the cohort has one.
    ///   - log: where this peer's records go.
    public init(configuration: CohortConfiguration, rank: Int, data: CohortData, teacherFeatureCount: Int?, host: String,
                log: @escaping (CoreLog) -> Void) throws {
        self.configuration = configuration; self.rank = rank; self.data = data; self.host = host; self.log = log
        trainer = PeerTrainer(rank: rank, configuration: configuration, dataCount: data.trainSet.count,
                              teacherFeatureCount: teacherFeatureCount, stepsPerEpoch: data.stepsPerEpoch)
        directory = try PeerRunDirectory(output: configuration.output, rank: rank)
    }

    /// Seconds this peer's run has trained, over every process that took part in it.
    private var elapsedSeconds: Double { secondsBefore + Date().timeIntervalSince(runningSince) }

    /// Loads the newest checkpoint that reads back whole (a resume); corrupt ones are reported and passed
    /// over. Refuses one saved with other settings before anything is written.
    public func restore() throws {
        let (loaded, skipped) = directory.newestCheckpoint()
        for s in skipped { log(CoreLog(.warning, "passed over a checkpoint", ["why": s])) }
        guard let loaded else {
            log(CoreLog(.info, "no checkpoint to resume from; starting from the initial weights"))
            return
        }
        do { try configuration.checkUnchanged(since: PeerRunDirectory.cohortSettings(of: loaded)) } catch {
            throw PeerError.resume("\(error)")
        }
        do { try trainer.restore(weights: loaded.weights, state: loaded.state) } catch {
            throw PeerError.resume("\(loaded.path): \(error)")
        }
        done = loaded.position.globalStep
        secondsBefore = loaded.position.elapsedSeconds
        runningSince = Date()
        try directory.truncateHistory(afterGlobalStep: done)
        log(CoreLog(.notice, "resumed", ["checkpoint": loaded.path, "global_step": "\(done)"]))
    }

    /// Carries out `work`.
    public func perform(_ work: PeerWork) -> PeerWorkResult {
        do {
            switch work {
            case .rewind(let step): return .rewound(to: try rewind(to: step))
            case .forward(let step, _): return .forwarded(step, outputs: try forward(step))
            case .finish(let step, let others, let teacher, let timing): return .finished(step, status: try finish(step, others, teacher, timing))
            case .evaluate(let e): return evaluate(e)
            case .endEpoch(let e, let test):
                try endEpoch(e, test: test)
                return .epochEnded(e)
            case .checkpoint(let c):
                try checkpoint()
                return .checkpointed(c)
            case .codistill(let step, let copies, let publish, let timing):
                let status = try codistill(step, copies: copies, timing: timing)
                return .codistilled(step, status: status, weights: publish ? trainer.publishedWeights() : nil)
            }
        } catch let error as PeerError {
            return .failed(error)
        } catch {
            return .failed(.files("\(error)"))
        }
    }

    /// The batch of `step`, from a loader positioned there (a new one after a jump: resume, rejoin).
    private func batch(for step: Message.Step) throws -> Batch {
        if loader == nil || loader!.epoch != step.epoch || loader!.next != step.step {
            loader = (step.epoch, step.step, data.loader(epoch: step.epoch, startStep: step.step))
        }
        guard let batch = loader!.loader.next(), batch.step == step.step else {
            throw PeerError.outOfStep("the coordinator asked for step \(step.step) of epoch \(step.epoch); the local sampler disagrees")
        }
        loader!.next = step.step + 1
        return batch
    }

    private func forward(_ step: Message.Step) throws -> [TensorPayload] {
        let batch = try batch(for: step)
        let own = trainer.forward(batch)
        let layout = configuration.outputLayout
        return layout.tensors.map { TensorPayload(name: $0.name, shape: layout.shape(of: $0, batchSize: batch.size), values: own.values(of: $0)) }
    }

    /// Codistillation: the copies of the other peers, by rank — their initial weights (every member
    /// derives them from the seed) until they publish theirs.
    private var copies: [Int: PeerTrainer] = [:]
    /// The step each copy's weights had trained when published (0: the initial weights).
    private var copySteps: [Int: Int] = [:]

    /// A codistillation step: this peer's forward pass, the others' outputs on the same batch from the
    /// copies it holds, the loss, backward pass and update.
    private func codistill(_ step: Message.Step, copies received: [PeerWeights], timing: StepTiming) throws -> PeerStatus {
        if copies.isEmpty {
            for r in configuration.peers.indices where r != rank {
                copies[r] = PeerTrainer(rank: r, configuration: configuration, dataCount: data.trainSet.count, teacherFeatureCount: nil,
                                        stepsPerEpoch: data.stepsPerEpoch)
                copySteps[r] = 0
            }
        }
        for weights in received {
            guard let copy = copies[weights.rank] else { continue }
            do {
                try copy.loadPublished(weights.tensors)
                copySteps[weights.rank] = weights.globalStep
            } catch {
                log(CoreLog(.warning, "dropped peer \(weights.rank)'s weights", ["reason": "\(error)", "global_step": "\(weights.globalStep)"]))
            }
        }
        let batch = try batch(for: step)
        let computing = Date()
        let others = copies.keys.sorted().map { copies[$0]!.copyOutputs(batch) }
        var timing = timing
        // The copies' forward passes stand where the exchange would be.
        timing.exchange = Date().timeIntervalSince(computing)
        _ = trainer.forward(batch)
        let staleness = copySteps.values.map { step.globalStep - $0 }
        return try finish(step, others, nil, timing, extra: ["copies_staleness_steps": Double(staleness.reduce(0, +)) / Double(max(staleness.count, 1))])
    }

    private func finish(_ step: Message.Step, _ others: [PeerOutputs], _ teacher: TeacherOutputs?, _ timing: StepTiming,
                        extra: [String: Double] = [:]) throws -> PeerStatus {
        let spe = data.stepsPerEpoch
        let position = TrainingPosition(epoch: step.epoch, stepInEpoch: step.step, globalStep: step.globalStep, elapsedSeconds: elapsedSeconds)
        let b = trainer.pending?.batch.size ?? 0
        var terms: [String: Double]
        do {
            terms = try trainer.finish(others: others, teacher: teacher, position: position, totalSteps: configuration.epochs * spe)
        } catch {
            throw PeerError.diverged(error)
        }
        done = step.globalStep + 1
        for warning in trainer.takeWarnings() { log(CoreLog(.warning, warning)) }
        if let skip = trainer.lastSkip {
            log(CoreLog(.error, "skipped a step: \(skip.rawValue)",
                        ["global_step": "\(done)", "in_a_row": "\(trainer.consecutiveSkippedSteps)"]))
        }
        let stepSeconds = max(0, Date().timeIntervalSince1970 - timing.received - timing.waited)
        terms["exchange_seconds"] = timing.exchange
        terms["step_seconds"] = stepSeconds
        terms["idle_seconds"] = timing.idle + timing.waited
        terms["peers_present"] = Double(others.count + 1)
        terms.merge(extra) { $1 }
        directory.recordStep(epoch: step.epoch, step: step.step, globalStep: done, batchSize: b, terms: terms)
        imagesSince.count += b
        let rate = Double(imagesSince.count) / max(Date().timeIntervalSince(imagesSince.since), 1e-9)
        if Date().timeIntervalSince(imagesSince.since) > 30 { imagesSince = (0, Date()) }
        let status = PeerStatus(rank: rank, host: host, model: configuration.peers[rank].model, epoch: step.epoch, epochs: configuration.epochs,
                                step: step.step, stepsPerEpoch: spe, globalStep: done,
                                loss: directory.runningMean("total"), accuracy: directory.runningMean("accuracy"),
                                testAccuracy: lastTestTop1, imagesPerSecond: rate, stepSeconds: stepSeconds, exchangeSeconds: timing.exchange,
                                time: Date().timeIntervalSince1970, embeddingCosine: terms["embedding_cosine"])
        onStep?(status, terms, b)
        return status
    }

    private var shape: [Int] {
        let kind = configuration.data.dataSet
        return [kind.channels, kind.height, kind.width]
    }

    /// This peer's test-set logits and their scores.
    private func evaluate(_ e: Message.Evaluate) -> PeerWorkResult {
        let progress = reportsEvaluationProgress
            ? PhaseProgress("epoch \(e.epoch + 1): evaluating on the test set", total: data.testSet.count) { [log] line in log(CoreLog(.info, line)) }
            : nil
        let logits = testLogits(trainer.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: progress)
        let test = score(logits: logits, labels: data.testSet.labels, classCount: configuration.data.dataSet.classCount)
        lastTestTop1 = test.top1
        onEvaluation?(test.top1)
        return .evaluated(e, logits: logits, test: test)
    }

    /// The epoch's line (with `test`) and checkpoint.
    private func endEpoch(_ e: Message.Evaluate, test: EvaluationResult?) throws {
        let position = TrainingPosition(epoch: e.epoch + 1, stepInEpoch: 0, globalStep: done, elapsedSeconds: elapsedSeconds)
        let written = Date()
        try directory.endEpoch(trainer, test: test, position: position, shape: shape)
        let writing = String(format: "checkpoint written (%.1f s)", Date().timeIntervalSince(written))
        if let test {
            log(CoreLog(.info, String(format: "epoch %d/%d: test top-1 %.2f%%, %@", e.epoch + 1, configuration.epochs, 100 * test.top1, writing)))
        } else {
            log(CoreLog(.info, "epoch \(e.epoch + 1)/\(configuration.epochs): \(writing)"))
        }
    }

    /// Goes back to this peer's checkpoint at `step`: a resumed cohort continues from the newest step
    /// every member has a checkpoint of, so that it trains exactly what an uninterrupted run would.
    private func rewind(to step: Int) throws -> Int {
        let (loaded, skipped) = directory.newestCheckpoint(atMost: step)
        for s in skipped { log(CoreLog(.warning, "passed over a checkpoint", ["why": s])) }
        guard let loaded, loaded.position.globalStep == step else {
            throw PeerError.outOfStep("the cohort continues at step \(step), this peer's state has trained \(done) steps and it has no checkpoint at step \(step) to go back to")
        }
        do { try trainer.restore(weights: loaded.weights, state: loaded.state) } catch {
            throw PeerError.resume("\(loaded.path): \(error)")
        }
        done = step
        secondsBefore = loaded.position.elapsedSeconds
        runningSince = Date()
        loader = nil
        try directory.truncateHistory(afterGlobalStep: step)
        return step
    }

    /// A cohort checkpoint between epoch ends, at this peer's own step.
    private func checkpoint() throws {
        let spe = data.stepsPerEpoch
        try directory.saveCheckpoint(trainer, position: TrainingPosition(epoch: done / spe, stepInEpoch: done % spe, globalStep: done,
                                                                         elapsedSeconds: elapsedSeconds), shape: shape)
    }
}
