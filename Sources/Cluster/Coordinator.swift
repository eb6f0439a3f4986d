import Foundation
import Logging
import Data
import NN
import Tensors
import Training
import Runtime
import Wire
import ZeroMQ

/// Why a coordinator stopped before the run finished.
public enum CoordinatorError: Error, CustomStringConvertible {
    case joinTimeout(missing: [Int], seconds: Double, endpoint: String)
    case silent(ranks: [Int], awaiting: String, seconds: Double)
    case unreachable(rank: Int, error: ZeroMQError)
    case peerStopped(rank: Int, reason: String)
    case stopped(signal: Int32)

    public var description: String {
        switch self {
        case .joinTimeout(let missing, let seconds, let endpoint):
            "peer(s) \(missing.map(String.init).joined(separator: ", ")) did not join within \(Int(seconds)) s; start them with "
                + "cohort peer --config FILE --rank R --coordinator \(endpoint) (network.join_timeout sets the wait)"
        case .silent(let ranks, let awaiting, let seconds):
            "peer(s) \(ranks.map(String.init).joined(separator: ", ")) sent nothing for \(Int(seconds)) s while the coordinator awaited \(awaiting) (network.timeout)"
        case .unreachable(let rank, let error): "peer \(rank) is unreachable: \(error)"
        case .peerStopped(let rank, let reason): "peer \(rank) stopped: \(reason)"
        case .stopped(let signal): "stopped by signal \(signal)"
        }
    }
}

/// The coordinator of a distributed cohort (`cohort coordinator`).
///
/// It binds a ROUTER socket for the peers and a PUB socket for the log stream, admits the configured
/// peers, and drives the cohort step by step: the teacher's outputs for the step's batch go to every
/// peer with `step`; each peer's `outputs` come back; every peer gets the others' with `others`. At
/// each epoch's end it gathers the peers' test-set logits and scores each peer and the ensemble. It
/// writes the cohort's `metrics.jsonl`, `summary.json` and `stream.jsonl`; the peers write their own
/// `peer-<rank>/` directories. The protocol: `docs/protocol.md`.
public final class Coordinator {
    public let configuration: CohortConfiguration
    public let logger: Logger
    /// The resolved endpoints (a port of `*` replaced by the port bound).
    public let controlEndpoint: String
    public var streamEndpoint: String { publisher.endpoint }
    let publisher: StreamPublisher
    let context: ZMQContext
    let control: ProtocolSocket
    let data: CohortData
    let teacher: TeacherRunner?
    let directory: CohortRunDirectory
    private var members: [[UInt8]?]
    private var hosts: [String]
    private var lastHeard: [Date]
    private var statuses: [PeerStatus?]

    /// Loads the data and the teacher, binds both endpoints and creates the run directory.
    /// - Parameter console: where the coordinator's own records are printed (info and above).
    public init(configuration: CohortConfiguration, console: any LogSink = ConsoleSink()) throws {
        self.configuration = configuration
        let n = configuration.peers.count
        members = Array(repeating: nil, count: n)
        hosts = Array(repeating: "?", count: n)
        lastHeard = Array(repeating: Date(), count: n)
        statuses = Array(repeating: nil, count: n)
        directory = try CohortRunDirectory(output: configuration.output)
        context = try ZMQContext()
        let publisher = try StreamPublisher(context: context, endpoint: configuration.network.stream,
                                            file: configuration.output + "/stream.jsonl")
        self.publisher = publisher
        let host = ProcessInfo.processInfo.hostName
        var logger = Logger(label: "cohort.coordinator") { label in
            CohortLogHandler(label: label, rank: nil, host: host, level: .debug,
                             sink: FanOutSink([(console, .info), (publisher, .debug)]))
        }
        logger.logLevel = .debug
        self.logger = logger
        let codec = WireCodec(digest: configuration.digest)
        let socket = try ZMQSocket(context, type: .router)
        try socket.setRouterMandatory(true)
        try socket.setLinger(milliseconds: 2000)
        try socket.setSendTimeout(milliseconds: Int(configuration.network.timeout * 1000))
        try socket.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        try socket.bind(configuration.network.coordinator)
        controlEndpoint = socket.lastEndpoint
        control = ProtocolSocket(socket, codec: codec, logger: logger, routed: true)
        data = try CohortData(configuration: configuration)
        teacher = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
    }

    /// Writes the resolved endpoints to `path` (JSON `{"coordinator": ..., "stream": ...}`), atomically:
    /// how `cohort launch` learns where to point its peers.
    public func writeEndpoints(to path: String) throws {
        let text = "{\"coordinator\":\"\(controlEndpoint)\",\"stream\":\"\(streamEndpoint)\"}\n"
        try AtomicFile.write(Data(text.utf8), to: path)
    }

    /// Admits the peers, trains every epoch, tells the peers to stop and writes `summary.json`.
    /// On failure the peers are told to stop with the reason, the stream ends with it, and it is thrown.
    public func run() throws -> CohortSummary {
        defer { publisher.close() }
        do {
            try admit()
            let summary = try train()
            broadcast(.shutdown(.init(reason: "finished")))
            logger.info("finished", metadata: ["summary": "\(configuration.output)/summary.json"])
            publisher.publish(.end(StreamEnd(ok: true, reason: "finished", time: Date().timeIntervalSince1970)))
            return summary
        } catch {
            logger.error("\(error)")
            broadcast(.shutdown(.init(reason: "coordinator: \(error)")))
            publisher.publish(.end(StreamEnd(ok: false, reason: "\(error)", time: Date().timeIntervalSince1970)))
            throw error
        }
    }

    // MARK: Admission

    private func admit() throws {
        let n = configuration.peers.count
        logger.info("waiting for \(n) peer(s)", metadata: ["endpoint": "\(controlEndpoint)", "stream": "\(streamEndpoint)",
                                                         "digest": "\(configuration.digest.prefix(12))"])
        let deadline = Date() + configuration.network.joinTimeout
        while members.contains(where: { $0 == nil }) {
            try checkStop()
            if Date() >= deadline {
                throw CoordinatorError.joinTimeout(missing: members.indices.filter { members[$0] == nil },
                                                   seconds: configuration.network.joinTimeout, endpoint: controlEndpoint)
            }
            guard let received = try control.receive(until: min(deadline, Date() + 0.25)) else { continue }
            switch received {
            case .invalid(let error, let identity):
                refuseStranger(error, identity: identity!)
            case .message(.hello(let hello), let identity):
                try consider(hello, from: identity!)
            case .message(let message, let identity):
                if let rank = rank(of: identity!) { handleCommon(message, from: rank) } else {
                    logger.warning("dropped a message from an unknown sender", metadata: ["type": "\(message.type)", "from": "\(ProtocolSocket.describe(identity))"])
                }
            }
        }
        logger.info("all \(n) peer(s) joined", metadata: ["hosts": "\(Set(hosts).sorted().joined(separator: ","))"])
    }

    /// Admits `hello`'s sender, or refuses it with the reason.
    private func consider(_ hello: Message.Hello, from identity: [UInt8]) throws {
        let n = configuration.peers.count
        var reason: String?
        if !(0..<n).contains(hello.rank) {
            reason = "rank \(hello.rank) is not in this cohort of \(n) peer(s) (ranks 0...\(n - 1))"
        } else if configuration.peers[hello.rank].model != hello.model {
            reason = "rank \(hello.rank) runs \(configuration.peers[hello.rank].model) in this cohort, not \(hello.model)"
        } else if let taken = members[hello.rank], taken != identity {
            reason = "rank \(hello.rank) has already joined (from \(hosts[hello.rank]))"
        }
        if let reason {
            logger.warning("refused a peer", metadata: ["rank": "\(hello.rank)", "host": "\(hello.host ?? "?")", "reason": "\(reason)"])
            try? control.send(.welcome(.init(accepted: false, reason: reason)), to: identity)
            return
        }
        members[hello.rank] = identity
        hosts[hello.rank] = hello.host ?? "?"
        lastHeard[hello.rank] = Date()
        try send(.welcome(.init(accepted: true)), to: hello.rank)
        logger.info("peer \(hello.rank) joined", metadata: ["host": "\(hosts[hello.rank])", "model": "\(hello.model)"])
    }

    /// Answers a sender whose message failed validation: a peer started with another configuration
    /// learns why it is refused.
    private func refuseStranger(_ error: WireError, identity: [UInt8]) {
        guard rank(of: identity) == nil, case .configuration(let expected, let found) = error else { return }
        try? control.send(.welcome(.init(accepted: false, reason:
            "configuration digest \(found) differs from this cohort's \(expected): start every process with the same configuration file")),
                          to: identity)
    }

    private func rank(of identity: [UInt8]) -> Int? { members.firstIndex { $0 == identity } }

    // MARK: Training

    private func train() throws -> CohortSummary {
        let n = configuration.peers.count
        let kind = configuration.data.dataSet
        let classes = kind.classCount
        let teacherTop1 = teacher.map { evaluate($0.model, on: data.testSet, batchSize: configuration.evaluationBatchSize).top1 }
        if let teacherTop1 { logger.info(Logger.Message(stringLiteral: String(format: "teacher %@: test top-1 %.2f%%", configuration.teacher!.model, 100 * teacherTop1))) }
        logger.info("cohort of \(n) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(kind.rawValue): \(data.trainSet.count) images, \(data.stepsPerEpoch) steps/epoch, \(configuration.epochs) epochs")
        let started = Date()
        var globalStep = 0, images = 0
        var lastReport = Date()
        var evaluation = CohortEvaluation(peers: [], ensembleTop1: 0, ensembleTop5: 0)
        let dimension = configuration.mcl.embeddingDimension
        for epoch in 0..<configuration.epochs {
            let batches = data.sampler.batches(epoch: epoch)
            let loader = teacher == nil ? nil : data.loader(epoch: epoch)
            for (step, indices) in batches.enumerated() {
                try checkStop()
                let b = indices.count
                var teacherTensors: [TensorPayload] = []
                if let teacher, let batch = loader?.next() {
                    precondition(batch.step == step && batch.size == b, "the teacher's loader follows the sampler")
                    let t = teacher.outputs(for: batch)
                    teacherTensors = [TensorPayload(name: "feature", shape: [b, t.featureCount], values: t.feature),
                                      TensorPayload(name: "logits", shape: [b, t.classCount], values: t.logits),
                                      TensorPayload(name: "gradient_element", shape: [b, t.featureCount], values: t.gradientElement)]
                }
                try broadcastOrFail(.step(.init(epoch: epoch, step: step, globalStep: globalStep), teacher: teacherTensors))
                var expected: [(name: String, shape: [Int])] = [("logits", [b, classes])]
                if configuration.mclActive { expected.insert(("embedding", [b, dimension]), at: 0) }
                var outputs = [[TensorPayload]](repeating: [], count: n)
                var arrival = [Date](repeating: Date(), count: n)
                let awaited = globalStep
                try gather("the outputs of step \(globalStep)") { rank, message in
                    guard case .outputs(let body, let tensors) = message, body.globalStep == awaited else { return false }
                    do {
                        guard body.rank == rank else { throw WireError.header("rank \(body.rank) in a message from peer \(rank)") }
                        let byName = try expectTensors(tensors, expected)
                        outputs[rank] = expected.map { byName[$0.name]! }
                    } catch {
                        logger.warning("dropped invalid outputs", metadata: ["rank": "\(rank)", "reason": "\(error)"])
                        return false
                    }
                    arrival[rank] = Date()
                    return true
                }
                let complete = Date()
                // Whoever is served first starts its backward pass first; rotate so no peer always waits longest.
                for rank in (0..<n).map({ ($0 + globalStep) % n }) {
                    let others = (0..<n).filter { $0 != rank }.flatMap { r in
                        outputs[r].map { TensorPayload(name: "rank\(r).\($0.name)", shape: $0.shape, values: $0.values) }
                    }
                    try send(.others(.init(rank: rank, globalStep: globalStep, waitSeconds: complete.timeIntervalSince(arrival[rank])),
                                     tensors: others), to: rank)
                }
                globalStep += 1
                images += b
                if Date().timeIntervalSince(lastReport) >= 10 || step + 1 == batches.count {
                    lastReport = Date()
                    reportProgress(epoch: epoch, step: step, globalStep: globalStep, images: images, started: started)
                }
            }
            evaluation = try gatherEvaluation(epoch: epoch, globalStep: globalStep)
            directory.recordEpoch(epoch, globalStep: globalStep, evaluation: evaluation, seconds: Date().timeIntervalSince(started))
            logger.info(Logger.Message(stringLiteral: epochReport(epoch: epoch, configuration: configuration, evaluation: evaluation)))
        }
        let summary = CohortSummary(configuration: configuration, evaluation: evaluation, teacherTop1: teacherTop1, steps: globalStep,
                                    seconds: Date().timeIntervalSince(started), images: images, transport: "zmq")
        try directory.writeSummary(summary)
        return summary
    }

    /// Asks every peer to evaluate and checkpoint, and scores their test-set logits.
    private func gatherEvaluation(epoch: Int, globalStep: Int) throws -> CohortEvaluation {
        let n = configuration.peers.count
        let classes = configuration.data.dataSet.classCount
        try broadcastOrFail(.evaluate(.init(epoch: epoch, globalStep: globalStep)))
        var logits = [[Float]](repeating: [], count: n)
        let expected: [(name: String, shape: [Int])] = [("logits", [data.testSet.count, classes])]
        try gather("the test-set logits of epoch \(epoch + 1)") { rank, message in
            guard case .evaluation(let body, let tensors) = message, body.epoch == epoch else { return false }
            do {
                guard body.rank == rank else { throw WireError.header("rank \(body.rank) in a message from peer \(rank)") }
                logits[rank] = try expectTensors(tensors, expected)["logits"]!.values
            } catch {
                logger.warning("dropped an invalid evaluation", metadata: ["rank": "\(rank)", "reason": "\(error)"])
                return false
            }
            return true
        }
        return evaluateCohort(logits: logits, labels: data.testSet.labels, classCount: classes)
    }

    private func reportProgress(epoch: Int, step: Int, globalStep: Int, images: Int, started: Date) {
        let rate = Double(images) / max(Date().timeIntervalSince(started), 1e-9)
        let total = configuration.epochs * data.stepsPerEpoch
        let eta = Double(total - globalStep) * Double(configuration.batchSize) / max(rate, 1e-9)
        let peers = statuses.compactMap { $0 }.map { String(format: "p%d %.3f/%.0f%%", $0.rank, $0.loss, 100 * $0.accuracy) }
        logger.info(Logger.Message(stringLiteral: String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", epoch + 1,
                                                         configuration.epochs, step + 1, data.stepsPerEpoch,
                                                         peers.joined(separator: "  "), rate, ProgressReporter.duration(eta))))
    }

    // MARK: Messaging

    /// Receives until `handle` has accepted one message from every peer. Log records and statuses are
    /// published on the way; whatever `handle` declines is logged and dropped. Throws when a peer whose
    /// answer is awaited stays silent for `network.timeout` seconds, or on a stop signal.
    private func gather(_ awaiting: String, _ handle: (Int, Message) throws -> Bool) throws {
        var pending = Set(0..<configuration.peers.count)
        let since = Date()
        let timeout = configuration.network.timeout
        while !pending.isEmpty {
            try checkStop()
            let deadline = pending.map { max(lastHeard[$0], since) + timeout }.min()!
            if Date() >= deadline {
                throw CoordinatorError.silent(ranks: pending.filter { max(lastHeard[$0], since) + timeout <= Date() }.sorted(),
                                              awaiting: awaiting, seconds: timeout)
            }
            guard let received = try control.receive(until: min(deadline, Date() + 0.25)) else { continue }
            switch received {
            case .invalid(let error, let identity):
                if let rank = rank(of: identity!) { lastHeard[rank] = Date() } else { refuseStranger(error, identity: identity!) }
            case .message(let message, let identity):
                guard let rank = rank(of: identity!) else {
                    if case .hello(let hello) = message {
                        try? control.send(.welcome(.init(accepted: false, reason: "the cohort has started without rank \(hello.rank)'s sender")),
                                          to: identity!)
                    }
                    logger.warning("dropped a message from an unknown sender", metadata: ["type": "\(message.type)", "from": "\(ProtocolSocket.describe(identity))"])
                    continue
                }
                lastHeard[rank] = Date()
                if handleCommon(message, from: rank) { continue }
                if case .shutdown(let s) = message { throw CoordinatorError.peerStopped(rank: rank, reason: s.reason) }
                if pending.contains(rank), try handle(rank, message) {
                    pending.remove(rank)
                } else {
                    logger.warning("dropped an unexpected \(message.type) message", metadata: ["rank": "\(rank)", "awaiting": "\(awaiting)"])
                }
            }
        }
    }

    /// Log batches and heartbeats, at any time. Returns whether `message` was one.
    @discardableResult
    private func handleCommon(_ message: Message, from rank: Int) -> Bool {
        switch message {
        case .log(let batch):
            for record in batch.records {
                // The peer's rank and host as admitted, whatever the record claims.
                publisher.publish(.log(LogRecord(time: record.time, level: record.level, rank: rank, host: hosts[rank], label: record.label,
                                                 message: record.message, metadata: record.metadata)))
            }
            if let status = batch.status, status.rank == rank {
                statuses[rank] = status
                publisher.publish(.status(status))
            }
            return true
        case .heartbeat:
            return true
        default:
            return false
        }
    }

    private func send(_ message: Message, to rank: Int) throws {
        do { try control.send(message, to: members[rank]!) } catch let error as ZeroMQError {
            throw CoordinatorError.unreachable(rank: rank, error: error)
        }
    }

    private func broadcastOrFail(_ message: Message) throws {
        for rank in members.indices { try send(message, to: rank) }
    }

    /// Sends `message` to every admitted peer, ignoring failures (used when stopping).
    private func broadcast(_ message: Message) {
        for identity in members.compactMap({ $0 }) { try? control.send(message, to: identity) }
    }

    private func checkStop() throws {
        if let signal = StopSignal.current { throw CoordinatorError.stopped(signal: signal) }
    }
}
