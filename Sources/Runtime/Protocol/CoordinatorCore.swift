import Foundation
import Tensors
import Training
import Wire

/// The coordinator's protocol as a state machine without input or output: admission, membership and
/// liveness, the step schedule, the epoch ends and scoring, checkpoints, resume, shutdown.
///
/// A driver feeds it ``Event``s with the time they happen (`now`, seconds since 1970) and carries out
/// the ``Action``s it returns: it owns the sockets (or the in-memory queues), the timers, the teacher, the
/// files and the log. Nothing here reads a clock, touches a socket or a file, or looks at a global, so
/// every decision can be driven and checked with a fake clock (`CoordinatorCoreTests`).
///
/// The cohort runs step by step: the teacher's outputs for the step's batch go to every present peer with
/// `step`; each peer's `outputs` come back; every peer gets the others' with `others`. At each epoch's end
/// the peers' test-set logits are scored, each peer's and the ensemble's; every `checkpoint_every` steps
/// and epoch every member checkpoints at the same step. A peer that misses its heartbeats, or does not
/// deliver within `network.timeout`, is marked absent and the cohort goes on with the others; a peer that
/// says hello again rejoins at the next step. The protocol: `docs/protocol.md`.
public struct CoordinatorCore {
    public enum Event: Sendable {
        /// Begin: admit the peers (resuming from the saved states given at ``init``, when any).
        case start
        case received(Message, from: ConnectionID, user: String?)
        /// A message that failed validation.
        case invalid(WireError, from: ConnectionID)
        /// A send to `connection` failed (the peer is unreachable).
        case sendFailed(to: ConnectionID, error: String)
        case timer(Timer)
        /// The answer to ``Action/prepareStep(_:)``: the step's batch size and the teacher's outputs.
        case stepPrepared(Message.Step, batchSize: Int, teacher: [TensorPayload])
        case stop(StopRequest)
    }

    public enum Timer: Hashable, Sendable {
        /// Re-check the deadlines (admission, liveness, delivery).
        case check
    }

    public enum StopRequest: Sendable, Equatable {
        /// A signal: tell the peers the run failed, and stop.
        case signal(Int32)
        /// Stop at the next step's start after every present member checkpoints there (to resume later).
        case checkpointAndStop(signal: Int32?)
    }

    public enum Action: Sendable {
        case send(Message, to: ConnectionID)
        /// Fire `timer` at `at` (replacing an earlier schedule of the same timer).
        case schedule(Timer, at: Double)
        /// Compute the teacher's outputs for this step's batch (none without a teacher) and answer with
        /// ``Event/stepPrepared(_:batchSize:teacher:)``.
        case prepareStep(Message.Step)
        case recordStep(globalStep: Int, present: [Int])
        case recordEpoch(epoch: Int, globalStep: Int, evaluation: CohortEvaluation, seconds: Double)
        /// Cut the cohort's metrics after this step (a resume from a checkpoint there).
        case truncateHistory(afterGlobalStep: Int)
        case saveState(CoordinatorState)
        case publish(StreamEvent)
        case log(CoreLog)
        /// A step's progress line; `endsEpoch` on an epoch's last step.
        case progress(String, endsEpoch: Bool)
        /// The run is over: write the summary (when finished) and stop.
        case finish(Outcome)
    }

    public enum Outcome: Sendable {
        case finished(CohortSummary)
        case failed(CoordinatorError)
        /// Stopped with every present member checkpointed at `globalStep`.
        case stopped(globalStep: Int, signal: Int32?)
    }

    /// A configured rank's standing.
    public enum Membership: Equatable, Sendable {
        case absent
        /// Admitted; takes part from the next step.
        case joining
        case present
    }

    /// What the coordinator waits for.
    enum Stage {
        case notStarted
        case admitting(deadline: Double, requireAll: Bool)
        /// Nobody present: waiting for anyone, then `then`.
        case awaitingAnyone(deadline: Double, then: Continuation)
        case preparing(Message.Step)
        case gathering(Gathering)
        /// Before the last epoch's end: waiting for absent peers so that the summary covers everyone.
        case awaitingAbsent(epoch: Int, deadline: Double)
        /// Codistillation: every peer steps on its own; the coordinator keeps membership and scores each
        /// epoch once every peer present has sent its test-set logits (by epoch, then rank).
        case codistilling(Codistilling)
        case done
    }

    enum Continuation { case step, epochEnd(Int) }

    /// What the coordinator keeps while the peers codistil.
    struct Codistilling {
        /// The peers' test-set logits by epoch, then rank, until the epoch is scored.
        var logits: [Int: [Int: [Float]]] = [:]
        /// Ranks not awaited for an epoch: they came back with weights past its end and did not send its logits.
        var excused: [Int: Set<Int>] = [:]
        /// Since when nobody has been present.
        var nobodySince: Double?
        /// Since when the last epoch has waited for absent peers (`network.join_timeout` at most).
        var lastEpochWaitSince: Double?
    }

    struct Gathering {
        enum Kind {
            case outputs(Message.Step, batchSize: Int, expected: [(name: String, shape: [Int])])
            case evaluation(epoch: Int)
        }
        let kind: Kind
        let awaiting: String
        var pending: Set<Int>
        var delivered: [Int] = []
        let since: Double
        var outputs: [[TensorPayload]]
        var arrival: [Double]
        var logits: [[Float]]
    }

    public let configuration: CohortConfiguration
    let timing: ProtocolTiming
    let stepsPerEpoch: Int
    let testLabels: [Int]
    let trainCount: Int
    /// Shown in errors telling where peers should connect.
    let endpoint: String
    let host: String
    let transport: String
    /// Saved states to resume from, oldest first (empty: a fresh start).
    let savedStates: [CoordinatorState]
    public private(set) var membership: [Membership]
    public private(set) var state = CoordinatorState()
    var members: [ConnectionID?]
    var hosts: [String]
    var lastHeard: [Double]
    /// Each member's admission token (``Message/Welcome/session``): only heartbeats that carry it count.
    var sessions: [Int?]
    var resumeSteps: [Int]
    var statuses: [PeerStatus?]
    var stage = Stage.notStarted
    var training = false
    var resumedFromState = false
    var started = 0.0
    var sessionGenerator: SeededGenerator
    /// Mesh mode: each member's data endpoint (from its hello).
    var dataEndpoints: [String?]
    /// Mesh mode: the number the next step sent carries (``Message/Step/attempt``); it starts at a
    /// random value, so that a restarted coordinator's numbers differ from its predecessor's.
    var nextAttempt: Int
    var pendingStop: StopRequest?
    var now = 0.0
    private var actions: [Action] = []

    /// - Parameters:
    ///   - stepsPerEpoch: from the sampler.
    ///   - trainCount: the training set's size (for the log).
    ///   - testLabels: the test set's labels, for scoring the peers' logits.
    ///   - savedStates: the cohort checkpoints to resume from, oldest first; empty for a fresh start.
    ///   - teacherTop1: the teacher's test accuracy, when the driver evaluated it.
    ///   - sessionSeed: seeds the admission tokens (random in a real coordinator, fixed in tests).
    public init(configuration: CohortConfiguration, stepsPerEpoch: Int, trainCount: Int, testLabels: [Int], timing: ProtocolTiming,
                savedStates: [CoordinatorState] = [], teacherTop1: Double? = nil, endpoint: String = "", host: String = "",
                transport: String = "zmq", sessionSeed: UInt64 = 1) {
        self.configuration = configuration
        self.stepsPerEpoch = stepsPerEpoch
        self.testLabels = testLabels
        self.trainCount = trainCount
        self.timing = timing
        self.savedStates = savedStates
        self.endpoint = endpoint
        self.host = host
        self.transport = transport
        let n = configuration.peers.count
        membership = Array(repeating: .absent, count: n)
        members = Array(repeating: nil, count: n)
        hosts = Array(repeating: "?", count: n)
        lastHeard = Array(repeating: 0, count: n)
        sessions = Array(repeating: nil, count: n)
        resumeSteps = Array(repeating: 0, count: n)
        statuses = Array(repeating: nil, count: n)
        state.lastEvaluation = Array(repeating: nil, count: n)
        state.teacherTop1 = teacherTop1
        sessionGenerator = SeededGenerator(seed: sessionSeed)
        dataEndpoints = Array(repeating: nil, count: n)
        var attempts = SeededGenerator(seed: ~sessionSeed)
        nextAttempt = Int(attempts.next() >> 16)
    }

    /// Whether the peers send each other their outputs directly (`network.exchange: mesh`).
    var exchangesOverMesh: Bool { configuration.network.exchange == .mesh }

    /// Whether the run is over (an ``Action/finish(_:)`` was returned).
    public var isDone: Bool { if case .done = stage { true } else { false } }

    /// The ranks that take part in the current step.
    public var presentRanks: [Int] { membership.indices.filter { membership[$0] == .present } }

    /// Handles one event and returns what to do, in order.
    public mutating func handle(_ event: Event, now: Double) -> [Action] {
        self.now = now
        if case .done = stage { return [] }
        switch event {
        case .start:
            start()
        case .received(let message, let connection, let user):
            receive(message, from: connection, user: user)
        case .invalid(let error, let connection):
            // A member's malformed message is no sign of life; a stranger's may be a peer with another configuration.
            if rank(of: connection) == nil { refuseStranger(error, connection) }
        case .sendFailed(let connection, let error):
            if let r = rank(of: connection) { markAbsent(r, "unreachable (\(error))") }
        case .timer(.check):
            check()
        case .stepPrepared(let step, let batchSize, let teacher):
            if case .preparing(let awaited) = stage, awaited == step { sendStep(step, batchSize: batchSize, teacher: teacher) }
        case .stop(let request):
            stop(request)
        }
        advance()
        defer { actions = [] }
        return actions
    }

    // MARK: Start and resume

    private mutating func start() {
        let restored: Bool
        do { restored = try restoreState() } catch let error as ResumeError {
            fail(.resume(error))
            return
        } catch {
            fail(.resume(.inconsistent("\(error)")))
            return
        }
        resumedFromState = restored
        if !restored { state.settings = configuration.canonicalSettings }
        let n = configuration.peers.count
        publishPhase(nil, .waiting, "for \(n) peer(s) to join")
        log(.info, "waiting for \(n) peer(s)", ["digest": configuration.digest])
        stage = .admitting(deadline: now + timing.joinTimeout, requireAll: !restored)
        actions.append(.schedule(.check, at: now + timing.checkInterval))
    }

    /// Takes the newest saved state; whether there was one. Refuses one saved with other settings.
    private mutating func restoreState() throws -> Bool {
        guard var restored = savedStates.last else {
            if !savedStates.isEmpty || resumeRequested { log(.notice, "no cohort checkpoint to resume from; starting at step 0") }
            return false
        }
        if restored.lastEvaluation.count != configuration.peers.count {
            restored.lastEvaluation = Array(repeating: nil, count: configuration.peers.count)
        }
        try configuration.checkUnchanged(since: restored.settings)
        if restored.settings == nil { restored.settings = configuration.canonicalSettings }
        if restored.teacherTop1 == nil { restored.teacherTop1 = state.teacherTop1 }
        state = restored
        actions.append(.truncateHistory(afterGlobalStep: state.globalStep))
        log(.notice, "resumed", ["global_step": "\(state.globalStep)", "epochs_evaluated": "\(state.evaluatedEpochs)"])
        return true
    }

    /// Set by the driver when the run was started with `--resume` (only changes what is said when
    /// there is nothing to resume from).
    public var resumeRequested = false

    /// Where training continues. Resumed from a cohort checkpoint: at the newest step for which this
    /// coordinator has a state and every present peer a checkpoint (peers further on go back to it, so
    /// the run trains exactly what an uninterrupted one would). Otherwise: from where the peers are (a
    /// coordinator started afresh beside running peers).
    private mutating func startingStep(total: Int) -> Int {
        let peerSteps = presentRanks.map { resumeSteps[$0] }
        guard resumedFromState else { return min(total, max(state.globalStep, peerSteps.max() ?? 0)) }
        let target = min(total, state.globalStep, peerSteps.min() ?? state.globalStep)
        if target < state.globalStep {
            // Without an older state of its own, the coordinator keeps its measurements and goes back in steps.
            var restored = savedStates.last { $0.globalStep <= target } ?? state
            if restored.globalStep == state.globalStep {
                restored.globalStep = target
                restored.evaluatedEpochs = min(state.evaluatedEpochs, target / stepsPerEpoch)
            }
            if restored.lastEvaluation.count != configuration.peers.count {
                restored.lastEvaluation = Array(repeating: nil, count: configuration.peers.count)
            }
            if restored.teacherTop1 == nil { restored.teacherTop1 = state.teacherTop1 }
            if restored.settings == nil { restored.settings = state.settings }
            log(.notice, "going back to the step every peer has a checkpoint of",
                ["cohort_checkpoint_step": "\(state.globalStep)", "peer_steps": "\(peerSteps)", "step": "\(restored.globalStep)"])
            state = restored
            actions.append(.truncateHistory(afterGlobalStep: state.globalStep))
        }
        return state.globalStep
    }

    private mutating func beginTraining() {
        let n = configuration.peers.count
        let spe = stepsPerEpoch
        let total = configuration.epochs * spe
        for r in membership.indices where membership[r] == .joining { membership[r] = .present }
        log(.info, "\(presentRanks.count) of \(n) peer(s) joined", ["hosts": Set(presentRanks.map { hosts[$0] }).sorted().joined(separator: ",")])
        training = true
        if let t = state.teacherTop1, let teacher = configuration.teacher {
            log(.info, String(format: "teacher %@: test top-1 %.2f%%", teacher.model, 100 * t))
        }
        if configuration.codistillation != nil {
            beginCodistilling()
            return
        }
        let checkpointStep = state.globalStep
        let start = startingStep(total: total)
        if start > 0 { log(.notice, "continuing at step \(start)", ["checkpoint_step": "\(checkpointStep)"]) }
        state.globalStep = start
        log(.info, "cohort of \(n) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(configuration.data.dataSet.rawValue): "
            + "\(trainCount) images, \(spe) steps/epoch, \(configuration.epochs) epochs")
        started = now - state.elapsedSeconds
        publishPhase(nil, .training)
        // An epoch whose end the previous coordinator did not get to evaluate.
        if start > 0, start % spe == 0, state.evaluatedEpochs < start / spe {
            endEpoch(start / spe - 1)
        } else {
            nextStep()
        }
    }

    // MARK: Codistillation

    private mutating func beginCodistilling() {
        let spe = stepsPerEpoch
        log(.info, "cohort of \(configuration.peers.count) (\(configuration.peers.map(\.model).joined(separator: ", "))) on \(configuration.data.dataSet.rawValue): "
            + "\(trainCount) images, \(spe) steps/epoch, \(configuration.epochs) epochs; codistilling (each peer at its own pace, "
            + "weights every \(configuration.codistillation!.every) steps)")
        started = now - state.elapsedSeconds
        publishPhase(nil, .training)
        stage = .codistilling(Codistilling())
        if state.evaluatedEpochs >= configuration.epochs {
            finishRun()
            return
        }
        var c = Codistilling()
        for r in presentRanks { startOnItsOwn(r, &c) }
        advanceCodistilling(c)
    }

    /// Every present peer's data endpoint by rank (empty for the others).
    private var presentEndpoints: [String] {
        membership.indices.map { membership[$0] == .present ? dataEndpoints[$0] ?? "" : "" }
    }

    /// Tells peer `r` to step on its own from where its state is (after the last step: to send its last
    /// epoch's logits again). Earlier epochs it is past and has not sent the logits of (they were lost with
    /// a connection, or a previous coordinator) are scored without it: its weights are past them.
    private mutating func startOnItsOwn(_ r: Int, _ c: inout Codistilling) {
        let spe = stepsPerEpoch, total = configuration.epochs * spe
        let g = resumeSteps[r]
        // (A peer back from a checkpoint behind the epochs already scored has none to be excused from.)
        for epoch in state.evaluatedEpochs..<max(state.evaluatedEpochs, min(g / spe, configuration.epochs - 1)) where c.logits[epoch]?[r] == nil {
            c.excused[epoch, default: []].insert(r)
        }
        if g >= total {
            send(.evaluate(.init(epoch: configuration.epochs - 1, globalStep: total)), to: [r])
            return
        }
        let step = Message.Step(epoch: g / spe, step: g % spe, globalStep: g).forMesh(attempt: nextAttempt, endpoints: presentEndpoints)
        nextAttempt &+= 1
        send(.step(step, teacher: []), to: [r])
    }

    /// Codistillation: admits those back, scores every epoch all present peers have sent their logits
    /// for, in order, and ends the run after the last.
    private mutating func advanceCodistilling(_ c: Codistilling) {
        var c = c
        let joining = membership.indices.filter { membership[$0] == .joining }
        if !joining.isEmpty {
            for r in joining { membership[r] = .present }
            for r in joining { startOnItsOwn(r, &c) }
            // The others learn where the new ones receive.
            send(.members(.init(endpoints: presentEndpoints)), to: presentRanks.filter { !joining.contains($0) })
        }
        let present = presentRanks
        let last = configuration.epochs - 1
        while state.evaluatedEpochs < configuration.epochs {
            let epoch = state.evaluatedEpochs
            if !configuration.evaluates(epoch: epoch) {
                state.evaluatedEpochs = epoch + 1
                continue
            }
            let delivered = (c.logits[epoch] ?? [:]).keys.sorted()
            guard Set(delivered).union(c.excused[epoch] ?? []).isSuperset(of: present), !(delivered.isEmpty && present.isEmpty) else { break }
            if delivered.isEmpty {
                // Every peer came back past this epoch's end without its logits (a stop, a lost coordinator).
                log(.error, "epoch \(epoch + 1) ends unscored: no peer's test-set logits of it are left")
                state.evaluatedEpochs = epoch + 1
                saveState()
                c.excused[epoch] = nil
                continue
            }
            // The last epoch waits for absent peers (network.join_timeout), so that the summary covers everyone.
            if epoch == last, delivered.count < configuration.peers.count, timing.joinTimeout > 0 {
                let since = c.lastEpochWaitSince ?? now
                c.lastEpochWaitSince = since
                if now - since < timing.joinTimeout { break }
            }
            state.globalStep = (epoch + 1) * stepsPerEpoch
            state.images = state.globalStep * configuration.batchSize
            scoreEpoch(epoch, delivered: delivered, logits: delivered.map { c.logits[epoch]![$0]! })
            state.evaluatedEpochs = epoch + 1
            saveState()
            c.logits[epoch] = nil
            c.excused[epoch] = nil
        }
        c.nobodySince = present.isEmpty ? c.nobodySince ?? now : nil
        stage = .codistilling(c)
        if state.evaluatedEpochs >= configuration.epochs { finishRun() }
    }

    /// Whether the peers codistil (the driver then asks about stopping between its rounds, not before steps).
    public var isCodistilling: Bool { if case .codistilling = stage { true } else { false } }

    // MARK: The schedule

    /// The next step, or the run's end.
    private mutating func nextStep() {
        if let request = pendingStop {
            pendingStop = nil
            stopAtStep(request)
            return
        }
        guard state.globalStep < configuration.epochs * stepsPerEpoch else {
            finishRun()
            return
        }
        guard promote() else {
            stage = .awaitingAnyone(deadline: now + timing.joinTimeout, then: .step)
            return
        }
        let g = state.globalStep
        let step = Message.Step(epoch: g / stepsPerEpoch, step: g % stepsPerEpoch, globalStep: g)
        stage = .preparing(step)
        actions.append(.prepareStep(step))
    }

    private mutating func sendStep(_ prepared: Message.Step, batchSize: Int, teacher: [TensorPayload]) {
        let participants = presentRanks
        let n = configuration.peers.count
        var step = prepared
        if exchangesOverMesh {
            // The participants' data endpoints travel with the step: a peer that rejoined from elsewhere
            // is reached at its new one.
            step = prepared.forMesh(attempt: nextAttempt, endpoints: (0..<n).map { participants.contains($0) ? dataEndpoints[$0] ?? "" : "" })
            nextAttempt &+= 1
        }
        send(.step(step, teacher: teacher), to: participants)
        // In mesh mode an output message only says the peer has sent its outputs to the others.
        let expected = exchangesOverMesh ? [] : configuration.outputLayout.expected(batchSize: batchSize)
        stage = .gathering(Gathering(kind: .outputs(step, batchSize: batchSize, expected: expected),
                                     awaiting: "the outputs of step \(step.globalStep)", pending: Set(participants), since: now,
                                     outputs: Array(repeating: [], count: n), arrival: Array(repeating: now, count: n),
                                     logits: Array(repeating: [], count: n)))
    }

    /// Every delivered output is in: each peer gets the others', and the step is counted.
    private mutating func completeStep(_ g: Gathering, _ step: Message.Step, batchSize b: Int) {
        let delivered = g.delivered.sorted()
        guard !delivered.isEmpty else {
            // Nobody delivered (every participant turned out absent): the step runs again with whoever rejoins.
            nextStep()
            return
        }
        let layout = configuration.outputLayout
        // Whoever is served first starts its backward pass first; rotate so no peer always waits longest.
        for i in delivered.indices {
            let rank = delivered[(i + step.globalStep) % delivered.count]
            let ranks = delivered.filter { $0 != rank }
            let others = exchangesOverMesh ? [] : ranks.flatMap { r in layout.forOthers(rank: r, g.outputs[r]) }
            send(.others(.init(rank: rank, globalStep: step.globalStep, ranks: ranks, waitSeconds: now - g.arrival[rank]), tensors: others),
                 to: [rank])
        }
        state.globalStep = step.globalStep + 1
        state.images += b
        actions.append(.recordStep(globalStep: state.globalStep, present: delivered))
        let spe = stepsPerEpoch
        let rate = Double(state.images) / max(now - started, 1e-9)
        let eta = Double(configuration.epochs * spe - state.globalStep) * Double(configuration.batchSize) / max(rate, 1e-9)
        let peers = presentRanks.compactMap { statuses[$0] }.map { String(format: "p%d %.3f/%.0f%%", $0.rank, $0.loss, 100 * $0.accuracy) }
        actions.append(.progress(String(format: "epoch %d/%d step %d/%d  %@  %.0f img/s  ETA %@", step.epoch + 1, configuration.epochs,
                                        step.step + 1, spe, peers.joined(separator: "  "), rate, ProgressReporter.duration(eta)),
                                 endsEpoch: state.globalStep % spe == 0))
        if state.globalStep % spe == 0 {
            endEpoch(step.epoch)
        } else {
            if configuration.checkpointEvery > 0, state.globalStep % configuration.checkpointEvery == 0 {
                send(.checkpoint(.init(globalStep: state.globalStep)), to: presentRanks)
                saveState()
                log(.info, "checkpoint at step \(state.globalStep)")
            }
            nextStep()
        }
    }

    /// An epoch's end: every present peer evaluates (on the epochs `evaluation_every` names) and
    /// checkpoints. After the last epoch, absent peers are awaited (`network.join_timeout`) so that the
    /// summary covers everyone.
    private mutating func endEpoch(_ epoch: Int) {
        if epoch == configuration.epochs - 1, membership.contains(.absent), timing.joinTimeout > 0 {
            stage = .awaitingAbsent(epoch: epoch, deadline: now + timing.joinTimeout)
            return
        }
        evaluateEpoch(epoch)
    }

    private mutating func evaluateEpoch(_ epoch: Int) {
        // Only a joining peer whose state has trained every step of the run so far takes part in an epoch's
        // end: another (back after missing steps) would be scored, and checkpointed, on weights that are
        // behind; it takes part from the next step.
        guard promote(onlyAt: state.globalStep) else {
            if membership.contains(.joining) {
                // Only peers whose weights missed steps are back: none can score this epoch. It ends unscored,
                // and they take part from the next step.
                log(.error, "epoch \(epoch + 1) ends unscored: the peers back (\(membership.indices.filter { membership[$0] == .joining }.map(String.init).joined(separator: ", "))) have weights that missed steps")
                finishEpoch(epoch)
                return
            }
            // The deadline is kept from when the wait began.
            if case .awaitingAnyone = stage {} else { stage = .awaitingAnyone(deadline: now + timing.joinTimeout, then: .epochEnd(epoch)) }
            return
        }
        if configuration.evaluates(epoch: epoch) {
            publishPhase(nil, .evaluating, "epoch \(epoch + 1): awaiting the peers' test-set outputs")
            let participants = presentRanks
            send(.evaluate(.init(epoch: epoch, globalStep: state.globalStep)), to: participants)
            let n = configuration.peers.count
            stage = .gathering(Gathering(kind: .evaluation(epoch: epoch), awaiting: "the test-set logits of epoch \(epoch + 1)",
                                         pending: Set(participants), since: now, outputs: Array(repeating: [], count: n),
                                         arrival: Array(repeating: now, count: n), logits: Array(repeating: [], count: n)))
        } else {
            send(.evaluate(.init(epoch: epoch, globalStep: state.globalStep, test: false)), to: presentRanks)
            log(.info, "epoch \(epoch + 1)/\(configuration.epochs) done (evaluated every \(configuration.evaluationEvery) epochs)")
            finishEpoch(epoch)
        }
    }

    private mutating func completeEvaluation(_ g: Gathering, epoch: Int) {
        let delivered = g.delivered.sorted()
        scoreEpoch(epoch, delivered: delivered, logits: delivered.map { g.logits[$0] })
        finishEpoch(epoch)
    }

    /// Scores the peers' and the ensemble's test-set logits of `epoch` and records them.
    private mutating func scoreEpoch(_ epoch: Int, delivered: [Int], logits: [[Float]]) {
        let classes = configuration.data.dataSet.classCount
        let scored = evaluateCohort(logits: logits, labels: testLabels, classCount: classes)
        for (i, r) in delivered.enumerated() { state.lastEvaluation[r] = scored.peers[i] }
        state.ensembleTop1 = scored.ensembleTop1
        state.ensembleTop5 = scored.ensembleTop5
        if delivered.count < configuration.peers.count {
            log(.error, "the ensemble of epoch \(epoch + 1) has only peer(s) \(delivered.map(String.init).joined(separator: ", "))")
        }
        let evaluation = lastEvaluation(ensembleTop1: scored.ensembleTop1, ensembleTop5: scored.ensembleTop5)
        actions.append(.recordEpoch(epoch: epoch, globalStep: state.globalStep, evaluation: evaluation, seconds: now - started))
        log(.info, epochReport(epoch: epoch, configuration: configuration, evaluation: evaluation))
    }

    private mutating func finishEpoch(_ epoch: Int) {
        state.evaluatedEpochs = epoch + 1
        saveState()
        if epoch + 1 < configuration.epochs { publishPhase(nil, .training) }
        nextStep()
    }

    private func lastEvaluation(ensembleTop1: Double, ensembleTop5: Double) -> CohortEvaluation {
        CohortEvaluation(peers: state.lastEvaluation.map { $0 ?? EvaluationResult(top1: 0, top5: 0, loss: 0, count: 0) },
                         ensembleTop1: ensembleTop1, ensembleTop5: ensembleTop5)
    }

    private mutating func saveState() {
        state.elapsedSeconds = now - started
        actions.append(.saveState(state))
    }

    private mutating func finishRun() {
        let summary = CohortSummary(configuration: configuration, evaluation: lastEvaluation(ensembleTop1: state.ensembleTop1, ensembleTop5: state.ensembleTop5),
                                    teacherTop1: state.teacherTop1, steps: state.globalStep, seconds: now - started, images: state.images,
                                    transport: transport)
        broadcast(.shutdown(.init(.finished)))
        log(.info, "finished")
        actions.append(.publish(.end(StreamEnd(ok: true, reason: Message.Shutdown.finishedReason, time: now))))
        stage = .done
        actions.append(.finish(.finished(summary)))
    }

    private mutating func fail(_ error: CoordinatorError) {
        log(.error, "\(error)")
        broadcast(.shutdown(.init(.failed("coordinator: \(error)"))))
        actions.append(.publish(.end(StreamEnd(ok: false, reason: "\(error)", time: now))))
        stage = .done
        actions.append(.finish(.failed(error)))
    }

    private mutating func stop(_ request: StopRequest) {
        switch request {
        case .signal(let s):
            fail(.stopped(signal: s))
        case .checkpointAndStop(let signal):
            // Between steps the members checkpoint at once; mid-step, at the next step's start.
            if case .codistilling = stage { stopWithCheckpoints(signal: signal, atCohortStep: false) } else if case .preparing = stage { stopAtStep(request) } else if training { pendingStop = request } else {
                fail(.stopped(signal: { if case .checkpointAndStop(let s) = request { s ?? 0 } else { 0 } }()))
            }
        }
    }

    private mutating func stopAtStep(_ request: StopRequest) {
        guard case .checkpointAndStop(let signal) = request else { return }
        stopWithCheckpoints(signal: signal, atCohortStep: true)
    }

    /// Every present peer checkpoints — at the cohort's step, or (codistilling) each at its own — and the
    /// run stops there.
    private mutating func stopWithCheckpoints(signal: Int32?, atCohortStep: Bool) {
        send(.checkpoint(.init(globalStep: state.globalStep)), to: presentRanks)
        saveState()
        let at = atCohortStep ? " at step \(state.globalStep)" : ""
        log(.notice, "stopped\(at); every present peer checkpoints \(atCohortStep ? "there" : "at its own step")")
        broadcast(.shutdown(.init(.failed("coordinator: stopped\(at)"))))
        actions.append(.publish(.end(StreamEnd(ok: false, reason: "stopped\(at)", time: now))))
        stage = .done
        actions.append(.finish(.stopped(globalStep: state.globalStep, signal: signal)))
    }

    // MARK: Progress on every event

    /// Moves on when what the stage waits for is there.
    private mutating func advance() {
        switch stage {
        case .admitting:
            if !membership.contains(.absent) { beginTraining() }
        case .awaitingAnyone(_, let then):
            guard membership.contains(.joining) else { return }
            switch then {
            case .step: nextStep()
            case .epochEnd(let e): evaluateEpoch(e)
            }
        case .awaitingAbsent(let epoch, _):
            if !membership.contains(.absent) { evaluateEpoch(epoch) }
        case .codistilling(let c):
            advanceCodistilling(c)
        case .gathering(var g):
            // Members that left since they were asked no longer count.
            for r in g.pending where membership[r] != .present { g.pending.remove(r) }
            stage = .gathering(g)
            guard g.pending.isEmpty else { return }
            switch g.kind {
            case .outputs(let step, let b, _): completeStep(g, step, batchSize: b)
            case .evaluation(let epoch): completeEvaluation(g, epoch: epoch)
            }
        case .notStarted, .preparing, .done:
            break
        }
    }

    /// The deadlines of the current stage.
    private mutating func check() {
        switch stage {
        case .admitting(let deadline, let requireAll):
            guard now >= deadline else { break }
            let n = configuration.peers.count
            let missing = membership.indices.filter { membership[$0] == .absent }
            if requireAll || missing.count == n {
                fail(.joinTimeout(missing: missing, seconds: timing.joinTimeout, endpoint: endpoint))
                return
            }
            log(.error, "going on without absent peers", ["absent": "\(missing)"])
            beginTraining()
        case .awaitingAnyone(let deadline, _):
            if now >= deadline { fail(.nobodyPresent(seconds: timing.joinTimeout)); return }
        case .awaitingAbsent(let epoch, let deadline):
            if now >= deadline { evaluateEpoch(epoch) }
        case .codistilling(let c):
            var lost = false
            for r in presentRanks where now - lastHeard[r] > timing.heartbeatTimeout {
                markAbsent(r, "nothing heard for \(Int(timing.heartbeatTimeout)) s (network.heartbeat_timeout)")
                lost = true
            }
            // The others stop sending it their weights.
            if lost { send(.members(.init(endpoints: presentEndpoints)), to: presentRanks) }
            if let since = c.nobodySince, now - since >= timing.joinTimeout { fail(.nobodyPresent(seconds: timing.joinTimeout)); return }
        case .gathering(let g):
            for r in g.pending.sorted() {
                if now - lastHeard[r] > timing.heartbeatTimeout {
                    markAbsent(r, "nothing heard for \(Int(timing.heartbeatTimeout)) s (network.heartbeat_timeout) while awaiting \(g.awaiting)")
                } else if now - g.since > timing.timeout {
                    markAbsent(r, "it did not deliver \(g.awaiting) within \(Int(timing.timeout)) s (network.timeout)")
                }
            }
        case .notStarted, .preparing, .done:
            break
        }
        if !isDone { actions.append(.schedule(.check, at: now + timing.checkInterval)) }
    }

    /// Makes joining peers present (with `onlyAt`, those whose state has trained exactly that many steps);
    /// whether anyone is present.
    private mutating func promote(onlyAt step: Int? = nil) -> Bool {
        for r in membership.indices where membership[r] == .joining && (step == nil || resumeSteps[r] == step) { membership[r] = .present }
        return !presentRanks.isEmpty
    }

    // MARK: Messages

    private mutating func receive(_ message: Message, from connection: ConnectionID, user: String?) {
        switch message {
        case .hello(let hello):
            consider(hello, from: connection, user: user)
        case .heartbeat(let beat):
            guard let rank = beat.rank, configuration.peers.indices.contains(rank), !secure || user == "peer-\(rank)" else {
                log(.warning, "dropped a heartbeat that does not come from the rank it names",
                    ["rank": beat.rank.map(String.init) ?? "none", "user": user ?? "none", "from": describeConnection(connection)],
                    sender: describeConnection(connection))
                return
            }
            // Answered for members only: a peer this coordinator has not admitted (it was marked absent, or this
            // is a restarted coordinator) hears nothing, concludes it lost the coordinator, and rejoins.
            guard membership[rank] != .absent else { return }
            // Only beats that vouch for the member's current connection keep it alive: not those of a process
            // whose rank was taken over, nor of one still joining.
            if sessions[rank] == nil || beat.session == sessions[rank] { lastHeard[rank] = now }
            actions.append(.send(.heartbeat(.init(rank: nil, sequence: beat.sequence)), to: connection))
        default:
            guard let rank = rank(of: connection) else {
                log(.warning, "dropped a message from an unknown sender", ["type": message.type, "from": describeConnection(connection)],
                    sender: describeConnection(connection))
                return
            }
            lastHeard[rank] = now
            switch message {
            case .log(let batch):
                for record in batch.records {
                    // The peer's rank and host as admitted, whatever the record claims.
                    actions.append(.publish(.log(LogRecord(time: record.time, level: record.level, rank: rank, host: hosts[rank], label: record.label,
                                                           message: record.message, metadata: record.metadata))))
                }
                if let status = batch.status, status.rank == rank {
                    statuses[rank] = status
                    actions.append(.publish(.status(status)))
                    if case .codistilling = stage { codistillingProgress() }
                }
                if let phase = batch.phase, phase != .absent, phase != .finished { publishPhase(rank, phase) }
            case .shutdown(let s):
                markAbsent(rank, "it stopped: \(s.reason)")
            default:
                if !gather(message, from: rank) {
                    log(.warning, "dropped an unexpected \(message.type) message", ["rank": "\(rank)", "awaiting": awaiting])
                }
            }
        }
    }

    /// Each peer's step, loss, accuracy and speed: they differ while codistilling.
    private mutating func codistillingProgress() {
        let total = configuration.epochs * stepsPerEpoch
        let peers = presentRanks.compactMap { statuses[$0] }.map {
            String(format: "p%d %d/%d %.3f/%.0f%% %.0f img/s", $0.rank, $0.globalStep, total, $0.loss, 100 * $0.accuracy, $0.imagesPerSecond)
        }
        actions.append(.progress("codistilling  " + peers.joined(separator: "  "), endsEpoch: false))
    }

    private var awaiting: String {
        switch stage {
        case .gathering(let g): g.awaiting
        case .admitting: "peers to join"
        default: "nothing"
        }
    }

    /// Takes `message` when the stage gathers it from `rank`; whether it did.
    private mutating func gather(_ message: Message, from rank: Int) -> Bool {
        if case .codistilling(var c) = stage, case .evaluation(let body, let tensors) = message {
            do {
                guard body.rank == rank else { throw WireError.header("rank \(body.rank) in a message from peer \(rank)") }
                guard (state.evaluatedEpochs..<configuration.epochs).contains(body.epoch) else {
                    throw WireError.header("epoch \(body.epoch) is scored already or not in this run")
                }
                let classes = configuration.data.dataSet.classCount
                c.logits[body.epoch, default: [:]][rank] = try expectTensors(tensors, [("logits", [testLabels.count, classes])])["logits"]!.values
            } catch {
                log(.warning, "dropped an invalid evaluation", ["rank": "\(rank)", "reason": "\(error)"])
                return false
            }
            stage = .codistilling(c)
            return true
        }
        guard case .gathering(var g) = stage, g.pending.contains(rank) else { return false }
        switch (g.kind, message) {
        case (.outputs(let step, _, let expected), .outputs(let body, let tensors)) where body.globalStep == step.globalStep && body.attempt == step.attempt:
            do {
                guard body.rank == rank else { throw WireError.header("rank \(body.rank) in a message from peer \(rank)") }
                let byName = try expectTensors(tensors, expected)
                g.outputs[rank] = expected.map { byName[$0.name]! }
            } catch {
                log(.warning, "dropped invalid outputs", ["rank": "\(rank)", "reason": "\(error)"])
                return false
            }
            g.arrival[rank] = now
        case (.evaluation(let epoch), .evaluation(let body, let tensors)) where body.epoch == epoch:
            do {
                guard body.rank == rank else { throw WireError.header("rank \(body.rank) in a message from peer \(rank)") }
                let classes = configuration.data.dataSet.classCount
                g.logits[rank] = try expectTensors(tensors, [("logits", [testLabels.count, classes])])["logits"]!.values
            } catch {
                log(.warning, "dropped an invalid evaluation", ["rank": "\(rank)", "reason": "\(error)"])
                return false
            }
        default:
            return false
        }
        g.pending.remove(rank)
        g.delivered.append(rank)
        stage = .gathering(g)
        return true
    }

    private var secure: Bool { configuration.security != nil }

    /// Admits `hello`'s sender (again, when it rejoins), or refuses it with the reason.
    private mutating func consider(_ hello: Message.Hello, from connection: ConnectionID, user: String?) {
        let n = configuration.peers.count
        let r = hello.rank
        let sender = describeConnection(connection)
        var reason: String?
        if !(0..<n).contains(r) {
            reason = "rank \(r) is not in this cohort of \(n) peer(s) (ranks 0...\(n - 1))"
        } else if configuration.peers[r].model != hello.model {
            reason = "rank \(r) runs \(configuration.peers[r].model) in this cohort, not \(hello.model)"
        } else if secure && user != "peer-\(r)" {
            reason = "this connection's key is not peer \(r)'s"
        } else if exchangesOverMesh && (hello.dataEndpoint ?? "").isEmpty {
            reason = "this cohort's peers send each other their outputs (network.exchange: mesh), and this peer offers no data endpoint: start it with the coordinator's configuration"
        } else if !exchangesOverMesh && hello.dataEndpoint != nil {
            reason = "this cohort's outputs go through the coordinator (network.exchange: coordinator), and this peer is configured for mesh: start it with the coordinator's configuration"
        }
        if let reason {
            log(.warning, "refused a peer", ["rank": "\(r)", "host": hello.host ?? "?", "reason": reason, "from": sender], sender: sender)
            actions.append(.send(.welcome(.init(accepted: false, reason: reason)), to: connection))
            return
        }
        if members[r] == connection && membership[r] != .absent {
            actions.append(.send(.welcome(.init(accepted: true, session: sessions[r])), to: connection))  // a repeated hello
            return
        }
        if membership[r] != .absent, let old = members[r] {
            // A rank held by a live connection is taken over only by a hello that proves to be that rank (its
            // CURVE key); otherwise once the holder has been silent for heartbeat_timeout. The hello is not
            // answered meanwhile: a legitimately restarted peer keeps saying it.
            let silent = now - lastHeard[r]
            guard secure || silent > timing.heartbeatTimeout else {
                log(.warning, "ignored a hello for rank \(r): a live connection holds it",
                    ["host": HeaderBounds.clipped(hello.host ?? "?"), "holder_heard_seconds_ago": "\(Int(silent))", "from": sender], sender: sender)
                return
            }
            actions.append(.send(.shutdown(.init(.failed("rank \(r) was taken over by a new connection"))), to: old))
        }
        if membership[r] != .absent {
            log(.warning, "peer \(r) joined again from a new connection; the old one is dropped\(training ? " and it rejoins at the next step" : "")",
                ["host": hello.host ?? "?", "steps_done": "\(hello.resumeStep ?? 0)"])
        } else if training {
            log(.notice, "peer \(r) rejoins at the next step", ["host": hello.host ?? "?", "steps_done": "\(hello.resumeStep ?? 0)"])
        }
        members[r] = connection
        membership[r] = .joining
        hosts[r] = hello.host ?? "?"
        dataEndpoints[r] = hello.dataEndpoint
        lastHeard[r] = now
        resumeSteps[r] = hello.resumeStep ?? 0
        sessions[r] = Int(sessionGenerator.next() >> 1) | 1
        actions.append(.send(.welcome(.init(accepted: true, session: sessions[r])), to: connection))
        log(.info, "peer \(r) joined", ["host": hosts[r], "model": hello.model])
        publishPhase(r, training ? .joining : .waiting, training ? "takes part from the next step" : nil)
    }

    /// Answers a sender whose message failed validation: a peer started with another configuration learns
    /// why it is refused.
    private mutating func refuseStranger(_ error: WireError, _ connection: ConnectionID) {
        guard case .configuration(let expected, let found) = error else { return }
        actions.append(.send(.welcome(.init(accepted: false, reason:
            "configuration digest \(HeaderBounds.clipped(found)) differs from this cohort's \(expected): start every process with the same configuration file")),
                             to: connection))
    }

    private func rank(of connection: ConnectionID) -> Int? { members.firstIndex { $0 == connection } }

    /// Takes `rank` out of the cohort until it says hello again; loudly.
    private mutating func markAbsent(_ rank: Int, _ why: String) {
        guard membership[rank] != .absent else { return }
        membership[rank] = .absent
        members[rank] = nil
        sessions[rank] = nil
        let present = membership.indices.filter { membership[$0] != .absent }
        log(.error, "peer \(rank) is absent: \(why); the cohort goes on with peer(s) \(present.map(String.init).joined(separator: ", "))",
            ["rank": "\(rank)"])
        publishPhase(rank, .absent, why)
    }

    private mutating func send(_ message: Message, to ranks: [Int]) {
        for rank in ranks { if let connection = members[rank] { actions.append(.send(message, to: connection)) } }
    }

    private mutating func broadcast(_ message: Message) {
        for connection in members.compactMap({ $0 }) { actions.append(.send(message, to: connection)) }
    }

    /// Tells the stream what `rank` (nil: the coordinator) does from now on.
    private mutating func publishPhase(_ rank: Int?, _ phase: Phase, _ detail: String? = nil) {
        actions.append(.publish(.phase(PhaseChange(rank: rank, host: rank.map { hosts[$0] } ?? host, phase: phase, detail: detail, time: now))))
    }

    private mutating func log(_ level: CoreLog.Level, _ message: String, _ metadata: [String: String] = [:], sender: String? = nil) {
        actions.append(.log(CoreLog(level, message, metadata, sender: sender)))
    }
}
