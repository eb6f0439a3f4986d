import Foundation
import Data
import Training
import Wire

/// Work a peer's core hands its driver: the network's computations and the files they write. The
/// driver runs one at a time, in order, and answers each with a ``PeerWorkResult``.
public enum PeerWork: Sendable {
    /// Go back to this peer's checkpoint at the step (the cohort continues from there).
    case rewind(to: Int)
    /// The forward pass of the step's batch; answered with the outputs to send.
    case forward(Message.Step, teacher: TeacherOutputs?)
    /// The rest of the step with the others' outputs: loss, backward pass, update, the step's record.
    case finish(Message.Step, others: [PeerOutputs], teacher: TeacherOutputs?, timing: StepTiming)
    /// An epoch's end, first part: the test-set logits.
    case evaluate(Message.Evaluate)
    /// An epoch's end, second part: the epoch's line (with the test scores, when evaluated) and checkpoint.
    case endEpoch(Message.Evaluate, test: EvaluationResult?)
    /// A checkpoint between epoch ends.
    case checkpoint(Message.Checkpoint)
    /// Codistillation: a whole step against the copies of the others (first updated with `copies`, the
    /// weights that came since the last step); with `publish`, answered with this peer's weights after it.
    case codistill(Message.Step, copies: [PeerWeights], publish: Bool, timing: StepTiming)
}

/// When a step's parts happened, for its record (`idle_seconds`, `exchange_seconds`, `step_seconds`).
public struct StepTiming: Sendable, Equatable {
    /// When the step's message arrived (seconds since 1970).
    public var received: Double
    /// Seconds this peer waited for the step's message.
    public var idle: Double
    /// Seconds the coordinator held this peer's outputs waiting for the others'.
    public var waited: Double
    /// Seconds the exchange took beyond that wait.
    public var exchange: Double
}

/// What a ``PeerWork`` came to.
public enum PeerWorkResult: Sendable {
    case rewound(to: Int)
    case forwarded(Message.Step, outputs: [TensorPayload])
    /// The step is done; `status` describes the peer after it.
    case finished(Message.Step, status: PeerStatus)
    /// The test set's logits and their scores.
    case evaluated(Message.Evaluate, logits: [Float], test: EvaluationResult)
    /// The epoch's line and checkpoint are written.
    case epochEnded(Message.Evaluate)
    case checkpointed(Message.Checkpoint)
    /// A codistillation step is done; `weights` are this peer's after it, when asked to publish them.
    case codistilled(Message.Step, status: PeerStatus, weights: [TensorPayload]?)
    case failed(PeerError)
}

/// A peer's protocol as a state machine without input or output: joining (and rejoining after losing the
/// coordinator), heartbeats, the steps' messages, checks on everything the coordinator sends, shutdown.
///
/// A driver feeds it ``Event``s with the time they happen and carries out its ``Action``s; the network's
/// computations are ``PeerWork`` the driver performs (on a worker thread or in line) and answers with
/// ``Event/done(_:)``. While work runs, messages wait in the core's inbox, and heartbeats and liveness go
/// on: a long test-set evaluation does not make the peer look absent.
public struct PeerCore {
    public enum Event: Sendable {
        case start
        case received(Message)
        case invalid(WireError)
        case timer(Timer)
        case done(PeerWorkResult)
        case stop(signal: Int32)
        /// Mesh mode: a message from another peer's data plane, with the sender's authenticated user
        /// (with CURVE).
        case peerData(Message, user: String?)
    }

    public enum Timer: Hashable, Sendable {
        case hello
        case heartbeat
        case check
    }

    public enum Action: Sendable {
        case send(Message)
        /// Mesh mode: send `message` to the other participants' data endpoints.
        case publish(Message, to: [Message.MeshTarget])
        case schedule(Timer, at: Double)
        case perform(PeerWork)
        /// Drop the connection and open a fresh one (nothing stale queued) before the next hello.
        case reconnect
        case log(CoreLog)
        /// Send the buffered log records to the coordinator, with `status` and a change of `phase`.
        case flushLogs(status: PeerStatus?, phase: Phase?)
        case finish(Outcome)
    }

    public enum Outcome: Sendable {
        case finished
        case failed(PeerError)
    }

    enum Stage {
        case notStarted
        case joining(deadline: Double, since: Double, nextNotice: Double)
        /// Awaiting the coordinator's next message, since `since`.
        case ready(since: Double)
        case working(PeerWork, timing: StepTiming?)
        case awaitingOthers(Message.Step, teacher: TeacherOutputs?, sentAt: Double, timing: StepTiming)
        /// Mesh mode: the coordinator named the step's other members (`ranks`); their outputs come
        /// straight from them.
        case awaitingPeers(Message.Step, teacher: TeacherOutputs?, ranks: [Int], since: Double, sentAt: Double, timing: StepTiming)
        case done
    }

    public let rank: Int
    public let configuration: CohortConfiguration
    let timing: ProtocolTiming
    let stepsPerEpoch: Int
    let teacherFeatureCount: Int?
    let sampler: any BatchSampler
    var batchSizes: (epoch: Int, sizes: [Int])?
    let host: String
    let endpoint: String
    /// Mesh mode: where the other peers reach this one.
    let dataEndpoint: String?
    /// Mesh mode: the other peers' outputs as they arrive, by the step's sending and rank, until used.
    var peerOutputs: [MeshKey: PeerData] = [:]

    struct MeshKey: Hashable {
        let attempt: Int
        let rank: Int
    }

    struct PeerData {
        let globalStep: Int
        /// Checked against the step's shapes when they came.
        let outputs: PeerOutputs
    }

    /// Codistillation: whether the coordinator has said where to start (this peer then steps on its own).
    var selfDriving = false
    /// Codistillation: the steps whose end (an epoch's evaluation and checkpoint, a checkpoint) is done.
    var settled: Int
    /// Codistillation: the other peers' weights that came since the last step, newest per rank.
    var receivedWeights: [Int: PeerWeights] = [:]
    /// Codistillation: the step of the newest weights taken from each peer.
    var newestWeights: [Int: Int] = [:]
    /// Mesh mode: where the other peers are, from the coordinator.
    var meshTargets: [Message.MeshTarget] = []
    /// Steps this peer's state has trained.
    public private(set) var done: Int
    /// The admission the heartbeats vouch for; nil while (re)joining.
    public private(set) var session: Int?
    var stage = Stage.notStarted
    var inbox: [Message] = []
    /// When the coordinator was last heard (any message, heartbeat answers included).
    var lastHeard = 0.0
    /// When the last message other than a heartbeat answer came.
    var lastMessage = 0.0
    var heartbeatSequence = 0
    /// Set when the coordinator was lost while work ran: rejoin once it is done.
    var lostWhileWorking: String?
    var lastStatus: PeerStatus?
    var lastTestTop1: Double?
    /// The test-set logits of the epoch being ended, sent once its checkpoint is written.
    var testLogits: [Float]?
    /// A message whose handling waits for a rewind to finish.
    var afterRewind: (Message, StepTiming?)?
    var now = 0.0
    private var actions: [Action] = []

    /// - Parameters:
    ///   - sampler: the cohort's batches (``CohortData/sampler``).
    ///   - done: the steps the peer's state has trained (from its checkpoint, when resumed).
    ///   - teacherFeatureCount: the teacher's feature size, when the cohort has a teacher.
    ///   - endpoint: the coordinator's address, for messages.
    ///   - dataEndpoint: where the other peers reach this one; required in mesh mode (`network.exchange: mesh`).
    public init(configuration: CohortConfiguration, rank: Int, sampler: any BatchSampler, teacherFeatureCount: Int?, timing: ProtocolTiming,
                done: Int = 0, host: String = "", endpoint: String = "", dataEndpoint: String? = nil) {
        precondition(configuration.network.exchange == .coordinator || dataEndpoint != nil, "mesh mode needs a data endpoint")
        self.configuration = configuration; self.rank = rank; self.sampler = sampler
        stepsPerEpoch = sampler.batches(epoch: 0).count
        self.teacherFeatureCount = teacherFeatureCount; self.timing = timing; self.done = done
        self.host = host; self.endpoint = endpoint
        self.dataEndpoint = configuration.network.exchange == .mesh ? dataEndpoint : nil
        settled = done
    }

    /// Whether the peers train without a step barrier (`codistillation`).
    var codistilling: Bool { configuration.codistillation != nil }

    /// Whether the peers send each other their outputs directly (`network.exchange: mesh`).
    var exchangesOverMesh: Bool { dataEndpoint != nil }

    public var isDone: Bool { if case .done = stage { true } else { false } }

    /// Whether work is under way (its result not yet in).
    public var isWorking: Bool { if case .working = stage { true } else { false } }

    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        self.now = now
        if case .done = stage { return [] }
        switch event {
        case .start:
            log(.info, "joining", ["coordinator": endpoint, "model": configuration.peers[rank].model, "steps_done": "\(done)"])
            join()
            schedule(.heartbeat, after: 0)
            schedule(.check, after: timing.checkInterval)
        case .received(let message):
            receive(message)
        case .invalid(let error):
            if case .joining = stage, case .configuration = error { fail(.otherConfiguration(error)) }
        case .timer(let timer):
            fire(timer)
        case .done(let result):
            complete(result)
        case .stop(let signal):
            fail(.signal(signal))
        case .peerData(let message, let user):
            receiveFromPeer(message, user: user)
        }
        defer { actions = [] }
        return actions
    }

    // MARK: Joining and liveness

    private mutating func join() {
        session = nil  // the beats stop vouching for a connection left behind
        stage = .joining(deadline: now + timing.joinTimeout, since: now, nextNotice: now + 10)
        sayHello()
    }

    private mutating func sayHello() {
        actions.append(.send(.hello(.init(rank: rank, model: configuration.peers[rank].model, host: host, resumeStep: done, dataEndpoint: dataEndpoint))))
        schedule(.hello, after: max(2, timing.heartbeatInterval * 2))
    }

    private mutating func rejoin(_ why: String) {
        log(.warning, "lost the coordinator; rejoining", ["why": why, "steps_done": "\(done)"])
        inbox = []
        selfDriving = false
        actions.append(.reconnect)
        join()
    }

    private mutating func fire(_ timer: Timer) {
        switch timer {
        case .hello:
            if case .joining = stage { sayHello() }
        case .heartbeat:
            // A full link drops the beat (the driver sends it without waiting): nothing piles up.
            actions.append(.send(.heartbeat(.init(rank: rank, sequence: heartbeatSequence, session: session))))
            heartbeatSequence += 1
            schedule(.heartbeat, after: timing.heartbeatInterval)
        case .check:
            check()
            if !isDone { schedule(.check, after: timing.checkInterval) }
        }
    }

    private mutating func check() {
        switch stage {
        case .joining(let deadline, let since, let nextNotice):
            if now >= deadline {
                fail(.noCoordinator(endpoint: endpoint, seconds: timing.joinTimeout))
            } else if now >= nextNotice {
                stage = .joining(deadline: deadline, since: since, nextNotice: now + 30)
                log(.notice, "no answer from the coordinator yet; it may still be loading its data or evaluating its teacher, or not be running at \(endpoint)",
                    ["waited_seconds": "\(Int(now - since))", "gives_up_in_seconds": "\(Int(deadline - now))"])
            }
        case .ready, .working, .awaitingOthers, .awaitingPeers:
            let silentFor = now - lastHeard
            var lost: String?
            if silentFor > timing.heartbeatTimeout {
                lost = "no heartbeat from the coordinator for \(Int(timing.heartbeatTimeout)) s"
            } else if case .awaitingOthers(let step, _, let sentAt, _) = stage, now - max(sentAt, lastMessage) > 2 * timing.timeout {
                // The coordinator went away, or dropped this peer from the step: the step is abandoned.
                lost = "no others' outputs for step \(step.globalStep)"
            } else if case .awaitingPeers(let step, _, let ranks, let since, _, _) = stage, now - since > 2 * timing.timeout {
                // A peer the coordinator counted did not reach this one: the step is abandoned here.
                let missing = ranks.filter { peerOutputs[MeshKey(attempt: step.attempt ?? 0, rank: $0)] == nil }
                lost = "no outputs from peer(s) \(missing.map(String.init).joined(separator: ", ")) for step \(step.globalStep) over the mesh"
            }
            guard let lost else { return }
            if isWorking { lostWhileWorking = lostWhileWorking ?? lost } else { rejoin(lost) }
        case .notStarted, .done:
            break
        }
    }

    // MARK: Messages

    private mutating func receive(_ message: Message) {
        lastHeard = now
        // The coordinator answers again: a loss noticed while work ran is over.
        lostWhileWorking = nil
        if case .heartbeat = message { return }
        lastMessage = now
        if case .joining = stage {
            switch message {
            case .welcome(let w):
                guard w.accepted else { fail(.refused(reason: w.reason ?? "no reason given")); return }
                session = w.session
                log(.info, "joined the cohort")
                actions.append(.flushLogs(status: nil, phase: nil))
                stage = .ready(since: now)
            default:
                log(.warning, "dropped a \(message.type) message while joining")
            }
            return
        }
        // The answer to a hello repeated while the coordinator was busy (loading a teacher, say): the
        // admission this peer already holds, nothing to act on.
        if case .welcome(let w) = message, w.accepted, w.session != nil, w.session == session {
            log(.debug, "a repeated welcome (the answer to an earlier hello)")
            return
        }
        if case .members(let m) = message {
            guard m.endpoints.count == configuration.peers.count else {
                log(.warning, "dropped members naming \(m.endpoints.count) endpoints for \(configuration.peers.count) peers")
                return
            }
            meshTargets = Message.MeshTarget.targets(m.endpoints, excluding: rank)
            return
        }
        if isWorking || afterRewind != nil {
            inbox.append(message)
            return
        }
        act(on: message)
        codistillNext()
    }

    /// Acts on a message from the coordinator while no work runs.
    private mutating func act(on message: Message) {
        switch stage {
        case .ready(let since):
            switch message {
            case .step(let step, let tensors) where codistilling:
                // The coordinator says where to start; from there this peer steps on its own.
                guard step.endpoints?.count == configuration.peers.count else {
                    log(.warning, "dropped a step without the \(configuration.peers.count) peers' data endpoints")
                    return
                }
                meshTargets = step.meshTargets(excluding: rank)
                selfDriving = true
                if step.globalStep != done {
                    startStep(step, tensors, timing: StepTiming(received: now, idle: now - since, waited: 0, exchange: 0))
                }
            case .step(let step, let tensors):
                startStep(step, tensors, timing: StepTiming(received: now, idle: now - since, waited: 0, exchange: 0))
            case .evaluate(let e):
                if e.globalStep < done {
                    rewind(to: e.globalStep, then: message, timing: nil)
                    return
                }
                if e.evaluatesTestSet {
                    actions.append(.flushLogs(status: nil, phase: .evaluating))
                    perform(.evaluate(e))
                } else {
                    endEpoch(e, test: nil)
                }
            case .checkpoint(let c):
                actions.append(.flushLogs(status: nil, phase: .checkpointing))
                if done != c.globalStep && !codistilling {
                    log(.warning, "checkpoint written at this peer's own step", ["steps_done": "\(done)", "cohort_step": "\(c.globalStep)"])
                }
                perform(.checkpoint(c))
            case .shutdown(let s):
                shutdown(s)
            default:
                log(.warning, "dropped an unexpected \(message.type) message")
            }
        case .awaitingOthers(let step, let teacher, let sentAt, var timing):
            switch message {
            case .step:
                // The cohort moved on without this peer (it was marked absent): rejoin properly.
                rejoin("the cohort moved on while this peer awaited step \(step.globalStep)'s outputs")
            case .others(let body, let tensors) where body.globalStep == step.globalStep && body.rank == rank && exchangesOverMesh:
                do {
                    try checkRanks(body.ranks)
                    _ = try expectTensors(tensors, [])
                    let participants = Set(step.meshTargets(excluding: rank).map(\.rank))
                    guard participants.isSuperset(of: body.ranks) else {
                        throw WireError.header("ranks \(body.ranks) did not all take part in step \(step.globalStep)")
                    }
                } catch {
                    log(.warning, "dropped invalid others", ["reason": "\(error)"])
                    return
                }
                timing.waited = body.waitSeconds
                stage = .awaitingPeers(step, teacher: teacher, ranks: body.ranks, since: now, sentAt: sentAt, timing: timing)
                finishIfPeersArrived()
            case .others(let body, let tensors) where body.globalStep == step.globalStep && body.rank == rank:
                let others: [PeerOutputs]
                do { others = try unpackOthers(tensors, ranks: body.ranks, batchSize: batchSize(of: step)) } catch {
                    log(.warning, "dropped invalid others", ["reason": "\(error)"])
                    return
                }
                timing.waited = body.waitSeconds
                timing.exchange = max(0, now - sentAt - body.waitSeconds)
                perform(.finish(step, others: others, teacher: teacher, timing: timing), timing: timing)
            case .shutdown(let s):
                shutdown(s)
            default:
                log(.warning, "dropped an unexpected \(message.type) message", ["awaiting": "others of step \(step.globalStep)"])
            }
        case .awaitingPeers(let step, _, _, _, _, _):
            switch message {
            case .step, .checkpoint, .evaluate:
                // The coordinator counted this step done when every peer said its outputs were on their
                // way; what follows may overtake them. It waits for this step's end.
                inbox.append(message)
            case .shutdown(let s):
                shutdown(s)
            default:
                log(.warning, "dropped an unexpected \(message.type) message", ["awaiting": "the others' outputs of step \(step.globalStep)"])
            }
        case .notStarted, .joining, .working, .done:
            inbox.append(message)
        }
    }

    // MARK: The mesh

    /// Keeps another peer's outputs for the step they belong to (checked once that step is known).
    private mutating func receiveFromPeer(_ message: Message, user: String?) {
        guard exchangesOverMesh else { return }
        if case .weights(let body, let tensors) = message {
            receiveWeights(body, tensors, user: user)
            return
        }
        guard case .outputs(let body, let tensors) = message, let attempt = body.attempt else {
            log(.warning, "dropped a \(message.type) message from the mesh (only outputs travel there)")
            return
        }
        let r = body.rank
        guard acceptsSender(rank: r, user: user, of: "outputs") else { return }
        // The steps this peer can still use: from the one it is at (or going back to) on. Outputs may come
        // before the step's message, and for a step far ahead when this peer rejoins behind the cohort.
        var from = done
        if case .working(.rewind(let target), _) = stage { from = target }
        let g = body.globalStep
        guard g >= from, g < configuration.epochs * stepsPerEpoch else { return }
        let step = Message.Step(epoch: g / stepsPerEpoch, step: g % stepsPerEpoch, globalStep: g)
        let outputs: PeerOutputs
        do { outputs = try peerOutputs(rank: r, tensors, batchSize: batchSize(of: step)) } catch {
            log(.warning, "dropped invalid outputs from the mesh", ["rank": "\(r)", "reason": "\(error)"])
            return
        }
        peerOutputs[MeshKey(attempt: attempt, rank: r)] = PeerData(globalStep: g, outputs: outputs)
        // At most three steps' worth of sendings is held: those left behind go first, then the furthest ahead
        // (the next steps' come again from the peers that send them; the current one's would not).
        let limit = 3 * configuration.peers.count
        if peerOutputs.count > limit { peerOutputs = peerOutputs.filter { $0.value.globalStep >= from } }
        if peerOutputs.count > limit {
            for key in peerOutputs.sorted(by: { $0.value.globalStep > $1.value.globalStep }).prefix(peerOutputs.count - limit).map(\.key) {
                peerOutputs[key] = nil
            }
        }
        if case .awaitingPeers = stage { finishIfPeersArrived() }
    }

    /// Codistillation: keeps another peer's newest weights for this peer's next step.
    private mutating func receiveWeights(_ body: Message.Weights, _ tensors: [TensorPayload], user: String?) {
        let r = body.rank
        guard codistilling else {
            log(.warning, "dropped weights from the mesh", ["reason": "this cohort does not codistil"])
            return
        }
        guard acceptsSender(rank: r, user: user, of: "weights") else { return }
        // The same weights again (a repeated sending) change nothing; older ones are taken, as a peer that
        // went back to a checkpoint publishes from there again.
        guard body.globalStep != newestWeights[r] else { return }
        newestWeights[r] = body.globalStep
        receivedWeights[r] = PeerWeights(rank: r, globalStep: body.globalStep, tensors: tensors)
    }

    /// Whether a message from the mesh naming `rank` (sent by CURVE user `user`, when secured) comes from
    /// another peer of this cohort that is who it says; logs why not.
    private mutating func acceptsSender(rank r: Int, user: String?, of what: String) -> Bool {
        var reason: [String: String]?
        if r == rank || !configuration.peers.indices.contains(r) {
            reason = ["reason": "rank \(r) is not another peer of this cohort"]
        } else if let user, user != "peer-\(r)" {
            reason = ["reason": "the sender's key is not peer \(r)'s", "user": user]
        }
        if let reason { log(.warning, "dropped \(what) from the mesh", reason) }
        return reason == nil
    }

    /// Mesh mode: once every rank the coordinator named has sent its outputs, the step goes on.
    private mutating func finishIfPeersArrived() {
        guard case .awaitingPeers(let step, let teacher, let ranks, _, let sentAt, var timing) = stage, let attempt = step.attempt else { return }
        let keys = ranks.map { MeshKey(attempt: attempt, rank: $0) }
        guard keys.allSatisfy({ peerOutputs[$0] != nil }) else { return }
        var others: [PeerOutputs] = []
        for key in keys {
            let data = peerOutputs[key]!
            guard data.globalStep == step.globalStep else {
                // Another step under this sending's number: wrong, and not sent again; wait, and rejoin if nothing better comes.
                log(.warning, "dropped invalid outputs from the mesh", ["rank": "\(key.rank)", "reason": "global step \(data.globalStep) for step \(step.globalStep)"])
                peerOutputs[key] = nil
                return
            }
            others.append(data.outputs)
        }
        peerOutputs = peerOutputs.filter { $0.value.globalStep > step.globalStep }
        timing.exchange = max(0, now - sentAt - timing.waited)
        perform(.finish(step, others: others, teacher: teacher, timing: timing), timing: timing)
    }

    private mutating func startStep(_ step: Message.Step, _ tensors: [TensorPayload], timing: StepTiming) {
        let spe = stepsPerEpoch
        if exchangesOverMesh, let endpoints = step.endpoints, endpoints.count != configuration.peers.count {
            log(.warning, "dropped a step naming \(endpoints.count) data endpoints for \(configuration.peers.count) peers", ["global_step": "\(step.globalStep)"])
            return
        }
        guard step.epoch < configuration.epochs, step.step < spe, step.globalStep == step.epoch * spe + step.step else {
            fail(.outOfStep("step \(step.step) of epoch \(step.epoch) as global step \(step.globalStep) does not fit \(configuration.epochs) epochs of \(spe) steps"))
            return
        }
        if step.globalStep < done {
            rewind(to: step.globalStep, then: .step(step, teacher: tensors), timing: timing)
            return
        }
        if step.globalStep > done {
            log(.warning, "skipping ahead to the cohort's step", ["steps_done": "\(done)", "cohort_step": "\(step.globalStep)"])
        }
        let teacher: TeacherOutputs?
        do { teacher = try teacherOutputs(tensors, batchSize: batchSize(of: step)) } catch {
            // A malformed step is dropped like any malformed message; the coordinator counts this peer
            // absent if nothing better comes, and the peer rejoins.
            log(.warning, "dropped a step with invalid teacher outputs", ["global_step": "\(step.globalStep)", "reason": "\(error)"])
            return
        }
        if codistilling {
            let copies = receivedWeights.keys.sorted().map { receivedWeights[$0]! }
            receivedWeights = [:]
            let every = configuration.codistillation!.every
            perform(.codistill(step, copies: copies, publish: (step.globalStep + 1) % every == 0, timing: timing), timing: timing)
            return
        }
        perform(.forward(step, teacher: teacher), timing: timing)
    }

    /// Codistillation: what this peer does next on its own — the end of the step just trained (an
    /// epoch's evaluation and checkpoint, a checkpoint), then the next step, until the last.
    private mutating func codistillNext() {
        guard codistilling, selfDriving, case .ready = stage, afterRewind == nil, inbox.isEmpty else { return }
        let spe = stepsPerEpoch
        if settled < done {
            if done % spe == 0 {
                let epoch = done / spe - 1
                let e = Message.Evaluate(epoch: epoch, globalStep: done, test: configuration.evaluates(epoch: epoch))
                if e.evaluatesTestSet {
                    actions.append(.flushLogs(status: nil, phase: .evaluating))
                    perform(.evaluate(e))
                } else {
                    endEpoch(e, test: nil)
                }
                return
            }
            if configuration.checkpointEvery > 0, done % configuration.checkpointEvery == 0 {
                actions.append(.flushLogs(status: nil, phase: .checkpointing))
                perform(.checkpoint(.init(globalStep: done)))
                return
            }
            settled = done
        }
        // After the last step the coordinator, holding every peer's last logits, ends the run.
        guard done < configuration.epochs * spe else { return }
        startStep(Message.Step(epoch: done / spe, step: done % spe, globalStep: done), [],
                  timing: StepTiming(received: now, idle: 0, waited: 0, exchange: 0))
    }

    private mutating func rewind(to step: Int, then message: Message, timing: StepTiming?) {
        afterRewind = (message, timing)
        perform(.rewind(to: step))
    }

    private mutating func shutdown(_ s: Message.Shutdown) {
        if s.cause == .finished {
            log(.info, "the cohort finished")
            actions.append(.flushLogs(status: nil, phase: nil))
            stage = .done
            actions.append(.finish(.finished))
        } else {
            fail(.stopped(reason: s.reason), tellCoordinator: false)
        }
    }

    // MARK: Work

    private mutating func perform(_ work: PeerWork, timing: StepTiming? = nil) {
        stage = .working(work, timing: timing)
        actions.append(.perform(work))
    }

    private mutating func complete(_ result: PeerWorkResult) {
        guard case .working(let work, let timing) = stage else { return }
        stage = .ready(since: now)
        switch result {
        case .failed(let error):
            fail(error)
            return
        case .rewound(let step):
            log(.notice, "went back to the cohort's step", ["steps_done": "\(done)", "cohort_step": "\(step)"])
            done = step
            settled = step
            if let (message, timing) = afterRewind, lostWhileWorking == nil {
                afterRewind = nil
                if case .step(let s, let tensors) = message, let timing {
                    startStep(s, tensors, timing: timing)
                } else {
                    act(on: message)
                }
                if isWorking { return }
            }
            afterRewind = nil
        case .forwarded(let step, let outputs):
            if lostWhileWorking == nil {
                if exchangesOverMesh {
                    // The outputs to the others, then word to the coordinator that they are on their way.
                    let header = Message.StepOutputs(rank: rank, globalStep: step.globalStep, attempt: step.attempt)
                    actions.append(.publish(.outputs(header, tensors: outputs), to: step.meshTargets(excluding: rank)))
                    actions.append(.send(.outputs(header, tensors: [])))
                } else {
                    actions.append(.send(.outputs(.init(rank: rank, globalStep: step.globalStep), tensors: outputs)))
                }
                guard case .forward(_, let teacher) = work, let timing else { break }
                stage = .awaitingOthers(step, teacher: teacher, sentAt: now, timing: timing)
                // What came during the forward pass (the others already, or a shutdown) is for this stage.
                drainInbox()
                return
            }
        case .finished(let step, let status):
            done = step.globalStep + 1
            lastStatus = status
            actions.append(.flushLogs(status: status, phase: nil))
        case .evaluated(let e, let logits, let test):
            lastTestTop1 = test.top1
            if lostWhileWorking == nil {
                testLogits = logits
                endEpoch(e, test: test)
                return
            }
        case .epochEnded(let e):
            // The line and checkpoint first, then the logits: the cohort's epoch result follows every
            // peer's line, and a coordinator that holds the logits knows the checkpoint exists.
            actions.append(.flushLogs(status: lastStatus.map { $0.with(testAccuracy: lastTestTop1) }, phase: codistilling ? .training : .waiting))
            if let logits = testLogits, e.evaluatesTestSet {
                let classes = configuration.data.dataSet.classCount
                actions.append(.send(.evaluation(.init(rank: rank, epoch: e.epoch),
                                                 tensors: [TensorPayload(name: "logits", shape: [logits.count / classes, classes], values: logits)])))
            }
            testLogits = nil
            settled = done
        case .checkpointed:
            settled = done
            actions.append(.flushLogs(status: nil, phase: codistilling ? .training : .waiting))
        case .codistilled(let step, let status, let weights):
            done = step.globalStep + 1
            lastStatus = status
            actions.append(.flushLogs(status: status, phase: nil))
            if let weights, !meshTargets.isEmpty {
                actions.append(.publish(.weights(.init(rank: rank, globalStep: done), tensors: weights), to: meshTargets))
            }
        }
        if let lost = lostWhileWorking {
            lostWhileWorking = nil
            rejoin(lost)
            return
        }
        drainInbox()
        codistillNext()
    }

    private mutating func endEpoch(_ e: Message.Evaluate, test: EvaluationResult?) {
        actions.append(.flushLogs(status: nil, phase: .checkpointing))
        perform(.endEpoch(e, test: test))
    }

    private mutating func drainInbox() {
        while !inbox.isEmpty, !isWorking, !isDone {
            if case .joining = stage { return }
            if case .awaitingPeers = stage {
                // What comes after the step waits for it; only a shutdown does not.
                if let i = inbox.firstIndex(where: { if case .shutdown = $0 { true } else { false } }) { act(on: inbox.remove(at: i)) }
                return
            }
            act(on: inbox.removeFirst())
        }
    }

    // MARK: Checks on what the coordinator sends

    /// The size of `step`'s batch: every member derives the same batches from the seed.
    private mutating func batchSize(of step: Message.Step) -> Int {
        if batchSizes?.epoch != step.epoch { batchSizes = (step.epoch, sampler.batches(epoch: step.epoch).map(\.count)) }
        return batchSizes!.sizes[step.step]
    }

    /// The teacher's outputs for a batch of `b`, checked against the shapes the configuration implies.
    func teacherOutputs(_ tensors: [TensorPayload], batchSize b: Int) throws -> TeacherOutputs? {
        let classes = configuration.data.dataSet.classCount
        guard let t = teacherFeatureCount else {
            _ = try expectTensors(tensors, [])
            return nil
        }
        let byName = try expectTensors(tensors, [("feature", [b, t]), ("logits", [b, classes]), ("gradient_element", [b, t])])
        return TeacherOutputs(batchSize: b, featureCount: t, classCount: classes, feature: byName["feature"]!.values,
                              logits: byName["logits"]!.values, gradientElement: byName["gradient_element"]!.values)
    }

    /// Checks that `ranks` are distinct other ranks of this cohort, ascending.
    func checkRanks(_ ranks: [Int]) throws {
        guard ranks == ranks.sorted(), Set(ranks).count == ranks.count, !ranks.contains(rank),
              ranks.allSatisfy({ configuration.peers.indices.contains($0) }) else {
            throw WireError.header("ranks \(ranks) are not distinct other ranks of this cohort, ascending")
        }
    }

    /// Peer `r`'s outputs as it sent them over the mesh, checked against the shapes the configuration implies.
    func peerOutputs(rank r: Int, _ tensors: [TensorPayload], batchSize b: Int) throws -> PeerOutputs {
        let byName = try expectTensors(tensors, configuration.outputLayout.expected(batchSize: b))
        return outputs(rank: r, batchSize: b) { byName[$0.name]?.values }
    }

    /// Peer `r`'s outputs from the checked tensors `values` gives for each part of the layout.
    private func outputs(rank r: Int, batchSize b: Int, _ values: (OutputLayout.Tensor) -> [Float]?) -> PeerOutputs {
        PeerOutputs(rank: r, batchSize: b, embedding: values(.embedding), embeddingDimension: configuration.mcl.embeddingDimension,
                    auxiliaryEmbeddings: (1..<CohortConfiguration.MCLSettings.layerCount).compactMap { values(.auxiliaryEmbedding(branch: $0)) },
                    logits: values(.logits)!, classCount: configuration.data.dataSet.classCount)
    }

    /// The other present members' outputs, in rank order, checked against the shapes the configuration implies.
    func unpackOthers(_ tensors: [TensorPayload], ranks: [Int], batchSize b: Int) throws -> [PeerOutputs] {
        try checkRanks(ranks)
        let byName = try expectTensors(tensors, configuration.outputLayout.expectedOthers(ranks: ranks, batchSize: b))
        return ranks.map { r in outputs(rank: r, batchSize: b) { OutputLayout.values(of: $0, rank: r, in: byName) } }
    }

    // MARK: Endings

    private mutating func fail(_ error: PeerError, tellCoordinator: Bool = true) {
        log(.error, "\(error)")
        actions.append(.flushLogs(status: nil, phase: nil))
        // Tell the coordinator, unless it is the one that stopped the run.
        if tellCoordinator { actions.append(.send(.shutdown(.init(.failed("\(error)"))))) }
        stage = .done
        actions.append(.finish(.failed(error)))
    }

    private mutating func schedule(_ timer: Timer, after seconds: Double) {
        guard seconds.isFinite else { return }
        actions.append(.schedule(timer, at: now + seconds))
    }

    private mutating func log(_ level: CoreLog.Level, _ message: String, _ metadata: [String: String] = [:]) {
        actions.append(.log(CoreLog(level, message, metadata)))
    }
}
