import Foundation
import Logging
import Runtime
import Wire
import ZeroMQ

/// Times the cohort exchange on its own: `peers` synthetic peers (dealer sockets on threads, real tensor
/// sizes, no training) and one router playing the coordinator, passing the messages a training step passes
/// — the router's `step`, each peer's `outputs` (embedding and logits), the router's `others` back to each
/// (every other peer's tensors; in mesh mode the peers send each other their outputs over the data
/// plane's sockets and the router passes headers only) — encoded, validated and decoded by the protocol's
/// own code. By default both sides run in this
/// process over loopback TCP; with ``Role/coordinator(bind:)`` and ``Role/peers(connect:)`` they run in two
/// processes, so that a shaped link (network namespaces and `tc`) can sit between them
/// (`docs/benchmarks/exchange-links.sh`).
public struct ExchangeBenchmark: Sendable {
    /// Which side(s) this process runs.
    public enum Role: Sendable, Equatable {
        case both
        /// The coordinator's side alone, bound at the endpoint; it serves the rounds and returns.
        case coordinator(bind: String)
        /// Peers alone (``ExchangeBenchmark/ranks``, or all), connecting to a coordinator's side; they time the rounds.
        case peers(connect: String)
    }

    public var peers: Int
    public var batch: Int
    public var embeddingDimension: Int
    public var classes: Int
    public var rounds: Int
    public var role: Role
    /// How the outputs travel: through the coordinator, or from peer to peer (`network.exchange`).
    public var mode: CohortConfiguration.NetworkSettings.ExchangeMode
    /// The ranks this process runs (with ``Role/peers(connect:)``: one per process puts each behind its own
    /// link); nil: all of them.
    public var ranks: [Int]?
    /// Mesh mode: where this process's peers bind their data sockets.
    public var meshBind: String

    public init(peers: Int = 4, batch: Int = 128, embeddingDimension: Int = 128, classes: Int = 10, rounds: Int = 200, role: Role = .both,
                mode: CohortConfiguration.NetworkSettings.ExchangeMode = .coordinator, ranks: [Int]? = nil, meshBind: String = "tcp://127.0.0.1:*") {
        self.peers = peers; self.batch = batch; self.embeddingDimension = embeddingDimension
        self.classes = classes; self.rounds = rounds; self.role = role; self.mode = mode; self.ranks = ranks; self.meshBind = meshBind
    }

    /// The measurements: per round, from a peer sending its outputs to it holding the others'.
    public struct Result: Codable, Sendable {
        public let benchmark: String
        public let mode: String
        public let peers: Int
        public let batch: Int
        public let outputs_bytes: Int
        public let others_bytes: Int
        public let step_bytes: Int
        public let rounds: Int
        public let median_ms: Double
        public let mean_ms: Double
        public let p90_ms: Double
        /// Bytes through the coordinator's link per step, both directions: N `step` messages out, N
        /// `outputs` in, N `others` out (in the coordinator mode N(N-1) copies of a peer's tensors).
        public let coordinator_bytes_per_step: Int
        /// Bytes through one peer's link per step in its busier direction (mesh mode: N-1 copies of its
        /// outputs out, as many of the others' in).
        public let peer_link_bytes_per_step: Int
        /// The model to compare with: the busiest link's busier direction at 1 Gb/s, in ms.
        public let model_ms_at_1gbps: Double
        /// This process's round times (only when it runs some of the ranks), for pooling across processes.
        public let round_ms: [Double]?
    }

    public func run() throws -> Result {
        let context = try ZMQContext()
        let codec = WireCodec(digest: String(repeating: "0", count: 64))
        let logger = Logger(label: "cohort.bench.exchange") { _ in SwiftLogNoOpLogHandler() }
        let mesh = mode == .mesh
        var router: ProtocolSocket?
        var endpoint = ""
        switch role {
        case .both, .coordinator:
            let routerSocket = try ZMQSocket(context, type: .router)
            // Alone, the coordinator's side must deliver its last round before the process ends.
            try routerSocket.setLinger(milliseconds: role == .both ? 0 : 60_000)
            try routerSocket.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
            if case .coordinator(let bind) = role { try routerSocket.bind(bind) } else { try routerSocket.bind("tcp://127.0.0.1:*") }
            endpoint = routerSocket.lastEndpoint
            router = ProtocolSocket(routerSocket, codec: codec, logger: logger, routed: true)
        case .peers(let connect):
            endpoint = connect
        }
        let (b, d, c, n, rounds) = (batch, embeddingDimension, classes, peers, rounds)
        var generator = SystemRandomNumberGenerator()
        let embedding = (0..<(b * d)).map { _ in Float.random(in: -1...1, using: &generator) }
        let logits = (0..<(b * c)).map { _ in Float.random(in: -5...5, using: &generator) }
        let layout = OutputLayout(auxiliaryBranches: 0, embeddings: true, embeddingDimension: d, classCount: c)
        let mine = [TensorPayload(name: OutputLayout.Tensor.embedding.name, shape: [b, d], values: embedding),
                    TensorPayload(name: OutputLayout.Tensor.logits.name, shape: [b, c], values: logits)]
        let runsPeers = { if case .coordinator = role { false } else { true } }()
        let ranks = runsPeers ? (self.ranks ?? Array(0..<n)) : []
        let timings = Timings(ranks: ranks.count, rounds: rounds)
        let failures = Failures()
        let group = DispatchGroup()
        for (slot, rank) in ranks.enumerated() {
            let thread = Thread { [endpoint, meshBind] in
                defer { group.leave() }
                do {
                    let socket = try ZMQSocket(context, type: .dealer)
                    try socket.setLinger(milliseconds: 0)
                    try socket.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
                    try socket.connect(endpoint)
                    let link = mesh ? try MeshLink(context: context, bind: meshBind, host: "127.0.0.1", keys: nil, codec: codec, logger: logger) : nil
                    let sockets = PeerSockets(control: ProtocolSocket(socket, codec: codec, logger: logger, routed: false), mesh: link)
                    try sockets.send(.hello(.init(rank: rank, model: "synthetic", dataEndpoint: link?.endpoint)), to: nil)
                    var fromPeers: [Int: Int] = [:]  // round -> the others' outputs held (mesh mode)
                    var step: Message.Step?
                    var others: Int?
                    func take(_ input: TransportInput?) throws {
                        switch input {
                        case .message(.step(let s, _), _, _)?: step = s
                        case .message(.others(let body, let tensors), _, _)?:
                            if !mesh { _ = try expectTensors(tensors, layout.expectedOthers(ranks: body.ranks, batchSize: b)) }
                            others = body.globalStep
                        case .peerData(.outputs(let body, let tensors), _)?:
                            _ = try expectTensors(tensors, layout.expected(batchSize: b))
                            fromPeers[body.globalStep, default: 0] += 1
                        case nil: break
                        default: throw ExchangeBenchmarkError(reason: "peer \(rank): an unexpected message")
                        }
                    }
                    for round in 0..<rounds {
                        let deadline = wallClock() + 120
                        while step?.globalStep != round {
                            guard wallClock() < deadline else { throw ExchangeBenchmarkError(reason: "peer \(rank): no step \(round)") }
                            try take(try sockets.receive(until: deadline))
                        }
                        let sent = Date()
                        if mesh {
                            let header = Message.StepOutputs(rank: rank, globalStep: round, attempt: step!.attempt)
                            try sockets.publish(.outputs(header, tensors: mine), to: step!.meshTargets(excluding: rank))
                            try sockets.send(.outputs(header, tensors: []), to: nil)
                        } else {
                            try sockets.send(.outputs(.init(rank: rank, globalStep: round), tensors: mine), to: nil)
                        }
                        while others != round || (mesh && fromPeers[round, default: 0] < n - 1) {
                            guard wallClock() < deadline else { throw ExchangeBenchmarkError(reason: "peer \(rank): no others for round \(round)") }
                            try take(try sockets.receive(until: deadline))
                        }
                        fromPeers[round] = nil
                        timings.record(slot, round, Date().timeIntervalSince(sent) * 1000)
                    }
                } catch { failures.add("\(error)") }
            }
            group.enter()
            thread.start()
        }
        var identities: [Int: [UInt8]] = [:]
        var dataEndpoints = Array(repeating: "", count: n)
        if let router {
            while identities.count < n {
                guard case .message(.hello(let hello), let from?, _)? = try router.receive(until: Date() + 120),
                      (0..<n).contains(hello.rank) else { throw ExchangeBenchmarkError(reason: "the peers did not all say hello") }
                identities[hello.rank] = from
                dataEndpoints[hello.rank] = hello.dataEndpoint ?? ""
            }
        }
        for round in 0..<rounds {
            guard let router else { break }
            let plain = Message.Step(epoch: 0, step: round, globalStep: round)
            let step = mesh ? plain.forMesh(attempt: round, endpoints: dataEndpoints) : plain
            for rank in 0..<n { try router.send(.step(step, teacher: []), to: identities[rank]!) }
            var outputs: [Int: [TensorPayload]] = [:]
            while outputs.count < n {
                guard case .message(.outputs(let body, let tensors), _, _)? = try router.receive(until: Date() + 120),
                      body.globalStep == round else {
                    throw ExchangeBenchmarkError(reason: "outputs missing in round \(round)")
                }
                _ = try expectTensors(tensors, mesh ? [] : layout.expected(batchSize: b))
                outputs[body.rank] = tensors
            }
            for rank in 0..<n {
                let ranks = (0..<n).filter { $0 != rank }
                let others = mesh ? [] : ranks.flatMap { r in layout.forOthers(rank: r, outputs[r]!) }
                try router.send(.others(.init(rank: rank, globalStep: round, ranks: ranks, waitSeconds: 0), tensors: others), to: identities[rank]!)
            }
        }
        group.wait()
        if let failure = failures.first { throw ExchangeBenchmarkError(reason: failure) }

        // The bytes of each message as the protocol encodes it, and the links' loads.
        func size(_ message: Message) -> Int { codec.encode(message).reduce(0) { $0 + $1.count } }
        let outputsBytes = size(.outputs(.init(rank: 0, globalStep: 0, attempt: mesh ? 0 : nil), tensors: mine))
        let otherRanks = Array(1..<max(n, 2))
        let othersBytes = size(.others(.init(rank: 0, globalStep: 0, ranks: otherRanks, waitSeconds: 0),
                                       tensors: mesh ? [] : otherRanks.flatMap { layout.forOthers(rank: $0, mine) }))
        let plain = Message.Step(epoch: 0, step: rounds - 1, globalStep: rounds - 1)
        let endpointsForSize = (0..<n).map { "tcp://10.232.0.\(10 + $0):65535" }
        let stepBytes = size(.step(mesh ? plain.forMesh(attempt: rounds - 1, endpoints: endpointsForSize) : plain, teacher: []))
        let headerBytes = size(.outputs(.init(rank: 0, globalStep: 0, attempt: 0), tensors: []))
        let coordinatorIn = n * (mesh ? headerBytes : outputsBytes)
        let coordinatorOut = n * (stepBytes + othersBytes)
        // A peer's link: its outputs out (once to the coordinator, or to each other peer) and the others' in.
        let peerOut = mesh ? (n - 1) * outputsBytes + headerBytes : outputsBytes
        let peerIn = stepBytes + othersBytes + (mesh ? (n - 1) * outputsBytes : 0)
        let busiest = max(coordinatorIn, coordinatorOut, peerOut, peerIn)
        let round3 = { (x: Double) in (x * 1000).rounded() / 1000 }
        let modelMs = round3(Double(busiest) * 8 / 1e9 * 1000)
        let common = (mode: mode.rawValue, peers: n, batch: b, outputs: outputsBytes, others: othersBytes, step: stepBytes,
                      coordinator: coordinatorIn + coordinatorOut, peer: max(peerOut, peerIn))
        guard runsPeers else {
            return Result(benchmark: "exchange-coordinator", mode: common.mode, peers: n, batch: b, outputs_bytes: common.outputs,
                          others_bytes: common.others, step_bytes: common.step, rounds: rounds, median_ms: 0, mean_ms: 0, p90_ms: 0,
                          coordinator_bytes_per_step: common.coordinator, peer_link_bytes_per_step: common.peer, model_ms_at_1gbps: modelMs,
                          round_ms: nil)
        }
        // The first rounds connect and warm up; skip a tenth of them.
        let kept = timings.values(skippingFirst: rounds / 10)
        let values = kept.sorted()
        return Result(benchmark: "exchange", mode: common.mode, peers: n, batch: b, outputs_bytes: common.outputs, others_bytes: common.others,
                      step_bytes: common.step, rounds: rounds, median_ms: round3(values[values.count / 2]),
                      mean_ms: round3(values.reduce(0, +) / Double(values.count)), p90_ms: round3(values[values.count * 9 / 10]),
                      coordinator_bytes_per_step: common.coordinator, peer_link_bytes_per_step: common.peer, model_ms_at_1gbps: modelMs,
                      round_ms: self.ranks == nil ? nil : kept.map(round3))
    }

    /// Round times written by the peer threads (each its own slots) and read after they finish.
    private final class Timings: @unchecked Sendable {
        private var slots: [[Double]]
        private let lock = NSLock()
        init(ranks: Int, rounds: Int) { slots = Array(repeating: Array(repeating: 0, count: rounds), count: ranks) }
        func record(_ slot: Int, _ round: Int, _ value: Double) { lock.withLock { slots[slot][round] = value } }
        func values(skippingFirst skip: Int) -> [Double] { lock.withLock { slots.flatMap { $0.dropFirst(skip) } } }
    }

    private final class Failures: @unchecked Sendable {
        private var messages: [String] = []
        private let lock = NSLock()
        func add(_ message: String) { lock.withLock { messages.append(message) } }
        var first: String? { lock.withLock { messages.first } }
    }
}

/// The exchange benchmark could not complete a round.
public struct ExchangeBenchmarkError: Error, CustomStringConvertible {
    public let reason: String
    public var description: String { "exchange benchmark: \(reason)" }
}
