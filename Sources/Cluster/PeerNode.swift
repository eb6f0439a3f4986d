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
    case coordinatorSilent(seconds: Double, awaiting: String)
    case outOfStep(String)
    case stopped(reason: String)
    case signal(Int32)

    public var description: String {
        switch self {
        case .refused(let reason): "the coordinator refused this peer: \(reason)"
        case .otherConfiguration(let error): "the coordinator runs another configuration (\(error)); start every process with the same file"
        case .noCoordinator(let endpoint, let seconds): "no coordinator answered at \(endpoint) within \(Int(seconds)) s (network.join_timeout)"
        case .coordinatorSilent(let seconds, let awaiting): "the coordinator sent nothing for \(Int(seconds)) s while this peer awaited \(awaiting) (network.timeout)"
        case .outOfStep(let why): "out of step with the coordinator: \(why)"
        case .stopped(let reason): "stopped by the coordinator: \(reason)"
        case .signal(let s): "stopped by signal \(s)"
        }
    }
}

/// One peer process of a distributed cohort (`cohort peer`): trains its network with ``PeerTrainer``
/// on the batches every member derives from the shared seed, exchanging outputs through the
/// coordinator, and writes `OUTPUT/peer-<rank>/` (metrics, checkpoints) like the in-process cohort.
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
    private let context: ZMQContext
    private let socket: ProtocolSocket
    private var loader: (epoch: Int, loader: BatchLoader)?
    private var lastHeard = Date()
    private var lastTestTop1: Double?
    private var imagesSince = (count: 0, since: Date())

    /// Loads the data, builds the network and connects (without waiting) to `coordinator`.
    /// - Parameter console: where this peer's records are printed (info and above); every record at
    ///   info and above also goes to the coordinator's log stream.
    public init(configuration: CohortConfiguration, rank: Int, coordinator: String, console: any LogSink = ConsoleSink()) throws {
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
        data = try CohortData(configuration: configuration)
        let kind = configuration.data.dataSet
        teacherFeatureCount = configuration.teacher.map {
            Architecture(name: $0.model)!.make(inputChannels: kind.channels, classCount: kind.classCount, seed: 0).featureCount
        }
        trainer = PeerTrainer(rank: rank, configuration: configuration, dataCount: data.trainSet.count,
                              teacherFeatureCount: teacherFeatureCount, stepsPerEpoch: data.stepsPerEpoch)
        directory = try PeerRunDirectory(output: configuration.output, rank: rank)
        context = try ZMQContext()
        let codec = WireCodec(digest: configuration.digest)
        let dealer = try ZMQSocket(context, type: .dealer)
        try dealer.setLinger(milliseconds: 2000)
        try dealer.setSendTimeout(milliseconds: Int(configuration.network.timeout * 1000))
        try dealer.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        try dealer.connect(coordinator)
        socket = ProtocolSocket(dealer, codec: codec, logger: logger, routed: false)
    }

    /// Joins the cohort and trains until the coordinator says the run is finished.
    /// - Throws: ``PeerError`` when refused, out of step, stopped or left without a coordinator.
    public func run() throws {
        do {
            try join()
            try serve()
        } catch {
            logger.error("\(error)")
            flushLogs()
            // Tell the coordinator, unless it is the one that stopped the run.
            if case PeerError.stopped = error {} else { try? socket.send(.shutdown(.init(reason: "\(error)"))) }
            throw error
        }
    }

    private func join() throws {
        logger.info("joining", metadata: ["coordinator": "\(coordinatorEndpoint)", "model": "\(trainer.architecture.rawValue)"])
        try socket.send(.hello(.init(rank: rank, model: configuration.peers[rank].model, host: host)))
        let deadline = Date() + configuration.network.joinTimeout
        while true {
            try checkStop()
            guard Date() < deadline else { throw PeerError.noCoordinator(endpoint: coordinatorEndpoint, seconds: configuration.network.joinTimeout) }
            switch try socket.receive(until: min(deadline, Date() + 0.25)) {
            case .message(.welcome(let w), _)?:
                guard w.accepted else { throw PeerError.refused(reason: w.reason ?? "no reason given") }
                lastHeard = Date()
                logger.info("joined the cohort")
                flushLogs()
                return
            case .invalid(let error, _)?:
                if case .configuration = error { throw PeerError.otherConfiguration(error) }
            case .message(let m, _)?:
                logger.warning("dropped a \(m.type) message while joining")
            case nil:
                continue
            }
        }
    }

    private func serve() throws {
        while true {
            let waitStarted = Date()
            let message = try next(awaiting: "the next step")
            switch message {
            case .step(let step, let teacher):
                try trainStep(step, teacher: teacher, idle: Date().timeIntervalSince(waitStarted))
            case .evaluate(let e):
                try evaluate(e)
            case .shutdown(let s):
                if s.reason == "finished" {
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

    /// One training step: forward, send the outputs, receive the others', finish the step.
    private func trainStep(_ step: Message.Step, teacher tensors: [TensorPayload], idle: Double) throws {
        let started = Date()
        let spe = data.stepsPerEpoch
        guard step.epoch < configuration.epochs, step.step < spe, step.globalStep == step.epoch * spe + step.step else {
            throw PeerError.outOfStep("step \(step.step) of epoch \(step.epoch) as global step \(step.globalStep) does not fit \(configuration.epochs) epochs of \(spe) steps")
        }
        if loader?.epoch != step.epoch { loader = (step.epoch, data.loader(epoch: step.epoch, startStep: step.step)) }
        guard let batch = loader!.loader.next(), batch.step == step.step else {
            throw PeerError.outOfStep("the coordinator asked for step \(step.step) of epoch \(step.epoch); the local sampler disagrees")
        }
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
        var mine = [TensorPayload(name: "logits", shape: [b, own.classCount], values: own.logits)]
        if let e = own.embedding { mine.insert(TensorPayload(name: "embedding", shape: [b, own.embeddingDimension], values: e), at: 0) }
        let sent = Date()
        try socket.send(.outputs(.init(rank: rank, globalStep: step.globalStep), tensors: mine))
        var others: [PeerOutputs] = []
        var waited = 0.0
        while true {
            let message = try next(awaiting: "the others' outputs of step \(step.globalStep)")
            guard case .others(let body, let tensors) = message, body.globalStep == step.globalStep, body.rank == rank else {
                if case .shutdown(let s) = message { throw PeerError.stopped(reason: s.reason) }
                logger.warning("dropped an unexpected \(message.type) message", metadata: ["awaiting": "others of step \(step.globalStep)"])
                continue
            }
            do {
                others = try unpackOthers(tensors, batchSize: b)
            } catch {
                logger.warning("dropped invalid others", metadata: ["reason": "\(error)"])
                continue
            }
            waited = body.waitSeconds
            break
        }
        let exchange = max(0, Date().timeIntervalSince(sent) - waited)
        let position = TrainingPosition(epoch: step.epoch, stepInEpoch: step.step, globalStep: step.globalStep, elapsedSeconds: 0)
        var terms = trainer.finish(others: others, teacher: teacherOutputs, position: position, totalSteps: configuration.epochs * spe)
        let stepSeconds = Date().timeIntervalSince(started) - waited
        terms["exchange_seconds"] = exchange
        terms["step_seconds"] = stepSeconds
        terms["idle_seconds"] = idle + waited
        directory.recordStep(epoch: step.epoch, step: step.step, globalStep: step.globalStep + 1, batchSize: b, terms: terms)
        imagesSince.count += b
        let rate = Double(imagesSince.count) / max(Date().timeIntervalSince(imagesSince.since), 1e-9)
        if Date().timeIntervalSince(imagesSince.since) > 30 { imagesSince = (0, Date()) }
        let status = PeerStatus(rank: rank, host: host, model: configuration.peers[rank].model, epoch: step.epoch, epochs: configuration.epochs,
                                step: step.step, stepsPerEpoch: spe, globalStep: step.globalStep + 1,
                                loss: directory.runningMean("total"), accuracy: directory.runningMean("accuracy"),
                                testAccuracy: lastTestTop1, imagesPerSecond: rate, stepSeconds: stepSeconds, exchangeSeconds: exchange,
                                time: Date().timeIntervalSince1970)
        logger.debug("step", metadata: ["global_step": "\(step.globalStep + 1)", "loss": "\(terms["total"]!)"])
        flushLogs(status: status)
    }

    /// The other members' outputs, in rank order, checked against the shapes the configuration implies.
    private func unpackOthers(_ tensors: [TensorPayload], batchSize b: Int) throws -> [PeerOutputs] {
        let classes = configuration.data.dataSet.classCount
        let d = configuration.mcl.embeddingDimension
        let ranks = configuration.peers.indices.filter { $0 != rank }
        var expected: [(name: String, shape: [Int])] = []
        for r in ranks {
            if configuration.mclActive { expected.append(("rank\(r).embedding", [b, d])) }
            expected.append(("rank\(r).logits", [b, classes]))
        }
        let byName = try expectTensors(tensors, expected)
        return ranks.map { r in
            PeerOutputs(rank: r, batchSize: b, embedding: byName["rank\(r).embedding"]?.values, embeddingDimension: d,
                        logits: byName["rank\(r).logits"]!.values, classCount: classes)
        }
    }

    /// Epoch end: test-set logits to the coordinator, then this peer's epoch line and checkpoint.
    private func evaluate(_ e: Message.Evaluate) throws {
        let kind = configuration.data.dataSet
        let logits = testLogits(trainer.model, on: data.testSet, batchSize: configuration.evaluationBatchSize)
        try socket.send(.evaluation(.init(rank: rank, epoch: e.epoch),
                                    tensors: [TensorPayload(name: "logits", shape: [data.testSet.count, kind.classCount], values: logits)]))
        let test = score(logits: logits, labels: data.testSet.labels, classCount: kind.classCount)
        lastTestTop1 = test.top1
        let position = TrainingPosition(epoch: e.epoch + 1, stepInEpoch: 0, globalStep: e.globalStep, elapsedSeconds: 0)
        try directory.endEpoch(trainer, test: test, position: position, shape: [kind.channels, kind.height, kind.width])
        logger.info(Logger.Message(stringLiteral: String(format: "epoch %d/%d: test top-1 %.2f%%, checkpoint written", e.epoch + 1,
                                                         configuration.epochs, 100 * test.top1)))
        flushLogs()
    }

    /// The next message from the coordinator; throws if it stays silent for `network.timeout`.
    private func next(awaiting: String) throws -> Message {
        let timeout = configuration.network.timeout
        while true {
            try checkStop()
            let deadline = lastHeard + timeout
            guard Date() < deadline else { throw PeerError.coordinatorSilent(seconds: timeout, awaiting: awaiting) }
            switch try socket.receive(until: min(deadline, Date() + 0.25)) {
            case .message(let message, _)?:
                lastHeard = Date()
                if case .heartbeat = message { continue }
                return message
            case .invalid?, nil:
                continue
            }
        }
    }

    /// Sends the buffered log records (and `status`) to the coordinator.
    private func flushLogs(status: PeerStatus? = nil) {
        let (records, dropped) = logs.drain()
        var all = records
        if dropped > 0 {
            all.insert(LogRecord(time: Date().timeIntervalSince1970, level: "warning", rank: rank, host: host, label: "cohort.peer",
                                 message: "\(dropped) log record(s) dropped (buffer full)"), at: 0)
        }
        guard !all.isEmpty || status != nil else { return }
        try? socket.send(.log(.init(records: all, status: status)))
    }

    private func checkStop() throws {
        if let s = StopSignal.current { throw PeerError.signal(s) }
    }
}
