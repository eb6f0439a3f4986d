import Foundation
import Data
import Training
import Wire
@testable import Runtime

/// A cohort configuration for driving the cores: three resnet8 peers, 16 training images in batches of
/// 4 (four steps an epoch), two epochs, 4 test images, the default network deadlines (heartbeats every
/// 1 s, 10 s of silence, 120 s to deliver, 300 s to join).
func protocolConfiguration(_ extra: String = "", peers: Int = 3) throws -> CohortConfiguration {
    try CohortConfiguration.parse("""
        data: {dataset: fashion-mnist, train_limit: 16, test_limit: 4}
        seed: 1
        epochs: 2
        batch_size: 4
        peers: [\(Array(repeating: "{model: resnet8}", count: peers).joined(separator: ", "))]
        mcl: {embedding_dim: 8}
        output: /nonexistent/protocol-tests
        \(extra)
        """)
}

/// The batches of ``protocolConfiguration(_:peers:)``.
let protocolSampler = ShuffledSampler(count: 16, batchSize: 4, seed: 1)

/// Four test labels, 0 to 3, for scoring.
let protocolTestLabels = [0, 1, 2, 3]

/// Drives a ``CoordinatorCore`` with a fake clock and keeps what it did: no sockets, no files.
struct CoordinatorHarness {
    var core: CoordinatorCore
    var now = 1_000.0
    var actions: [CoordinatorCore.Action] = []

    init(_ configuration: CohortConfiguration, savedStates: [CoordinatorState] = [], teacherTop1: Double? = nil) {
        core = CoordinatorCore(configuration: configuration, stepsPerEpoch: 4, trainCount: 16, testLabels: protocolTestLabels,
                               timing: ProtocolTiming(configuration.network), savedStates: savedStates, teacherTop1: teacherTop1,
                               endpoint: "tcp://test:1", host: "test")
    }

    /// The connection of peer `rank`'s first process (`incarnation` counts restarts).
    static func connection(_ rank: Int, incarnation: Int = 0) -> ConnectionID { [UInt8(rank), UInt8(incarnation)] }

    /// Mesh mode: the data endpoint of peer `rank`'s process.
    static func dataEndpoint(_ rank: Int, incarnation: Int = 0) -> String { "tcp://host\(rank):\(6000 + incarnation)" }

    /// Handles `event` at the current time (after advancing the clock by `after` seconds); returns its actions.
    @discardableResult
    mutating func handle(_ event: CoordinatorCore.Event, after: Double = 0) -> [CoordinatorCore.Action] {
        now += after
        let result = core.handle(event, now: now)
        actions += result
        return result
    }

    @discardableResult
    mutating func hello(_ rank: Int, incarnation: Int = 0, model: String = "resnet8", resumeStep: Int = 0, user: String? = nil,
                        after: Double = 0) -> [CoordinatorCore.Action] {
        let data = core.configuration.network.exchange == .mesh ? Self.dataEndpoint(rank, incarnation: incarnation) : nil
        return handle(.received(.hello(.init(rank: rank, model: model, host: "host\(rank)", resumeStep: resumeStep, dataEndpoint: data)),
                         from: Self.connection(rank, incarnation: incarnation), user: user), after: after)
    }

    /// Starts the core and admits `ranks`; returns the step it then prepares.
    @discardableResult
    mutating func admit(_ ranks: [Int], resumeSteps: [Int: Int] = [:]) -> Message.Step? {
        handle(.start)
        var prepared: Message.Step?
        for r in ranks { for case .prepareStep(let s) in hello(r, resumeStep: resumeSteps[r] ?? 0) { prepared = s } }
        return prepared
    }

    /// The outputs peer `rank` sends for step `globalStep` (zeros; batch 4), from `connection`.
    @discardableResult
    mutating func outputs(_ rank: Int, step globalStep: Int, shape: Int = 4, incarnation: Int = 0, after: Double = 0) -> [CoordinatorCore.Action] {
        let tensors = core.configuration.outputLayout.expected(batchSize: shape).map { TensorPayload(name: $0.name, shape: $0.shape, values: Array(repeating: Float(rank), count: $0.shape.reduce(1, *))) }
        return handle(.received(.outputs(.init(rank: rank, globalStep: globalStep), tensors: tensors),
                                from: Self.connection(rank, incarnation: incarnation), user: nil), after: after)
    }

    /// Answers a `prepareStep` (batch 4, no teacher).
    @discardableResult
    mutating func prepared(_ step: Message.Step) -> [CoordinatorCore.Action] {
        handle(.stepPrepared(step, batchSize: 4, teacher: []))
    }

    /// Runs step `globalStep` with every rank of `ranks` delivering; returns the actions of the last delivery.
    @discardableResult
    mutating func runStep(_ globalStep: Int, _ ranks: [Int]) -> [CoordinatorCore.Action] {
        prepared(Message.Step(epoch: globalStep / 4, step: globalStep % 4, globalStep: globalStep))
        var last: [CoordinatorCore.Action] = []
        for r in ranks { last = outputs(r, step: globalStep) }
        return last
    }

    /// Peer `rank`'s test logits for epoch `epoch`: right on the first `correct` of the four labels.
    @discardableResult
    mutating func evaluation(_ rank: Int, epoch: Int, correct: Int) -> [CoordinatorCore.Action] {
        var logits = [Float](repeating: 0, count: 4 * 10)
        for i in 0..<4 { logits[i * 10 + (i < correct ? protocolTestLabels[i] : 9)] = 5 }
        return handle(.received(.evaluation(.init(rank: rank, epoch: epoch), tensors: [TensorPayload(name: "logits", shape: [4, 10], values: logits)]),
                                from: Self.connection(rank), user: nil))
    }

    /// Fires the check timer `seconds` from now.
    @discardableResult
    mutating func tick(after seconds: Double) -> [CoordinatorCore.Action] { handle(.timer(.check), after: seconds) }

    /// Keeps `ranks` alive: a heartbeat from each with its current session.
    mutating func beat(_ ranks: [Int]) {
        for r in ranks { handle(.received(.heartbeat(.init(rank: r, sequence: 0, session: session(r))), from: Self.connection(r), user: nil)) }
    }

    /// The session the last accepted welcome to `rank`'s first connection carried.
    func session(_ rank: Int, incarnation: Int = 0) -> Int? {
        sent(to: rank, incarnation: incarnation).compactMap { if case .welcome(let w) = $0, w.accepted { w.session } else { nil } }.last
    }

    /// Every message sent to `rank`'s connection, in order.
    func sent(to rank: Int, incarnation: Int = 0) -> [Message] {
        actions.compactMap { if case .send(let m, let c) = $0, c == Self.connection(rank, incarnation: incarnation) { m } else { nil } }
    }

    var logs: [CoreLog] { actions.compactMap { if case .log(let l) = $0 { l } else { nil } } }
    var outcome: CoordinatorCore.Outcome? { actions.compactMap { if case .finish(let o) = $0 { o } else { nil } }.last }
    var savedStates: [CoordinatorState] { actions.compactMap { if case .saveState(let s) = $0 { s } else { nil } } }
    var preparedSteps: [Int] { actions.compactMap { if case .prepareStep(let s) = $0 { s.globalStep } else { nil } } }
    var phases: [(Int?, Phase)] { actions.compactMap { if case .publish(.phase(let p)) = $0 { (p.rank, p.phase) } else { nil } } }

    func logged(_ fragment: String) -> Bool { logs.contains { $0.message.contains(fragment) } }
}

/// Drives a ``PeerCore`` with a fake clock, keeping what it did.
struct PeerHarness {
    var core: PeerCore
    var now = 1_000.0
    var actions: [PeerCore.Action] = []

    init(_ configuration: CohortConfiguration, rank: Int = 0, done: Int = 0, teacherFeatureCount: Int? = nil) {
        core = PeerCore(configuration: configuration, rank: rank, sampler: protocolSampler, teacherFeatureCount: teacherFeatureCount,
                        timing: ProtocolTiming(configuration.network), done: done, host: "host", endpoint: "tcp://test:1",
                        dataEndpoint: CoordinatorHarness.dataEndpoint(rank))
    }

    @discardableResult
    mutating func handle(_ event: PeerCore.Event, after: Double = 0) -> [PeerCore.Action] {
        now += after
        let result = core.handle(event, now: now)
        actions += result
        return result
    }

    /// Starts and is welcomed with `session`.
    mutating func join(session: Int = 7) {
        handle(.start)
        handle(.received(.welcome(.init(accepted: true, session: session))))
    }

    static func step(_ g: Int) -> Message.Step { Message.Step(epoch: g / 4, step: g % 4, globalStep: g) }

    /// The others' outputs for step `g` from `ranks`, as the coordinator sends them to this peer.
    func others(_ g: Int, ranks: [Int], batch: Int = 4) -> Message {
        let layout = core.configuration.outputLayout
        let tensors = ranks.flatMap { r in
            layout.forOthers(rank: r, layout.expected(batchSize: batch).map { TensorPayload(name: $0.name, shape: $0.shape, values: Array(repeating: 0.5, count: $0.shape.reduce(1, *))) })
        }
        return .others(.init(rank: core.rank, globalStep: g, ranks: ranks, waitSeconds: 0.25), tensors: tensors)
    }

    /// Runs step `g` through: the step, the forward pass, the others, the rest.
    mutating func runStep(_ g: Int, others: [Int] = [1, 2]) {
        handle(.received(.step(Self.step(g), teacher: [])))
        handle(.done(.forwarded(Self.step(g), outputs: [])))
        handle(.received(self.others(g, ranks: others)))
        handle(.done(.finished(Self.step(g), status: status(g + 1))))
    }

    func status(_ done: Int) -> PeerStatus {
        PeerStatus(rank: core.rank, host: "host", model: "resnet8", epoch: 0, epochs: 2, step: 0, stepsPerEpoch: 4, globalStep: done, loss: 1,
                   accuracy: 0.5, testAccuracy: nil, imagesPerSecond: 1, stepSeconds: 1, exchangeSeconds: 0, time: now, embeddingCosine: nil)
    }

    /// Mesh mode: step `g` as the coordinator sends it, sending `attempt`, with `ranks` taking part.
    static func meshStep(_ g: Int, attempt: Int, ranks: [Int] = [0, 1, 2]) -> Message.Step {
        step(g).forMesh(attempt: attempt, endpoints: (0..<3).map { ranks.contains($0) ? CoordinatorHarness.dataEndpoint($0) : "" })
    }

    /// Mesh mode: peer `rank`'s outputs for step `g` (sending `attempt`) as they come over the mesh.
    func meshOutputs(from rank: Int, _ g: Int, attempt: Int, batch: Int = 4, value: Float = 0.5, user: String? = nil) -> PeerCore.Event {
        let tensors = core.configuration.outputLayout.expected(batchSize: batch).map {
            TensorPayload(name: $0.name, shape: $0.shape, values: Array(repeating: value, count: $0.shape.reduce(1, *)))
        }
        return .peerData(.outputs(.init(rank: rank, globalStep: g, attempt: attempt), tensors: tensors), user: user)
    }

    var published: [(Message, [Message.MeshTarget])] { actions.compactMap { if case .publish(let m, let t) = $0 { (m, t) } else { nil } } }
    var sent: [Message] { actions.compactMap { if case .send(let m) = $0 { m } else { nil } } }
    var work: [PeerWork] { actions.compactMap { if case .perform(let w) = $0 { w } else { nil } } }
    var logs: [CoreLog] { actions.compactMap { if case .log(let l) = $0 { l } else { nil } } }
    var outcome: PeerCore.Outcome? { actions.compactMap { if case .finish(let o) = $0 { o } else { nil } }.last }
    var reconnects: Int { actions.filter { if case .reconnect = $0 { true } else { false } }.count }
    var hellos: Int { sent.filter { if case .hello = $0 { true } else { false } }.count }

    func logged(_ fragment: String) -> Bool { logs.contains { $0.message.contains(fragment) } }
}
