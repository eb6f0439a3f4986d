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
    case others(StepOutputs, tensors: [TensorPayload])
    /// Either way: I am alive.
    case heartbeat(Heartbeat)
    /// Coordinator -> peers: stop after the current step (or at once).
    case shutdown(Shutdown)

    public struct Hello: Codable, Sendable, Equatable {
        public let rank: Int
        public let model: String
        public init(rank: Int, model: String) { self.rank = rank; self.model = model }
    }
    public struct Welcome: Codable, Sendable, Equatable {
        public let accepted: Bool
        public let reason: String?
        public init(accepted: Bool, reason: String? = nil) { self.accepted = accepted; self.reason = reason }
    }
    public struct Step: Codable, Sendable, Equatable {
        public let epoch: Int
        public let step: Int
        public let globalStep: Int
        public init(epoch: Int, step: Int, globalStep: Int) { self.epoch = epoch; self.step = step; self.globalStep = globalStep }
    }
    public struct StepOutputs: Codable, Sendable, Equatable {
        public let rank: Int
        public let globalStep: Int
        public init(rank: Int, globalStep: Int) { self.rank = rank; self.globalStep = globalStep }
    }
    public struct Heartbeat: Codable, Sendable, Equatable {
        public let rank: Int?
        public let sequence: Int
        public init(rank: Int?, sequence: Int) { self.rank = rank; self.sequence = sequence }
    }
    public struct Shutdown: Codable, Sendable, Equatable {
        public let reason: String
        public init(reason: String) { self.reason = reason }
    }

    /// The header's `type`.
    public var type: String {
        switch self {
        case .hello: "hello"
        case .welcome: "welcome"
        case .step: "step"
        case .outputs: "outputs"
        case .others: "others"
        case .heartbeat: "heartbeat"
        case .shutdown: "shutdown"
        }
    }
}
