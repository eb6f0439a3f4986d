import Foundation
import Logging
import Data
import NN
import Training
import Runtime
import Wire
import ZeroMQ

/// Why a peer process stopped before the run finished.
public enum PeerError: Error, CustomStringConvertible {
    case refused(reason: String)
    case otherConfiguration(WireError)
    case noCoordinator(endpoint: String, seconds: Double)
    case outOfStep(String)
    case stopped(reason: String)
    case signal(Int32)
    case diverged(DivergenceError)
    case resume(String)

    public var description: String {
        switch self {
        case .refused(let reason): "the coordinator refused this peer: \(reason)"
        case .otherConfiguration(let error): "the coordinator runs another configuration (\(error)); start every process with the same file"
        case .noCoordinator(let endpoint, let seconds): "no coordinator answered at \(endpoint) within \(Int(seconds)) s (network.join_timeout)"
        case .outOfStep(let why): "out of step with the coordinator: \(why)"
        case .stopped(let reason): "stopped by the coordinator: \(reason)"
        case .signal(let s): "stopped by signal \(s)"
        case .diverged(let e): "\(e)"
        case .resume(let why): "cannot resume: \(why)"
        }
    }
}

/// One peer process of a distributed cohort (`cohort peer`): trains its network with ``PeerTrainer``
/// on the batches every member derives from the shared seed, exchanging outputs through the
/// coordinator, and writes `OUTPUT/peer-<rank>/` (metrics, checkpoints) like the in-process cohort.
///
/// It survives the coordinator: when the coordinator stops answering (heartbeats), the peer drops the
/// step in flight and rejoins — with the coordinator back, or a restarted one — keeping its state.
/// Started with `resume`, it loads its newest valid checkpoint and rejoins at the cohort's next step.
public final class PeerNode {
    public let rank: Int
    public let configuration: CohortConfiguration
    public let logger: Logger
    let coordinatorEndpoint: String
    let logs: BufferedSink
    let host: String
    let data: CohortData
    let trainer: PeerTrainer
    let directory: PeerRunDirectory
    let teacherFeatureCount: Int?
    let keys: CohortKeys?
    let codec: WireCodec
    private let context: ZMQContext
    private var socket: ProtocolSocket
    private var heartbeat: HeartbeatThread?
    private var loader: (epoch: Int, next: Int, loader: BatchLoader)?
    /// Steps this peer's state has trained.
    private var done = 0
    private var lastHeard = Date()
    private var lastTestTop1: Double?
    /// The Prometheus endpoint and this peer's series (`--metrics-port`).
    private var metrics: (endpoint: MetricsEndpoint, series: PeerMetrics)?
    /// The status sent after the last step (sent again with the test accuracy after an evaluation).
    private var lastStatus: PeerStatus?
    private var imagesSince = (count: 0, since: Date())
    /// Training time before this process (from the checkpoint it resumed or went back to) and when this
    /// process's share began: checkpoints record their sum as `elapsed_seconds`.
    private var secondsBefore = 0.0
    private var runningSince = Date()

    /// Seconds this peer's run has trained, over every process that took part in it.
    private var elapsedSeconds: Double { secondsBefore + Date().timeIntervalSince(runningSince) }

    /// Loads the data, builds the network (from its newest checkpoint with `resume`) and connects
    /// (without waiting) to `coordinator`.
    /// - Parameters:
    ///   - keyPath: this peer's secret key file, required when the configuration has `security`.
    ///   - console: where this peer's records are printed (info and above); every record at info and
    ///     above also goes to the coordinator's log stream.
    ///   - metricsPort: serve this peer's step metrics for Prometheus on this port (0: any free one).
    public init(configuration: CohortConfiguration, rank: Int, coordinator: String, resume: Bool = false, keyPath: String? = nil,
                console: any LogSink = ConsoleSink(), metricsPort: Int? = nil) throws {
        precondition(configuration.peers.indices.contains(rank), "rank \(rank) is checked by the caller")
        self.rank = rank
        self.configuration = configuration
        coordinatorEndpoint = coordinator
        let host = ProcessInfo.processInfo.hostName
        self.host = host
        let logs = BufferedSink()
        self.logs = logs
        logger = Logger(label: "cohort.peer") { label in
            CohortLogHandler(label: label, rank: rank, host: host, level: .info, sink: FanOutSink([(console, .info), (logs, .info)]))
        }
        if let security = configuration.security {
            guard let keyPath else { throw SecurityError(description: "the configuration has security keys: give this peer its secret key (--key)") }
            keys = try CohortKeys(settings: security, secretKeyPath: keyPath)
            guard keys!.peers[rank] == keys!.own.publicKey else {
                throw SecurityError(description: "\(keyPath) is not the key of peer \(rank) (security.peer_keys[\(rank)])")
            }
        } else {
            keys = nil
        }
        let dataLogger = logger
        data = try CohortData.loading(configuration: configuration) { dataLogger.info(Logger.Message(stringLiteral: $0)) }
        let kind = configuration.data.dataSet
        teacherFeatureCount = configuration.teacher.map {
            Architecture(name: $0.model)!.make(inputChannels: kind.channels, classCount: kind.classCount, seed: 0).featureCount
        }
        trainer = PeerTrainer(rank: rank, configuration: configuration, dataCount: data.trainSet.count,
                              teacherFeatureCount: teacherFeatureCount, stepsPerEpoch: data.stepsPerEpoch)
        directory = try PeerRunDirectory(output: configuration.output, rank: rank)
        codec = WireCodec(digest: configuration.digest)
        context = try ZMQContext()
        socket = try Self.connect(context: context, endpoint: coordinator, codec: codec, keys: keys, timeout: configuration.network.timeout,
                                  logger: logger)
        if let metricsPort {
            let endpoint = try MetricsEndpoint(port: metricsPort)
            metrics = (endpoint, PeerMetrics(registry: endpoint.registry, rank: rank, model: configuration.peers[rank].model))
            logger.info("serving metrics at http://\(host):\(endpoint.port)/metrics", metadata: ["port": "\(endpoint.port)"])
        }
        if resume { try restore() }
    }

    private static func connect(context: ZMQContext, endpoint: String, codec: WireCodec, keys: CohortKeys?, timeout: Double,
                                logger: Logger) throws -> ProtocolSocket {
        let dealer = try ZMQSocket(context, type: .dealer)
        try dealer.setLinger(milliseconds: 2000)
        try dealer.setSendTimeout(milliseconds: Int(timeout * 1000))
        try dealer.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        if let keys { try dealer.makeCurveClient(serverKey: keys.coordinator, keys: keys.own) }
        try dealer.connect(endpoint)
        return ProtocolSocket(dealer, codec: codec, logger: logger, routed: false)
    }

    /// Loads the newest checkpoint that reads back whole; corrupt ones are reported and passed over.
    private func restore() throws {
        let (loaded, skipped) = directory.newestCheckpoint()
        for s in skipped { logger.warning("passed over a checkpoint", metadata: ["why": "\(s)"]) }
        guard let loaded else {
            logger.info("no checkpoint to resume from; starting from the initial weights")
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
        logger.notice("resumed", metadata: ["checkpoint": "\(loaded.path)", "global_step": "\(done)"])
    }

    /// Joins the cohort and trains until the coordinator says the run is finished.
    /// - Throws: ``PeerError`` when refused, out of step, stopped or left without a coordinator.
    public func run() throws {
        runningSince = Date()
        heartbeat = try HeartbeatThread(context: context, endpoint: coordinatorEndpoint, rank: rank, codec: codec,
                                        interval: configuration.network.heartbeatInterval, keys: keys)
        defer { heartbeat?.stop() }
        do {
            try join()
            try serve()
        } catch {
            logger.error("\(error)")
            flushLogs()
            // Tell the coordinator, unless it is the one that stopped the run.
            if case PeerError.stopped = error {} else { try? socket.send(.shutdown(.init(.failed("\(error)")))) }
            throw error
        }
    }

    /// Says hello until the coordinator welcomes this peer (within `network.join_timeout`).
    private func join() throws {
        logger.info("joining", metadata: ["coordinator": "\(coordinatorEndpoint)", "model": "\(trainer.architecture.rawValue)",
                                          "steps_done": "\(done)"])
        let deadline = Date() + configuration.network.joinTimeout
        let since = Date()
        var nextHello = Date()
        var nextNotice = Date() + 10
        while true {
            try checkStop()
            guard Date() < deadline else { throw PeerError.noCoordinator(endpoint: coordinatorEndpoint, seconds: configuration.network.joinTimeout) }
            if Date() >= nextNotice {
                nextNotice = Date() + 30
                logger.notice("no answer from the coordinator yet; it may still be loading its data or evaluating its teacher, or not be running at \(coordinatorEndpoint)",
                              metadata: ["waited_seconds": "\(Int(Date().timeIntervalSince(since)))",
                                         "gives_up_in_seconds": "\(Int(deadline.timeIntervalSinceNow))"])
            }
            if Date() >= nextHello {
                try? socket.send(.hello(.init(rank: rank, model: configuration.peers[rank].model, host: host, resumeStep: done)))
                nextHello = Date() + max(2, configuration.network.heartbeatInterval * 2)
            }
            switch try socket.receive(until: min(nextHello, Date() + 0.25)) {
            case .message(.welcome(let w), _, _)?:
                guard w.accepted else { throw PeerError.refused(reason: w.reason ?? "no reason given") }
                lastHeard = Date()
                heartbeat?.touch()
                heartbeat?.session = w.session
                logger.info("joined the cohort")
                flushLogs()
                return
            case .invalid(let error, _)?:
                if case .configuration = error { throw PeerError.otherConfiguration(error) }
            case .message(let m, _, _)?:
                logger.warning("dropped a \(m.type) message while joining")
            case nil:
                continue
            }
        }
    }

    /// After losing the coordinator: a fresh connection (nothing stale queued), then hello again.
    private func rejoin(_ why: String) throws {
        logger.warning("lost the coordinator; rejoining", metadata: ["why": "\(why)", "steps_done": "\(done)"])
        heartbeat?.session = nil  // the beats stop vouching for the connection left behind
        socket = try Self.connect(context: context, endpoint: coordinatorEndpoint, codec: codec, keys: keys,
                                  timeout: configuration.network.timeout, logger: logger)
        try join()
    }

    private func serve() throws {
        while true {
            let waitStarted = Date()
            guard let message = try next(awaiting: "the next step") else {
                try rejoin("no heartbeat from the coordinator for \(Int(configuration.network.heartbeatTimeout)) s")
                continue
            }
            switch message {
            case .step(let step, let teacher):
                try trainStep(step, teacher: teacher, idle: Date().timeIntervalSince(waitStarted))
            case .evaluate(let e):
                try evaluate(e)
            case .checkpoint(let c):
                try checkpoint(c)
            case .shutdown(let s):
                if s.cause == .finished {
                    logger.info("the cohort finished")
                    flushLogs()
                    return
                }
                throw PeerError.stopped(reason: s.reason)
            default:
                logger.warning("dropped an unexpected \(message.type) message")
            }
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

    /// One training step: forward, send the outputs, receive the others', finish the step.
    private func trainStep(_ step: Message.Step, teacher tensors: [TensorPayload], idle: Double) throws {
        let started = Date()
        let spe = data.stepsPerEpoch
        guard step.epoch < configuration.epochs, step.step < spe, step.globalStep == step.epoch * spe + step.step else {
            throw PeerError.outOfStep("step \(step.step) of epoch \(step.epoch) as global step \(step.globalStep) does not fit \(configuration.epochs) epochs of \(spe) steps")
        }
        if step.globalStep < done { try rewind(to: step.globalStep) }
        if step.globalStep > done {
            logger.warning("skipping ahead to the cohort's step", metadata: ["steps_done": "\(done)", "cohort_step": "\(step.globalStep)"])
        }
        let batch = try batch(for: step)
        let b = batch.size
        let kind = configuration.data.dataSet
        var teacherOutputs: TeacherOutputs?
        if let t = teacherFeatureCount {
            let byName = try expectTensors(tensors, [("feature", [b, t]), ("logits", [b, kind.classCount]), ("gradient_element", [b, t])])
            teacherOutputs = TeacherOutputs(batchSize: b, featureCount: t, classCount: kind.classCount, feature: byName["feature"]!.values,
                                            logits: byName["logits"]!.values, gradientElement: byName["gradient_element"]!.values)
        } else {
            _ = try expectTensors(tensors, [])
        }
        let own = trainer.forward(batch)
        let layout = configuration.outputLayout
        let mine = layout.tensors.map { TensorPayload(name: $0.name, shape: layout.shape(of: $0, batchSize: b), values: own.values(of: $0)) }
        let sent = Date()
        try socket.send(.outputs(.init(rank: rank, globalStep: step.globalStep), tensors: mine))
        var others: [PeerOutputs] = []
        var waited = 0.0
        while true {
            guard let message = try next(awaiting: "the others' outputs of step \(step.globalStep)", patience: 2 * configuration.network.timeout) else {
                // The coordinator went away, or dropped this peer from the step: the step is abandoned.
                try rejoin("no others' outputs for step \(step.globalStep)")
                return
            }
            if case .step = message {
                // The cohort moved on without this peer (it was marked absent): rejoin properly.
                try rejoin("the cohort moved on while this peer awaited step \(step.globalStep)'s outputs")
                return
            }
            guard case .others(let body, let tensors) = message, body.globalStep == step.globalStep, body.rank == rank else {
                if case .shutdown(let s) = message { throw PeerError.stopped(reason: s.reason) }
                logger.warning("dropped an unexpected \(message.type) message", metadata: ["awaiting": "others of step \(step.globalStep)"])
                continue
            }
            do {
                others = try unpackOthers(tensors, ranks: body.ranks, batchSize: b)
            } catch {
                logger.warning("dropped invalid others", metadata: ["reason": "\(error)"])
                continue
            }
            waited = body.waitSeconds
            break
        }
        let exchange = max(0, Date().timeIntervalSince(sent) - waited)
        let position = TrainingPosition(epoch: step.epoch, stepInEpoch: step.step, globalStep: step.globalStep, elapsedSeconds: elapsedSeconds)
        var terms: [String: Double]
        do {
            terms = try trainer.finish(others: others, teacher: teacherOutputs, position: position, totalSteps: configuration.epochs * spe)
        } catch {
            throw PeerError.diverged(error)
        }
        done = step.globalStep + 1
        for warning in trainer.takeWarnings() { logger.warning(Logger.Message(stringLiteral: warning)) }
        if terms["skipped"] != nil {
            logger.error("skipped a step: the loss or a gradient was not finite", metadata: ["global_step": "\(done)",
                                                                                           "in_a_row": "\(trainer.consecutiveSkippedSteps)"])
        }
        let stepSeconds = Date().timeIntervalSince(started) - waited
        terms["exchange_seconds"] = exchange
        terms["step_seconds"] = stepSeconds
        terms["idle_seconds"] = idle + waited
        terms["peers_present"] = Double(others.count + 1)
        directory.recordStep(epoch: step.epoch, step: step.step, globalStep: done, batchSize: b, terms: terms)
        imagesSince.count += b
        let rate = Double(imagesSince.count) / max(Date().timeIntervalSince(imagesSince.since), 1e-9)
        if Date().timeIntervalSince(imagesSince.since) > 30 { imagesSince = (0, Date()) }
        let status = PeerStatus(rank: rank, host: host, model: configuration.peers[rank].model, epoch: step.epoch, epochs: configuration.epochs,
                                step: step.step, stepsPerEpoch: spe, globalStep: done,
                                loss: directory.runningMean("total"), accuracy: directory.runningMean("accuracy"),
                                testAccuracy: lastTestTop1, imagesPerSecond: rate, stepSeconds: stepSeconds, exchangeSeconds: exchange,
                                time: Date().timeIntervalSince1970, embeddingCosine: terms["embedding_cosine"])
        metrics?.series.recordStep(status, terms: terms, batchSize: b)
        flushLogs(status: status)
    }

    /// The other present members' outputs, in rank order, checked against the shapes the configuration implies.
    private func unpackOthers(_ tensors: [TensorPayload], ranks: [Int], batchSize b: Int) throws -> [PeerOutputs] {
        let classes = configuration.data.dataSet.classCount
        let d = configuration.mcl.embeddingDimension
        guard ranks == ranks.sorted(), Set(ranks).count == ranks.count, !ranks.contains(rank),
              ranks.allSatisfy({ configuration.peers.indices.contains($0) }) else {
            throw WireError.header("ranks \(ranks) are not distinct other ranks of this cohort, ascending")
        }
        let layout = configuration.outputLayout
        let byName = try expectTensors(tensors, layout.expectedOthers(ranks: ranks, batchSize: b))
        return ranks.map { r in
            PeerOutputs(rank: r, batchSize: b, embedding: OutputLayout.values(of: .embedding, rank: r, in: byName), embeddingDimension: d,
                        auxiliaryEmbeddings: (1..<CohortConfiguration.MCLSettings.layerCount).compactMap {
                            OutputLayout.values(of: .auxiliaryEmbedding(branch: $0), rank: r, in: byName)
                        },
                        logits: OutputLayout.values(of: .logits, rank: r, in: byName)!, classCount: classes)
        }
    }

    private var shape: [Int] {
        let kind = configuration.data.dataSet
        return [kind.channels, kind.height, kind.width]
    }

    /// Epoch end: this peer's test-set logits (on the epochs the cohort evaluates), its epoch line and
    /// checkpoint, then the logits to the coordinator — so that the cohort's epoch result follows every
    /// peer's line, and a coordinator that has the logits knows the checkpoint exists.
    private func evaluate(_ e: Message.Evaluate) throws {
        if e.globalStep < done { try rewind(to: e.globalStep) }
        let kind = configuration.data.dataSet
        var test: EvaluationResult?
        var logits: [Float] = []
        if e.evaluatesTestSet {
            flushLogs(phase: .evaluating)
            let progress = PhaseProgress("epoch \(e.epoch + 1): evaluating on the test set", total: data.testSet.count) { [self] line in
                logger.info(Logger.Message(stringLiteral: line))
                flushLogs()
            }
            logits = testLogits(trainer.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: progress)
            test = score(logits: logits, labels: data.testSet.labels, classCount: kind.classCount)
            lastTestTop1 = test!.top1
            metrics?.series.recordEvaluation(top1: test!.top1)
        }
        flushLogs(phase: .checkpointing)
        let position = TrainingPosition(epoch: e.epoch + 1, stepInEpoch: 0, globalStep: done, elapsedSeconds: elapsedSeconds)
        let written = Date()
        try directory.endEpoch(trainer, test: test, position: position, shape: shape)
        let writing = String(format: "checkpoint written (%.1f s)", Date().timeIntervalSince(written))
        if let test {
            logger.info(Logger.Message(stringLiteral: String(format: "epoch %d/%d: test top-1 %.2f%%, %@", e.epoch + 1,
                                                             configuration.epochs, 100 * test.top1, writing)))
        } else {
            logger.info(Logger.Message(stringLiteral: "epoch \(e.epoch + 1)/\(configuration.epochs): \(writing)"))
        }
        flushLogs(status: lastStatus.map { $0.with(testAccuracy: lastTestTop1) }, phase: .waiting)
        if e.evaluatesTestSet {
            try socket.send(.evaluation(.init(rank: rank, epoch: e.epoch),
                                        tensors: [TensorPayload(name: "logits", shape: [data.testSet.count, kind.classCount], values: logits)]))
        }
    }

    /// Goes back to this peer's checkpoint at `step`: a resumed cohort continues from the newest step
    /// every member has a checkpoint of, so that it trains exactly what an uninterrupted run would.
    private func rewind(to step: Int) throws {
        let (loaded, skipped) = directory.newestCheckpoint(atMost: step)
        for s in skipped { logger.warning("passed over a checkpoint", metadata: ["why": "\(s)"]) }
        guard let loaded, loaded.position.globalStep == step else {
            throw PeerError.outOfStep("the cohort continues at step \(step), this peer's state has trained \(done) steps and it has no checkpoint at step \(step) to go back to")
        }
        do { try trainer.restore(weights: loaded.weights, state: loaded.state) } catch {
            throw PeerError.resume("\(loaded.path): \(error)")
        }
        logger.notice("went back to the cohort's step", metadata: ["steps_done": "\(done)", "cohort_step": "\(step)", "checkpoint": "\(loaded.path)"])
        done = step
        secondsBefore = loaded.position.elapsedSeconds
        runningSince = Date()
        loader = nil
        try directory.truncateHistory(afterGlobalStep: step)
    }

    /// A cohort checkpoint between epoch ends.
    private func checkpoint(_ c: Message.Checkpoint) throws {
        flushLogs(phase: .checkpointing)
        defer { flushLogs(phase: .waiting) }
        let spe = data.stepsPerEpoch
        try directory.saveCheckpoint(trainer, position: TrainingPosition(epoch: done / spe, stepInEpoch: done % spe, globalStep: done,
                                                                         elapsedSeconds: elapsedSeconds), shape: shape)
        if done != c.globalStep {
            logger.warning("checkpoint written at this peer's own step", metadata: ["steps_done": "\(done)", "cohort_step": "\(c.globalStep)"])
        }
    }

    /// The next message from the coordinator; `nil` when the coordinator seems lost: no heartbeat answer
    /// for `network.heartbeat_timeout` (or nothing at all for `patience` seconds, when given).
    private func next(awaiting: String, patience: Double? = nil) throws -> Message? {
        let since = Date()
        while true {
            try checkStop()
            let alive = max(lastHeard, heartbeat?.lastAnswered ?? lastHeard)
            if Date().timeIntervalSince(alive) > configuration.network.heartbeatTimeout { return nil }
            if let patience, Date().timeIntervalSince(max(since, lastHeard)) > patience { return nil }
            switch try socket.receive(until: Date() + 0.25) {
            case .message(let message, _, _)?:
                lastHeard = Date()
                if case .heartbeat = message { continue }
                // The answer to a hello repeated while the coordinator was busy (loading a teacher, say):
                // the admission this peer already holds, nothing to act on.
                if case .welcome(let w) = message, w.accepted, w.session != nil, w.session == heartbeat?.session {
                    logger.debug("a repeated welcome (the answer to an earlier hello)")
                    continue
                }
                return message
            case .invalid?, nil:
                continue
            }
        }
    }

    /// Sends the buffered log records (and `status`, and a change of `phase`) to the coordinator.
    private func flushLogs(status: PeerStatus? = nil, phase: Phase? = nil) {
        let (records, dropped) = logs.drain()
        var all = records
        if dropped > 0 {
            all.insert(LogRecord(time: Date().timeIntervalSince1970, level: "warning", rank: rank, host: host, label: "cohort.peer",
                                 message: "\(dropped) log record(s) dropped (buffer full)"), at: 0)
        }
        guard !all.isEmpty || status != nil || phase != nil else { return }
        if let status { lastStatus = status }
        try? socket.send(.log(.init(records: all, status: status, phase: phase)))
    }

    private func checkStop() throws {
        if let s = StopSignal.current { throw PeerError.signal(s) }
    }
}
