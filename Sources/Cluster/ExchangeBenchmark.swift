import Foundation
import Logging
import Runtime
import Wire
import ZeroMQ

/// Times the cohort exchange on its own: `peers` synthetic peers (dealer sockets on threads, real tensor
/// sizes, no training) and one router playing the coordinator, passing the messages a training step passes
/// — each peer's `outputs` (embedding and logits), the router's `others` back to each (every other peer's
/// tensors) — encoded, validated and decoded by the protocol's own code. By default both sides run in this
/// process over loopback TCP; with ``Role/coordinator(bind:)`` and ``Role/peers(connect:)`` they run in two
/// processes, so that a shaped link (network namespaces and `tc`) can sit between them
/// (`docs/benchmarks/exchange-links.sh`).
public struct ExchangeBenchmark: Sendable {
    /// Which side(s) this process runs.
    public enum Role: Sendable, Equatable {
        case both
        /// The coordinator's side alone, bound at the endpoint; it serves the rounds and returns.
        case coordinator(bind: String)
        /// The peers alone, connecting to a coordinator's side; they time the rounds.
        case peers(connect: String)
    }

    public var peers: Int
    public var batch: Int
    public var embeddingDimension: Int
    public var classes: Int
    public var rounds: Int
    public var role: Role

    public init(peers: Int = 4, batch: Int = 128, embeddingDimension: Int = 128, classes: Int = 10, rounds: Int = 200, role: Role = .both) {
        self.peers = peers; self.batch = batch; self.embeddingDimension = embeddingDimension
        self.classes = classes; self.rounds = rounds; self.role = role
    }

    /// The measurements: per round, from a peer sending its outputs to it holding the others'.
    public struct Result: Codable, Sendable {
        public let benchmark: String
        public let peers: Int
        public let batch: Int
        public let outputs_bytes: Int
        public let others_bytes: Int
        public let rounds: Int
        public let median_ms: Double
        public let mean_ms: Double
        public let p90_ms: Double
        /// Bytes through the coordinator's link per step (N outputs in, N others out: N(N-1) copies of a
        /// peer's tensors out) and the seconds they take at 1 Gb/s, the model to compare with.
        public let coordinator_bytes_per_step: Int
        public let model_ms_at_1gbps: Double
    }

    public func run() throws -> Result {
        let context = try ZMQContext()
        let codec = WireCodec(digest: String(repeating: "0", count: 64))
        let logger = Logger(label: "cohort.bench.exchange") { _ in SwiftLogNoOpLogHandler() }
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
        let timings = Timings(count: n * rounds)
        let failures = Failures()
        let group = DispatchGroup()
        let endpointForPeers = endpoint
        let runsPeers = role != .both ? { if case .peers = role { true } else { false } }() : true
        for rank in 0..<n where runsPeers {
            let thread = Thread {
                defer { group.leave() }
                do {
                    let socket = try ZMQSocket(context, type: .dealer)
                    try socket.setLinger(milliseconds: 0)
                    try socket.setRoutingID([UInt8(rank)])
                    try socket.connect(endpointForPeers)
                    let dealer = ProtocolSocket(socket, codec: codec, logger: logger, routed: false)
                    for round in 0..<rounds {
                        let sent = Date()
                        try dealer.send(.outputs(.init(rank: rank, globalStep: round), tensors: mine))
                        guard case .message(.others(let body, let tensors), _, _)? = try dealer.receive(until: Date() + 120),
                              body.globalStep == round, tensors.count == 2 * (n - 1) else {
                            throw ExchangeBenchmarkError(reason: "no others for round \(round)")
                        }
                        timings.record(rank * rounds + round, Date().timeIntervalSince(sent) * 1000)
                    }
                } catch { failures.add("\(error)") }
            }
            group.enter()
            thread.start()
        }
        var othersBytes = 0
        for round in 0..<rounds {
            guard let router else { break }
            var outputs: [Int: [TensorPayload]] = [:]
            var identities: [Int: [UInt8]] = [:]
            while outputs.count < n {
                guard case .message(.outputs(let body, let tensors), let from, _)? = try router.receive(until: Date() + 120),
                      body.globalStep == round, let from else {
                    throw ExchangeBenchmarkError(reason: "outputs missing in round \(round)")
                }
                _ = try expectTensors(tensors, layout.expected(batchSize: b))
                outputs[body.rank] = tensors
                identities[body.rank] = from
            }
            for rank in 0..<n {
                let ranks = (0..<n).filter { $0 != rank }
                let others = ranks.flatMap { r in layout.forOthers(rank: r, outputs[r]!) }
                if round == 0 && rank == 0 { othersBytes = codec.encode(.others(.init(rank: rank, globalStep: round, ranks: ranks, waitSeconds: 0), tensors: others)).reduce(0) { $0 + $1.count } }
                try router.send(.others(.init(rank: rank, globalStep: round, ranks: ranks, waitSeconds: 0), tensors: others),
                                to: identities[rank]!)
            }
        }
        group.wait()
        if let failure = failures.first { throw ExchangeBenchmarkError(reason: failure) }
        let outputsBytes = codec.encode(.outputs(.init(rank: 0, globalStep: 0), tensors: mine)).reduce(0) { $0 + $1.count }
        if othersBytes == 0 {
            let ranks = Array(1..<n)
            othersBytes = codec.encode(.others(.init(rank: 0, globalStep: 0, ranks: ranks, waitSeconds: 0),
                                               tensors: ranks.flatMap { layout.forOthers(rank: $0, mine) })).reduce(0) { $0 + $1.count }
        }
        let coordinatorBytes = n * (outputsBytes + othersBytes)
        // Full duplex: the larger direction (the others going out) sets the time.
        let modelMs = Double(n * max(outputsBytes, othersBytes)) * 8 / 1e9 * 1000
        guard runsPeers else {
            return Result(benchmark: "exchange-coordinator", peers: n, batch: b, outputs_bytes: outputsBytes, others_bytes: othersBytes,
                          rounds: rounds, median_ms: 0, mean_ms: 0, p90_ms: 0, coordinator_bytes_per_step: coordinatorBytes,
                          model_ms_at_1gbps: (modelMs * 1000).rounded() / 1000)
        }
        // The first rounds connect and warm up; skip a tenth of them.
        let values = timings.values(skippingFirst: rounds / 10, rounds: rounds, peers: n).sorted()
        let round2 = { (x: Double) in (x * 1000).rounded() / 1000 }
        return Result(benchmark: "exchange", peers: n, batch: b, outputs_bytes: outputsBytes, others_bytes: othersBytes,
                      rounds: rounds, median_ms: round2(values[values.count / 2]),
                      mean_ms: round2(values.reduce(0, +) / Double(values.count)),
                      p90_ms: round2(values[values.count * 9 / 10]), coordinator_bytes_per_step: coordinatorBytes,
                      model_ms_at_1gbps: round2(modelMs))
    }

    /// Round-trip times written by the peer threads (each its own slots) and read after they finish.
    private final class Timings: @unchecked Sendable {
        private var slots: [Double]
        private let lock = NSLock()
        init(count: Int) { slots = Array(repeating: 0, count: count) }
        func record(_ index: Int, _ value: Double) { lock.withLock { slots[index] = value } }
        func values(skippingFirst skip: Int, rounds: Int, peers: Int) -> [Double] {
            lock.withLock { (0..<peers).flatMap { p in slots[(p * rounds + skip)..<((p + 1) * rounds)] } }
        }
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
