import Foundation

/// The messages of the cohort protocol (`docs/protocol.md`). Each is a header (JSON) and zero or more
/// raw tensor frames; `Message` is what a receiver has after decoding and validating.
public enum Message: Sendable, Equatable {
    /// Peer -> coordinator: asks to join as `rank` running `model`.
    case hello(Hello)
    /// Coordinator -> peer: admitted (or not, with the reason).
    case welcome(Welcome)
    /// Coordinator -> peers: train step `step` of `epoch`; the teacher's outputs for the batch, if any.
    case step(Step, teacher: [TensorPayload])
    /// Peer -> coordinator: this peer's outputs for a step (embedding, logits).
    case outputs(StepOutputs, tensors: [TensorPayload])
    /// Coordinator -> peer: the other members' outputs for a step, tensors named `rank<r>.<name>`.
    case others(Others, tensors: [TensorPayload])
    /// Coordinator -> peers: evaluate on the test set at the end of `epoch` and checkpoint.
    case evaluate(Evaluate)
    /// Coordinator -> peers: write a checkpoint now (a cohort checkpoint: every member at the same step).
    case checkpoint(Checkpoint)
    /// Peer -> coordinator: this peer's test-set logits (`logits`, [test count, classes]).
    case evaluation(Evaluation, tensors: [TensorPayload])
    /// Peer -> coordinator: log records and the peer's latest status, for the log stream.
    case log(LogBatch)
    /// Either way: I am alive.
    case heartbeat(Heartbeat)
    /// Coordinator -> peers: stop after the current step (or at once).
    case shutdown(Shutdown)
    /// Codistillation: a peer's weights as of `globalStep`, to the other peers over the mesh.
    case weights(Weights, tensors: [TensorPayload])
    /// Mesh mode, coordinator → peers: where every present peer now receives (after one joined again).
    case members(Members)

    public struct Hello: Codable, Sendable, Equatable {
        public let rank: Int
        public let model: String
        /// The peer's host name, for logs and the monitor.
        public let host: String?
        /// Steps the peer's state has trained (a restarted or rejoining peer's position); absent: 0.
        public let resumeStep: Int?
        /// Where the other peers reach this one with their outputs (`network.exchange: mesh`); absent
        /// when the outputs go through the coordinator.
        public let dataEndpoint: String?
        public init(rank: Int, model: String, host: String? = nil, resumeStep: Int? = nil, dataEndpoint: String? = nil) {
            self.rank = rank; self.model = model; self.host = host; self.resumeStep = resumeStep; self.dataEndpoint = dataEndpoint
        }
    }
    public struct Welcome: Codable, Sendable, Equatable {
        public let accepted: Bool
        public let reason: String?
        /// A token naming this admission: the peer's heartbeats carry it, so that they vouch for this
        /// connection only (not for one that replaced it). Absent from older coordinators.
        public let session: Int?
        public init(accepted: Bool, reason: String? = nil, session: Int? = nil) {
            self.accepted = accepted; self.reason = reason; self.session = session
        }
    }
    public struct Step: Codable, Sendable, Equatable {
        public let epoch: Int
        public let step: Int
        public let globalStep: Int
        /// Mesh mode only: which sending of the step this is (the coordinator numbers every step it
        /// sends), so that outputs left over from an earlier sending of the same step are told apart.
        public let attempt: Int?
        /// Mesh mode only: the data endpoint of every peer taking part in the step, by rank (empty for
        /// the others). Each participant sends its outputs to the others there.
        public let endpoints: [String]?
        public init(epoch: Int, step: Int, globalStep: Int, attempt: Int? = nil, endpoints: [String]? = nil) {
            self.epoch = epoch; self.step = step; self.globalStep = globalStep; self.attempt = attempt; self.endpoints = endpoints
        }

        /// The step as the mesh sends it: numbered `attempt`, with the participants' data endpoints.
        public func forMesh(attempt: Int, endpoints: [String]) -> Step {
            Step(epoch: epoch, step: step, globalStep: globalStep, attempt: attempt, endpoints: endpoints)
        }

        /// The data endpoints of the step's participants other than `rank`.
        public func meshTargets(excluding rank: Int) -> [MeshTarget] { MeshTarget.targets(endpoints ?? [], excluding: rank) }
    }
    /// Where one peer sends its outputs in mesh mode.
    public struct MeshTarget: Sendable, Equatable, Hashable {
        public let rank: Int
        public let endpoint: String
        public init(rank: Int, endpoint: String) { self.rank = rank; self.endpoint = endpoint }

        /// The peers of `endpoints` (by rank; empty for those not taking part) other than `rank`.
        public static func targets(_ endpoints: [String], excluding rank: Int) -> [MeshTarget] {
            endpoints.enumerated().compactMap { r, e in r == rank || e.isEmpty ? nil : MeshTarget(rank: r, endpoint: e) }
        }
    }
    public struct StepOutputs: Codable, Sendable, Equatable {
        public let rank: Int
        public let globalStep: Int
        /// Mesh mode only: the step's ``Step/attempt``.
        public let attempt: Int?
        public init(rank: Int, globalStep: Int, attempt: Int? = nil) { self.rank = rank; self.globalStep = globalStep; self.attempt = attempt }
    }
    public struct Others: Codable, Sendable, Equatable {
        /// The receiver's rank.
        public let rank: Int
        public let globalStep: Int
        /// The other ranks present in this step, ascending: the tensors are theirs.
        public let ranks: [Int]
        /// How long the coordinator held the receiver's outputs waiting for slower peers, in seconds: the
        /// receiver subtracts it from its own send-to-receive time to get the exchange's own cost.
        public let waitSeconds: Double
        public init(rank: Int, globalStep: Int, ranks: [Int], waitSeconds: Double) {
            self.rank = rank; self.globalStep = globalStep; self.ranks = ranks; self.waitSeconds = waitSeconds
        }
    }
    /// An epoch's end: the peer checkpoints and, unless `test` is false, sends its test-set logits.
    public struct Evaluate: Codable, Sendable, Equatable {
        public let epoch: Int
        public let globalStep: Int
        /// `false`: an epoch the cohort does not evaluate (`evaluation_every`); absent or `true`: evaluate.
        public let test: Bool?
        public init(epoch: Int, globalStep: Int, test: Bool = true) {
            self.epoch = epoch; self.globalStep = globalStep; self.test = test ? nil : false
        }
        /// Whether the peer evaluates on the test set.
        public var evaluatesTestSet: Bool { test ?? true }
    }
    public struct Checkpoint: Codable, Sendable, Equatable {
        /// Steps trained: the checkpoint's position.
        public let globalStep: Int
        public init(globalStep: Int) { self.globalStep = globalStep }
    }
    public struct Evaluation: Codable, Sendable, Equatable {
        public let rank: Int
        public let epoch: Int
        public init(rank: Int, epoch: Int) { self.rank = rank; self.epoch = epoch }
    }
    public struct LogBatch: Codable, Sendable, Equatable {
        public let records: [LogRecord]
        public let status: PeerStatus?
        /// What the peer is doing from now on (evaluating, checkpointing, training), when it changed.
        public let phase: Phase?
        public init(records: [LogRecord], status: PeerStatus? = nil, phase: Phase? = nil) {
            self.records = records; self.status = status; self.phase = phase
        }
    }
    public struct Heartbeat: Codable, Sendable, Equatable {
        public let rank: Int?
        public let sequence: Int
        /// The session of the peer's current admission (``Welcome/session``); absent while joining.
        public let session: Int?
        public init(rank: Int?, sequence: Int, session: Int? = nil) { self.rank = rank; self.sequence = sequence; self.session = session }
    }
    public struct Weights: Codable, Sendable, Equatable {
        public let rank: Int
        /// The steps the weights have trained.
        public let globalStep: Int
        public init(rank: Int, globalStep: Int) { self.rank = rank; self.globalStep = globalStep }
    }
    public struct Members: Codable, Sendable, Equatable {
        /// Every present peer's data endpoint by rank (empty for the others).
        public let endpoints: [String]
        public init(endpoints: [String]) { self.endpoints = endpoints }
    }
    public struct Shutdown: Codable, Sendable, Equatable {
        /// On the wire: `finished` when the run ended normally, otherwise why it stopped.
        public let reason: String
        public init(reason: String) { self.reason = reason }

        /// Why a run stops, typed: the wire carries ``finishedReason`` or the text of the failure.
        public enum Cause: Sendable, Equatable {
            /// The run ended normally.
            case finished
            case failed(String)
        }

        /// The reason text of a run that ended normally.
        public static let finishedReason = "finished"

        public init(_ cause: Cause) {
            switch cause {
            case .finished: reason = Self.finishedReason
            case .failed(let why): reason = why
            }
        }

        public var cause: Cause { reason == Self.finishedReason ? .finished : .failed(reason) }
    }

    /// The header's `type`.
    public var type: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .step: "step"
        case .outputs: "outputs"
        case .others: "others"
        case .evaluate: "evaluate"
        case .checkpoint: "checkpoint"
        case .evaluation: "evaluation"
        case .log: "log"
        case .heartbeat: "heartbeat"
        case .shutdown: "shutdown"
        case .weights: "weights"
        case .members: "members"
        }
    }
}
