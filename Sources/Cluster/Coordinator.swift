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
    case nobodyPresent(seconds: Double)
    case insecureBind(endpoint: String)
    case stopped(signal: Int32)

    public var description: String {
        switch self {
        case .joinTimeout(let missing, let seconds, let endpoint):
            "peer(s) \(missing.map(String.init).joined(separator: ", ")) did not join within \(Int(seconds)) s; start them with "
                + "cohort peer --config FILE --rank R --coordinator \(endpoint) (network.join_timeout sets the wait)"
        case .nobodyPresent(let seconds): "no peer has been present for \(Int(seconds)) s (network.join_timeout)"
        case .insecureBind(let endpoint):
            "\(endpoint) is reachable from other hosts but the configuration has no security keys: add them (cohort keygen, "
                + "security in docs/configuration.md) or pass --insecure"
        case .stopped(let signal): "stopped by signal \(signal)"
        }
    }
}

/// The coordinator of a distributed cohort (`cohort coordinator`).
///
/// It binds a ROUTER socket for the peers and a PUB socket for the log stream, admits the configured
/// peers, and drives the cohort step by step: the teacher's outputs for the step's batch go to every
/// present peer with `step`; each peer's `outputs` come back; every peer gets the others' with `others`.
/// At each epoch's end it gathers the peers' test-set logits and scores each peer and the ensemble; every
/// `checkpoint_every` steps and epoch it has every member checkpoint at the same step. A peer that misses
/// its heartbeats (or does not deliver within `network.timeout`) is marked absent and the cohort goes on
/// with the others; a peer that says hello again rejoins at the next step. Restarted with `resume`, it
/// continues from its newest state and from where the peers are. The protocol: `docs/protocol.md`.
public final class Coordinator {
    /// A configured rank's standing.
    enum Membership: Equatable {
        case absent
        /// Admitted; takes part from the next step.
        case joining
        case present
    }

    public let configuration: CohortConfiguration
    public let logger: Logger
    /// The resolved endpoints (a port of `*` replaced by the port bound).
    public let controlEndpoint: String
    public var streamEndpoint: String { publisher.endpoint }
    let publisher: StreamPublisher
    let context: ZMQContext
    let control: ProtocolSocket
    let zap: ZAPHandler?
    /// Logs CURVE handshakes on the control socket that fail before ZAP (a client without CURVE, a wrong server key).
    let handshakes: HandshakeMonitor?
    let keys: CohortKeys?
    let data: CohortData
    let teacher: TeacherRunner?
    let directory: CohortRunDirectory
    let host: String
    /// The Prometheus endpoint (`--metrics-port`) and the cohort's series on it.
    let metrics: (endpoint: MetricsEndpoint, series: CohortMetrics)?
    private var membership: [Membership]
    private var members: [[UInt8]?]
    private var hosts: [String]
    private var lastHeard: [Date]
    /// Each member's admission token (``Message/Welcome/session``): only heartbeats that carry it count.
    private var sessions: [Int?]
    private var resumeSteps: [Int]
    private var statuses: [PeerStatus?]
    private var state = CoordinatorState()
    private var training = false
    /// Started from a cohort checkpoint (`--resume`): the run continues at the newest step every member
    /// has a checkpoint of.
    private var resumedFromState = false

    /// Loads the data and the teacher, binds both endpoints and creates the run directory.
    /// - Parameters:
    ///   - keyPath: the coordinator's secret key file, required when the configuration has `security`.
    ///   - insecure: allow binding beyond loopback without keys.
    ///   - console: where the coordinator's own records are printed (info and above).
    ///   - metricsPort: serve the cohort's metrics for Prometheus on this port (0: any free one).
    public init(configuration: CohortConfiguration, keyPath: String? = nil, insecure: Bool = false,
                console: any LogSink = ConsoleSink(), metricsPort: Int? = nil) throws {
        self.configuration = configuration
        let n = configuration.peers.count
        membership = Array(repeating: .absent, count: n)
        members = Array(repeating: nil, count: n)
        hosts = Array(repeating: "?", count: n)
        lastHeard = Array(repeating: Date(), count: n)
        sessions = Array(repeating: nil, count: n)
        resumeSteps = Array(repeating: 0, count: n)
        statuses = Array(repeating: nil, count: n)
        state.lastEvaluation = Array(repeating: nil, count: n)
        let network = configuration.network
        if configuration.security == nil && !insecure {
            for endpoint in [network.coordinator, network.stream] where !Self.isLocal(endpoint) {
                throw CoordinatorError.insecureBind(endpoint: endpoint)
            }
        }
        if let security = configuration.security {
            guard let keyPath else { throw SecurityError(description: "the configuration has security keys: give the coordinator its secret key (--key)") }
            keys = try CohortKeys(settings: security, secretKeyPath: keyPath)
            guard keys!.coordinator == keys!.own.publicKey else {
                throw SecurityError(description: "\(keyPath) is not the coordinator's key (security.coordinator_key)")
            }
        } else {
            keys = nil
        }
        directory = try CohortRunDirectory(output: configuration.output)
        let context = try ZMQContext()
        self.context = context
        let host = ProcessInfo.processInfo.hostName
        // The stream's logger must exist before the ZAP handler, which logs denials to it.
        let publisher = try StreamPublisher(context: context, file: configuration.output + "/stream.jsonl")
        self.publisher = publisher
        var logger = Logger(label: "cohort.coordinator") { label in
            CohortLogHandler(label: label, rank: nil, host: host, level: .debug,
                             sink: FanOutSink([(console, .info), (publisher, .debug)]))
        }
        logger.logLevel = .debug
        self.logger = logger
        let keys = self.keys
        zap = try keys.map { try ZAPHandler(context: context, keys: $0, logger: logger) }
        try publisher.bind(network.stream, curveSecretKey: keys?.own.secretKey)
        let codec = WireCodec(digest: configuration.digest)
        let socket = try ZMQSocket(context, type: .router)
        try socket.setRouterMandatory(true)
        try socket.setLinger(milliseconds: 2000)
        try socket.setSendTimeout(milliseconds: Int(network.timeout * 1000))
        try socket.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        try socket.setHeartbeat(intervalMilliseconds: Int(network.heartbeatInterval * 1000),
                                timeoutMilliseconds: Int(network.heartbeatTimeout * 1000))
        if let keys {
            try socket.makeCurveServer(secretKey: keys.own.secretKey)
            try socket.setZAPDomain(ZAPHandler.controlDomain)
            handshakes = try HandshakeMonitor(socket: socket, name: "control", logger: logger)
        } else {
            handshakes = nil
        }
        try socket.bind(network.coordinator)
        controlEndpoint = socket.lastEndpoint
        control = ProtocolSocket(socket, codec: codec, logger: logger, routed: true)
        self.host = host
        metrics = try metricsPort.map { port in
            let endpoint = try MetricsEndpoint(port: port)
            return (endpoint, CohortMetrics(registry: endpoint.registry))
        }
        if let endpoint = metrics?.endpoint {
            logger.info("serving metrics at http://\(host):\(endpoint.port)/metrics", metadata: ["port": "\(endpoint.port)"])
        }
        publisher.publish(.phase(PhaseChange(rank: nil, host: host, phase: .loading, detail: "data", time: Date().timeIntervalSince1970)))
        teacher = try configuration.teacher.map { try TeacherRunner(settings: $0, dataSet: configuration.data.dataSet) }
        data = try CohortData.loading(configuration: configuration) { logger.info(Logger.Message(stringLiteral: $0)) }
    }

    deinit { zap?.stop(); handshakes?.stop() }

    /// Whether `endpoint` is reachable from this host only (loopback or IPC).
    static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("ipc://") || endpoint.hasPrefix("inproc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        let host = endpoint.dropFirst("tcp://".count).split(separator: ":").dropLast().joined(separator: ":")
        return host.hasPrefix("127.") || host == "localhost" || host == "[::1]"
    }

    /// Writes the resolved endpoints to `path` (JSON `{"coordinator": ..., "stream": ...}`), atomically:
    /// how `cohort launch` learns where to point its peers.
    public func writeEndpoints(to path: String) throws {
        let text = "{\"coordinator\":\"\(controlEndpoint)\",\"stream\":\"\(streamEndpoint)\"}\n"
        try AtomicFile.write(Data(text.utf8), to: path)
    }

    /// Admits the peers, trains every epoch (with `resume`: from the newest cohort checkpoint and where
    /// the peers are), tells the peers to stop and writes `summary.json`. On failure the peers are told
    /// to stop with the reason, the stream ends with it, and it is thrown.
    public func run(resume: Bool = false) throws -> CohortSummary {
        defer { publisher.close() }
        do {
            // Resuming from a cohort checkpoint, the cohort may go on without peers that do not come back;
            // a fresh start (also `resume` with nothing to resume) waits for every peer.
            let restored = try resume && restoreState()
            resumedFromState = restored
            if !restored { state.settings = configuration.canonicalSettings }
            // Before admitting anyone: a long evaluation must not happen while peers await heartbeat answers.
            if state.teacherTop1 == nil, let teacher {
                let name = "the teacher (\(configuration.teacher!.model))"
                publishPhase(nil, .evaluating, name)
                let progress = PhaseProgress("evaluating \(name) on the test set", total: data.testSet.count) { [logger] in
                    logger.info(Logger.Message(stringLiteral: $0))
                }
                state.teacherTop1 = evaluate(teacher.model, on: data.testSet, batchSize: configuration.evaluationBatchSize, progress: progress).top1
                progress.finish(String(format: "test top-1 %.2f%%", 100 * state.teacherTop1!))
            }
            try admit(requireAll: !restored)
            let summary = try train()
            broadcast(.shutdown(.init(.finished)))
            logger.info("finished", metadata: ["summary": "\(configuration.output)/summary.json"])
            publisher.publish(.end(StreamEnd(ok: true, reason: Message.Shutdown.finishedReason, time: Date().timeIntervalSince1970)))
            return summary
        } catch {
            logger.error("\(error)")
            broadcast(.shutdown(.init(.failed("coordinator: \(error)"))))
            publisher.publish(.end(StreamEnd(ok: false, reason: "\(error)", time: Date().timeIntervalSince1970)))
            throw error
        }
    }

    /// Loads the newest valid cohort checkpoint; whether there was one. Refuses one saved with other
    /// settings, and cuts the cohort's metrics back to its step.
    private func restoreState() throws -> Bool {
        let (newest, skipped) = CoordinatorState.newest(output: configuration.output)
        for s in skipped { logger.warning("passed over a cohort checkpoint", metadata: ["why": "\(s)"]) }
        guard var restored = newest else {
            logger.notice("no cohort checkpoint to resume from; starting at step 0")
            return false
        }
        if restored.lastEvaluation.count != configuration.peers.count {
            restored.lastEvaluation = Array(repeating: nil, count: configuration.peers.count)
        }
        try configuration.checkUnchanged(since: restored.settings)
        if restored.settings == nil { restored.settings = configuration.canonicalSettings }
        state = restored
        try directory.truncateHistory(afterGlobalStep: state.globalStep)
        logger.notice("resumed", metadata: ["global_step": "\(state.globalStep)", "epochs_evaluated": "\(state.evaluatedEpochs)"])
        return true
    }

    // MARK: Admission

    /// Waits for every configured peer (`requireAll`), or on resume for every peer or, after
    /// `network.join_timeout`, for any.
    private func admit(requireAll: Bool) throws {
        let n = configuration.peers.count
        publishPhase(nil, .waiting, "for \(n) peer(s) to join")
        logger.info("waiting for \(n) peer(s)", metadata: ["endpoint": "\(controlEndpoint)", "stream": "\(streamEndpoint)",
                                                         "digest": "\(configuration.digest)", "secure": "\(keys != nil)"])
        let deadline = Date() + configuration.network.joinTimeout
        while membership.contains(where: { $0 == .absent }) {
            try checkStop()
            if Date() >= deadline {
                let missing = membership.indices.filter { membership[$0] == .absent }
                if requireAll || missing.count == n {
                    throw CoordinatorError.joinTimeout(missing: missing, seconds: configuration.network.joinTimeout, endpoint: controlEndpoint)
                }
                logger.error("going on without absent peers", metadata: ["absent": "\(missing)"])
                break
            }
            if let (rank, message) = try receiveOne(until: min(deadline, Date() + 0.25)) {
                logger.warning("dropped an unexpected \(message.type) message", metadata: ["rank": "\(rank)", "awaiting": "peers to join"])
            }
        }
        for r in membership.indices where membership[r] == .joining { membership[r] = .present }
        logger.info("\(membership.filter { $0 == .present }.count) of \(n) peer(s) joined",
                    metadata: ["hosts": "\(Set(hosts).sorted().joined(separator: ","))"])
    }

    /// Receives one message and handles what can come at any time: hellos, heartbeats, log batches,
    /// strangers. Returns any other message from a member, with its rank.
    private func receiveOne(until deadline: Date) throws -> (Int, Message)? {
        guard let received = try control.receive(until: deadline) else { return nil }
        switch received {
        case .invalid(let error, let identity):
            if let rank = rank(of: identity!) { lastHeard[rank] = Date() } else { refuseStranger(error, identity: identity!) }
            return nil
        case .message(.hello(let hello), let identity, let user):
            consider(hello, from: identity!, user: user)
            return nil
        case .message(.heartbeat(let beat), let identity, let user):
            guard let rank = beat.rank, configuration.peers.indices.contains(rank), keys == nil || user == "peer-\(rank)" else {
                control.warnings.warn(logger, sender: ProtocolSocket.describe(identity), "dropped a heartbeat that does not come from the rank it names",
                                      metadata: ["rank": "\(beat.rank.map(String.init) ?? "none")", "user": "\(user ?? "none")",
                                                 "from": "\(ProtocolSocket.describe(identity))"])
                return nil
            }
            // Answered for members only: a peer this coordinator has not admitted (it was marked absent, or
            // this is a restarted coordinator) hears nothing, concludes it lost the coordinator, and rejoins.
            guard membership[rank] != .absent else { return nil }
            // Only beats that vouch for the member's current connection keep it alive: not those of a
            // process whose rank was taken over, nor of one still joining.
            if sessions[rank] == nil || beat.session == sessions[rank] { lastHeard[rank] = Date() }
            try? control.send(.heartbeat(.init(rank: nil, sequence: beat.sequence)), to: identity!)
            return nil
        case .message(let message, let identity, _):
            guard let rank = rank(of: identity!) else {
                control.warnings.warn(logger, sender: ProtocolSocket.describe(identity), "dropped a message from an unknown sender",
                                      metadata: ["type": "\(message.type)", "from": "\(ProtocolSocket.describe(identity))"])
                return nil
            }
            lastHeard[rank] = Date()
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
                if let phase = batch.phase, phase != .absent, phase != .finished { publishPhase(rank, phase) }
                return nil
            case .shutdown(let s):
                markAbsent(rank, "it stopped: \(s.reason)")
                return nil
            default:
                return (rank, message)
            }
        }
    }

    /// Admits `hello`'s sender (again, when it rejoins), or refuses it with the reason.
    private func consider(_ hello: Message.Hello, from identity: [UInt8], user: String?) {
        let n = configuration.peers.count
        let r = hello.rank
        var reason: String?
        if !(0..<n).contains(r) {
            reason = "rank \(r) is not in this cohort of \(n) peer(s) (ranks 0...\(n - 1))"
        } else if configuration.peers[r].model != hello.model {
            reason = "rank \(r) runs \(configuration.peers[r].model) in this cohort, not \(hello.model)"
        } else if keys != nil && user != "peer-\(r)" {
            reason = "this connection's key is not peer \(r)'s"
        }
        if let reason {
            control.warnings.warn(logger, sender: ProtocolSocket.describe(identity), "refused a peer",
                                  metadata: ["rank": "\(r)", "host": "\(hello.host ?? "?")", "reason": "\(reason)", "from": "\(ProtocolSocket.describe(identity))"])
            try? control.send(.welcome(.init(accepted: false, reason: reason)), to: identity)
            return
        }
        if members[r] == identity && membership[r] != .absent {
            try? control.send(.welcome(.init(accepted: true, session: sessions[r])), to: identity)  // a repeated hello
            return
        }
        if membership[r] != .absent, let old = members[r] {
            // A rank held by a live connection is taken over only by a hello that proves to be that rank
            // (its CURVE key); otherwise once the holder has been silent for heartbeat_timeout. The
            // hello is not answered meanwhile: a legitimately restarted peer keeps saying it.
            let silent = Date().timeIntervalSince(lastHeard[r])
            guard keys != nil || silent > configuration.network.heartbeatTimeout else {
                control.warnings.warn(logger, sender: ProtocolSocket.describe(identity), "ignored a hello for rank \(r): a live connection holds it",
                                      metadata: ["host": "\(HeaderBounds.clipped(hello.host ?? "?"))", "holder_heard_seconds_ago": "\(Int(silent))",
                                                 "from": "\(ProtocolSocket.describe(identity))"])
                return
            }
            try? control.send(.shutdown(.init(.failed("rank \(r) was taken over by a new connection"))), to: old)
        }
        if membership[r] != .absent {
            logger.warning("peer \(r) joined again from a new connection; the old one is dropped\(training ? " and it rejoins at the next step" : "")",
                           metadata: ["host": "\(hello.host ?? "?")", "steps_done": "\(hello.resumeStep ?? 0)"])
        } else if training {
            logger.notice("peer \(r) rejoins at the next step", metadata: ["host": "\(hello.host ?? "?")", "steps_done": "\(hello.resumeStep ?? 0)"])
        }
        members[r] = identity
        membership[r] = .joining
        hosts[r] = hello.host ?? "?"
        lastHeard[r] = Date()
        resumeSteps[r] = hello.resumeStep ?? 0
        sessions[r] = Int.random(in: 1...Int.max)
        do { try control.send(.welcome(.init(accepted: true, session: sessions[r])), to: identity) } catch {
            markAbsent(r, "unreachable: \(error)")
            return
        }
        logger.info("peer \(r) joined", metadata: ["host": "\(hosts[r])", "model": "\(hello.model)"])
        publishPhase(r, training ? .joining : .waiting, training ? "takes part from the next step" : nil)
    }

    /// Answers a sender whose message failed validation: a peer started with another configuration
    /// learns why it is refused.
    private func refuseStranger(_ error: WireError, identity: [UInt8]) {
        guard case .configuration(let expected, let found) = error else { return }
        try? control.send(.welcome(.init(accepted: false, reason:
            "configuration digest \(HeaderBounds.clipped(found)) differs from this cohort's \(expected): start every process with the same configuration file")),
                          to: identity)
    }

    private func rank(of identity: [UInt8]) -> Int? { members.firstIndex { $0 == identity } }

    /// Takes `rank` out of the cohort until it says hello again; loudly.
    private func markAbsent(_ rank: Int, _ why: String) {
        guard membership[rank] != .absent else { return }
        membership[rank] = .absent
        members[rank] = nil
        sessions[rank] = nil
        let present = membership.indices.filter { membership[$0] != .absent }
        logger.error("peer \(rank) is absent: \(why); the cohort goes on with peer(s) \(present.map(String.init).joined(separator: ", "))",
                     metadata: ["rank": "\(rank)"])
        publishPhase(rank, .absent, why)
    }

    /// Tells the stream what `rank` (nil: the coordinator) does from now on.
    private func publishPhase(_ rank: Int?, _ phase: Phase, _ detail: String? = nil) {
        publisher.publish(.phase(PhaseChange(rank: rank, host: rank.map { hosts[$0] } ?? host, phase: phase, detail: detail,
                                             time: Date().timeIntervalSince1970)))
    }

    private var presentRanks: [Int] { membership.indices.filter { membership[$0] == .present } }

    /// Makes joining peers present; with none present, waits (up to `network.join_timeout`) for one.
    private func promote() throws {
        let deadline = Date() + configuration.network.joinTimeout
        while true {
            for r in membership.indices where membership[r] == .joining { membership[r] = .present }
            if !presentRanks.isEmpty { return }
            try checkStop()
            guard Date() < deadline else { throw CoordinatorError.nobodyPresent(seconds: configuration.network.joinTimeout) }
            _ = try receiveOne(until: Date() + 0.25)
        }
    }

    // MARK: Training

    private func train() throws -> CohortSummary {
        let n = configuration.peers.count
        let kind = configuration.data.dataSet
        let spe = data.stepsPerEpoch
        let total = configuration.epochs * spe
        training = true
        if let t = state.teacherTop1 { logger.info(Logger.Message(stringLiteral: String(format: "teacher %@: test top-1 %.2f%%", configuration.teacher!.model, 100 * t))) }
        let start = try startingStep(total: total)
        if start > 0 { logger.notice("continuing at step \(start)", metadata: ["checkpoint_step": "\(state.globalStep)"]) }
        state.globalStep = start
        logger.info("cohort of \(n) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(kind.rawValue): \(data.trainSet.count) images, \(spe) steps/epoch, \(configuration.epochs) epochs")
        let started = Date() - state.elapsedSeconds
        publishPhase(nil, .training)
        var lastReport = Date()
        var loader: (epoch: Int, loader: BatchLoader)?
        var batches: (epoch: Int, sizes: [Int])?
        // An epoch whose end the previous coordinator did not get to evaluate.
        if start > 0, start % spe == 0, state.evaluatedEpochs < start / spe {
            try endEpoch(start / spe - 1, started: started)
        }
        while state.globalStep < total {
            let globalStep = state.globalStep
            let epoch = globalStep / spe, step = globalStep % spe
            try checkStop()
            try promote()
            let participants = presentRanks
            if batches?.epoch != epoch { batches = (epoch, data.sampler.batches(epoch: epoch).map(\.count)) }
            let b = batches!.sizes[step]
            var teacherTensors: [TensorPayload] = []
            if let teacher {
                if loader?.epoch != epoch { loader = (epoch, data.loader(epoch: epoch, startStep: step)) }
                let batch = loader!.loader.next()!
                precondition(batch.step == step && batch.size == b, "the teacher's loader follows the sampler")
                let t = teacher.outputs(for: batch)
                teacherTensors = [TensorPayload(name: "feature", shape: [b, t.featureCount], values: t.feature),
                                  TensorPayload(name: "logits", shape: [b, t.classCount], values: t.logits),
                                  TensorPayload(name: "gradient_element", shape: [b, t.featureCount], values: t.gradientElement)]
            }
            send(.step(.init(epoch: epoch, step: step, globalStep: globalStep), teacher: teacherTensors), to: participants)
            let layout = configuration.outputLayout
            let expected = layout.expected(batchSize: b)
            var outputs = [[TensorPayload]](repeating: [], count: n)
            var arrival = [Date](repeating: Date(), count: n)
            let delivered = try gather("the outputs of step \(globalStep)", from: participants) { rank, message in
                guard case .outputs(let body, let tensors) = message, body.globalStep == globalStep else { return false }
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
            guard !delivered.isEmpty else {
                // Nobody delivered (every participant turned out absent): the step is run again with
                // whoever rejoins, its batch assembled anew.
                loader = nil
                continue
            }
            let complete = Date()
            // Whoever is served first starts its backward pass first; rotate so no peer always waits longest.
            for i in delivered.indices {
                let rank = delivered[(i + globalStep) % delivered.count]
                let ranks = delivered.filter { $0 != rank }
                let others = ranks.flatMap { r in layout.forOthers(rank: r, outputs[r]) }
                send(.others(.init(rank: rank, globalStep: globalStep, ranks: ranks, waitSeconds: complete.timeIntervalSince(arrival[rank])),
                             tensors: others), to: [rank])
            }
            directory.recordStep(globalStep + 1, present: delivered)
            state.globalStep = globalStep + 1
            metrics?.series.recordStep(globalStep: state.globalStep, present: delivered.count)
            state.images += b
            // The step's progress before what ends the epoch, so the lines read in order.
            if Date().timeIntervalSince(lastReport) >= 10 {
                lastReport = Date()
                reportProgress(epoch: epoch, step: step, started: started)
            }
            if state.globalStep % spe == 0 {
                try endEpoch(epoch, started: started)
            } else if configuration.checkpointEvery > 0, state.globalStep % configuration.checkpointEvery == 0 {
                send(.checkpoint(.init(globalStep: state.globalStep)), to: presentRanks)
                saveState(started: started)
                logger.info("checkpoint at step \(state.globalStep)")
            }
        }
        let last = CohortEvaluation(peers: state.lastEvaluation.map { $0 ?? EvaluationResult(top1: 0, top5: 0, loss: 0, count: 0) },
                                    ensembleTop1: state.ensembleTop1, ensembleTop5: state.ensembleTop5)
        let summary = CohortSummary(configuration: configuration, evaluation: last, teacherTop1: state.teacherTop1, steps: state.globalStep,
                                    seconds: Date().timeIntervalSince(started), images: state.images, transport: "zmq")
        try directory.writeSummary(summary)
        return summary
    }

    /// Where training continues. Resumed from a cohort checkpoint: at the newest step for which this
    /// coordinator has a state and every present peer a checkpoint (peers further on go back to it,
    /// so the run trains exactly what an uninterrupted one would; the coordinator's state is reloaded
    /// there). Otherwise: from where the peers are (a coordinator started afresh beside running peers).
    private func startingStep(total: Int) throws -> Int {
        let peerSteps = presentRanks.map { resumeSteps[$0] }
        guard resumedFromState else { return min(total, max(state.globalStep, peerSteps.max() ?? 0)) }
        let target = min(total, state.globalStep, peerSteps.min() ?? state.globalStep)
        if target < state.globalStep {
            let (older, skipped) = CoordinatorState.newest(output: configuration.output, atMost: target)
            for s in skipped { logger.warning("passed over a cohort checkpoint", metadata: ["why": "\(s)"]) }
            // Without an older state of its own, the coordinator keeps its measurements and goes back in steps.
            var restored = older ?? state
            if older == nil {
                restored.globalStep = target
                restored.evaluatedEpochs = min(state.evaluatedEpochs, target / data.stepsPerEpoch)
            }
            if restored.lastEvaluation.count != configuration.peers.count {
                restored.lastEvaluation = Array(repeating: nil, count: configuration.peers.count)
            }
            if restored.teacherTop1 == nil { restored.teacherTop1 = state.teacherTop1 }
            logger.notice("going back to the step every peer has a checkpoint of",
                          metadata: ["cohort_checkpoint_step": "\(state.globalStep)", "peer_steps": "\(peerSteps)", "step": "\(restored.globalStep)"])
            state = restored
            try directory.truncateHistory(afterGlobalStep: state.globalStep)
        }
        return state.globalStep
    }

    /// An epoch's end: every present peer evaluates (on the epochs `evaluation_every` names) and
    /// checkpoints; the cohort's scores are recorded and its state saved. After the last epoch, absent peers are awaited (`network.join_timeout`) so that
    /// the summary covers everyone.
    private func endEpoch(_ epoch: Int, started: Date) throws {
        if epoch == configuration.epochs - 1 {
            let deadline = Date() + configuration.network.joinTimeout
            while membership.contains(.absent) && Date() < deadline {
                try checkStop()
                _ = try receiveOne(until: Date() + 0.25)
            }
        }
        try promote()
        if configuration.evaluates(epoch: epoch) {
            publishPhase(nil, .evaluating, "epoch \(epoch + 1): awaiting the peers' test-set outputs")
            let evaluation = try gatherEvaluation(epoch: epoch)
            metrics?.series.recordEvaluation(ensembleTop1: evaluation.ensembleTop1)
            directory.recordEpoch(epoch, globalStep: state.globalStep, evaluation: evaluation, seconds: Date().timeIntervalSince(started))
            logger.info(Logger.Message(stringLiteral: epochReport(epoch: epoch, configuration: configuration, evaluation: evaluation)))
        } else {
            send(.evaluate(.init(epoch: epoch, globalStep: state.globalStep, test: false)), to: presentRanks)
            logger.info("epoch \(epoch + 1)/\(configuration.epochs) done (evaluated every \(configuration.evaluationEvery) epochs)")
        }
        state.evaluatedEpochs = epoch + 1
        saveState(started: started)
        if epoch + 1 < configuration.epochs { publishPhase(nil, .training) }
    }

    private func saveState(started: Date) {
        state.elapsedSeconds = Date().timeIntervalSince(started)
        do { try state.save(output: configuration.output) } catch {
            logger.error("could not write the cohort checkpoint", metadata: ["error": "\(error)"])
        }
    }

    /// Asks every present peer to evaluate and checkpoint, and scores their test-set logits.
    private func gatherEvaluation(epoch: Int) throws -> CohortEvaluation {
        let classes = configuration.data.dataSet.classCount
        let participants = presentRanks
        send(.evaluate(.init(epoch: epoch, globalStep: state.globalStep)), to: participants)
        var logits = [[Float]](repeating: [], count: configuration.peers.count)
        let expected: [(name: String, shape: [Int])] = [("logits", [data.testSet.count, classes])]
        let delivered = try gather("the test-set logits of epoch \(epoch + 1)", from: participants) { rank, message in
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
        let scored = evaluateCohort(logits: delivered.map { logits[$0] }, labels: data.testSet.labels, classCount: classes)
        for (i, r) in delivered.enumerated() { state.lastEvaluation[r] = scored.peers[i] }
        state.ensembleTop1 = scored.ensembleTop1
        state.ensembleTop5 = scored.ensembleTop5
        if delivered.count < configuration.peers.count {
            logger.error("the ensemble of epoch \(epoch + 1) has only peer(s) \(delivered.map(String.init).joined(separator: ", "))")
        }
        return CohortEvaluation(peers: state.lastEvaluation.map { $0 ?? EvaluationResult(top1: 0, top5: 0, loss: 0, count: 0) },
                                ensembleTop1: scored.ensembleTop1, ensembleTop5: scored.ensembleTop5)
    }

    private func reportProgress(epoch: Int, step: Int, started: Date) {
        let rate = Double(state.images) / max(Date().timeIntervalSince(started), 1e-9)
        let total = configuration.epochs * data.stepsPerEpoch
        let eta = Double(total - state.globalStep) * Double(configuration.batchSize) / max(rate, 1e-9)
        let peers = presentRanks.compactMap { statuses[$0] }.map { String(format: "p%d %.3f/%.0f%%", $0.rank, $0.loss, 100 * $0.accuracy) }
        logger.info(Logger.Message(stringLiteral: String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", epoch + 1,
                                                         configuration.epochs, step + 1, data.stepsPerEpoch,
                                                         peers.joined(separator: "  "), rate, ProgressReporter.duration(eta))))
    }

    // MARK: Messaging

    /// Receives until `handle` has accepted one message from every rank of `ranks` still present.
    /// A rank silent for `network.heartbeat_timeout`, or that has not delivered within `network.timeout`,
    /// is marked absent. Returns the ranks that delivered, ascending.
    private func gather(_ awaiting: String, from ranks: [Int], _ handle: (Int, Message) -> Bool) throws -> [Int] {
        var pending = Set(ranks)
        var delivered: [Int] = []
        let since = Date()
        let network = configuration.network
        while !pending.isEmpty {
            try checkStop()
            for r in pending.sorted() {
                if membership[r] != .present {
                    pending.remove(r)
                } else if Date().timeIntervalSince(lastHeard[r]) > network.heartbeatTimeout {
                    markAbsent(r, "nothing heard for \(Int(network.heartbeatTimeout)) s (network.heartbeat_timeout) while awaiting \(awaiting)")
                    pending.remove(r)
                } else if Date().timeIntervalSince(since) > network.timeout {
                    markAbsent(r, "it did not deliver \(awaiting) within \(Int(network.timeout)) s (network.timeout)")
                    pending.remove(r)
                }
            }
            guard !pending.isEmpty else { break }
            guard let (rank, message) = try receiveOne(until: Date() + 0.25) else { continue }
            if pending.contains(rank), handle(rank, message) {
                pending.remove(rank)
                delivered.append(rank)
            } else {
                logger.warning("dropped an unexpected \(message.type) message", metadata: ["rank": "\(rank)", "awaiting": "\(awaiting)"])
            }
        }
        return delivered.sorted()
    }

    /// Sends `message` to each of `ranks`; a rank that cannot be reached is marked absent.
    private func send(_ message: Message, to ranks: [Int]) {
        for rank in ranks {
            guard let identity = members[rank] else { continue }
            do { try control.send(message, to: identity) } catch {
                markAbsent(rank, "unreachable (\(error))")
            }
        }
    }

    /// Sends `message` to every admitted peer, ignoring failures (used when stopping).
    private func broadcast(_ message: Message) {
        for identity in members.compactMap({ $0 }) { try? control.send(message, to: identity) }
    }

    private func checkStop() throws {
        if let signal = StopSignal.current { throw CoordinatorError.stopped(signal: signal) }
    }
}
