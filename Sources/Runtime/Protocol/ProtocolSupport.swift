import Foundation
import Wire

/// Names one connection to the coordinator: a ZeroMQ routing id, or an in-memory peer's handle. The
/// coordinator's core tells members apart by it; it carries no meaning beyond equality.
public typealias ConnectionID = [UInt8]

/// The deadlines the protocol's cores keep (`network` in the configuration).
public struct ProtocolTiming: Sendable, Equatable {
    /// Seconds between a peer's heartbeats.
    public var heartbeatInterval: Double
    /// Silence after which the coordinator counts a peer absent and a peer counts the coordinator lost.
    public var heartbeatTimeout: Double
    /// Seconds a gathered message may take to arrive once asked for.
    public var timeout: Double
    /// Seconds to wait for peers to join (and for a coordinator to answer).
    public var joinTimeout: Double
    /// How often a core re-checks its deadlines.
    public var checkInterval: Double = 0.25

    public init(heartbeatInterval: Double, heartbeatTimeout: Double, timeout: Double, joinTimeout: Double) {
        self.heartbeatInterval = heartbeatInterval; self.heartbeatTimeout = heartbeatTimeout
        self.timeout = timeout; self.joinTimeout = joinTimeout
    }

    public init(_ network: CohortConfiguration.NetworkSettings) {
        self.init(heartbeatInterval: network.heartbeatInterval, heartbeatTimeout: network.heartbeatTimeout,
                  timeout: network.timeout, joinTimeout: network.joinTimeout)
    }

    /// For a transport that neither loses messages nor peers (in memory, one thread): no deadline can
    /// pass for a reason the cohort could act on, so none is kept.
    public static let reliable = ProtocolTiming(heartbeatInterval: .infinity, heartbeatTimeout: .infinity, timeout: .infinity,
                                                joinTimeout: .infinity)
}

/// A record a core asks its driver to log.
public struct CoreLog: Sendable, Equatable {
    public enum Level: Int, Sendable, Comparable {
        case debug, info, notice, warning, error
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }
    }
    public let level: Level
    public let message: String
    public let metadata: [String: String]
    /// The sender a warning is about, when it comes from outside: the driver rate-limits those per sender.
    public let sender: String?

    public init(_ level: Level, _ message: String, _ metadata: [String: String] = [:], sender: String? = nil) {
        self.level = level; self.message = message; self.metadata = metadata; self.sender = sender
    }
}

/// A routing id as printable text (hex).
public func describeConnection(_ id: ConnectionID?) -> String {
    guard let id else { return "coordinator" }
    return id.map { String(format: "%02x", $0) }.joined()
}

/// Why a coordinator stopped before the run finished.
public enum CoordinatorError: Error, CustomStringConvertible, Sendable {
    case joinTimeout(missing: [Int], seconds: Double, endpoint: String)
    case nobodyPresent(seconds: Double)
    case insecureBind(endpoint: String)
    case stopped(signal: Int32)
    /// A resume the saved state does not allow (other settings, say).
    case resume(ResumeError)

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
        case .resume(let error): "\(error)"
        }
    }
}

/// Why a peer stopped before the run finished.
public enum PeerError: Error, CustomStringConvertible, Sendable {
    case refused(reason: String)
    case otherConfiguration(WireError)
    case noCoordinator(endpoint: String, seconds: Double)
    case outOfStep(String)
    case stopped(reason: String)
    case signal(Int32)
    case diverged(DivergenceError)
    case resume(String)
    /// A file of the run directory could not be written (a checkpoint, say).
    case files(String)

    public var description: String {
        switch self {
        case .files(let why): "could not write the run directory: \(why)"
        case .refused(let reason): "the coordinator refused this peer: \(reason)"
        case .otherConfiguration(let error): "the coordinator runs another configuration (\(error)); start every process with the same file"
        case .noCoordinator(let endpoint, let seconds): "no coordinator answered at \(endpoint) within \(Int(seconds)) s (network.join_timeout)"
        case .outOfStep(let why): "out of step with the coordinator: \(why)"
        case .stopped(let reason): "stopped by the coordinator: \(reason)"
        case .signal(let s): "stopped by signal \(s)"
        case .diverged(let e): "\(e)"
        case .resume(let why): "cannot resume: \(why)"
        }
    }
}

/// Checks a message's tensors against the names and shapes the configuration implies.
/// - Returns: the tensors by name.
/// - Throws: ``WireError/tensor(_:)`` naming the first tensor that is missing, unexpected or misshapen.
public func expectTensors(_ tensors: [TensorPayload], _ expected: [(name: String, shape: [Int])]) throws -> [String: TensorPayload] {
    var byName: [String: TensorPayload] = [:]
    for t in tensors {
        guard byName[t.name] == nil else { throw WireError.tensor("\(t.name) appears twice") }
        byName[t.name] = t
    }
    for (name, shape) in expected {
        guard let t = byName[name] else { throw WireError.tensor("\(name) is missing") }
        guard t.shape == shape else { throw WireError.tensor("\(name) has shape \(t.shape), expected \(shape)") }
    }
    let extra = Set(byName.keys).subtracting(expected.map(\.name))
    guard extra.isEmpty else { throw WireError.tensor("unexpected \(extra.sorted().joined(separator: ", "))") }
    return byName
}

/// What a transport hands a driver: a message that passed validation, or one that did not.
public enum TransportInput: Sendable {
    /// A valid message, with its sender (on the coordinator's side) and its authenticated user (with CURVE).
    case message(Message, from: ConnectionID?, user: String?)
    /// A message that failed validation (the transport has logged it), with its sender.
    case invalid(WireError, from: ConnectionID?)
    /// Mesh mode, a peer's side: a valid message from another peer's data plane, with its authenticated
    /// user (with CURVE).
    case peerData(Message, user: String?)
}

/// Carries protocol messages for a driver: ZeroMQ sockets between processes, or queues in memory.
public protocol MessageTransport: AnyObject {
    /// Sends `message` (to `connection` on the coordinator's side; nil on a peer's side). Heartbeats are
    /// dropped rather than queued when the link is full.
    /// - Throws: when the message cannot be handed over (a timeout, an unreachable connection).
    func send(_ message: Message, to connection: ConnectionID?) throws
    /// The next input, waiting until `deadline` (seconds since 1970) at most; nil when none arrived.
    func receive(until deadline: Double) throws -> TransportInput?
    /// Mesh mode, a peer's side: sends `message` to each target's data endpoint without waiting.
    /// - Throws: when it cannot be handed over to some target (the others still get it).
    func publish(_ message: Message, to targets: [Message.MeshTarget]) throws
}

extension MessageTransport {
    public func publish(_ message: Message, to targets: [Message.MeshTarget]) throws {
        throw TransportError(description: "this transport has no data plane between peers (network.exchange: mesh)")
    }
}

/// A transport could not carry a message.
public struct TransportError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// The time the drivers give the cores: seconds since 1970.
public func wallClock() -> Double { Date().timeIntervalSince1970 }
