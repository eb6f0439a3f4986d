import Foundation
import Logging
import Runtime
import Wire
import ZeroMQ

/// A ZeroMQ socket that speaks the cohort protocol: sends ``Message``s (tensor data straight from the
/// arrays' storage), receives and validates them, and logs and drops whatever fails validation.
final class ProtocolSocket: MessageTransport {
    let socket: ZMQSocket
    let codec: WireCodec
    let logger: Logger
    /// Whether frames start with the sender's routing id (a ROUTER socket).
    let routed: Bool
    /// Messages dropped because they failed validation.
    private(set) var rejected = 0
    /// Warnings about dropped messages, rate-limited per sender.
    let warnings = RateLimitedWarnings()
    /// Who sends on an unrouted socket: the coordinator, or (a peer's data socket) the other peers.
    let sender: String

    init(_ socket: ZMQSocket, codec: WireCodec, logger: Logger, routed: Bool, sender: String = "coordinator") {
        self.socket = socket; self.codec = codec; self.logger = logger; self.routed = routed; self.sender = sender
    }

    /// Sends `message` (to `identity` on a ROUTER socket).
    /// - Throws: ``ZeroMQError``: a timeout, or an unreachable identity on a ROUTER.
    /// A heartbeat is sent without waiting: a full queue (the coordinator unreachable) drops it, so
    /// nothing piles up.
    func send(_ message: Message, to identity: [UInt8]? = nil) throws {
        precondition(routed == (identity != nil), "a ROUTER needs an identity, other sockets none")
        let (head, tensors) = codec.encodeParts(message)
        let prefix = identity.map { [$0] } ?? []
        let bytes = prefix + head
        var dontWait = false
        if case .heartbeat = message { dontWait = true }
        try socket.send(count: bytes.count + tensors.count, dontWait: dontWait) { i, body in
            i < bytes.count ? bytes[i].withUnsafeBytes(body) : tensors[i - bytes.count].values.withUnsafeBytes(body)
        }
    }

    /// What ``receive(until:)`` returns.
    enum Received {
        /// A valid message, with its sender's routing id (on a ROUTER) and ZAP user id (with CURVE).
        case message(Message, from: [UInt8]?, user: String?)
        /// A message that failed validation (already logged and counted), with its sender.
        case invalid(WireError, from: [UInt8]?)
    }

    /// The next message, waiting until `deadline` at most; `nil` when the deadline passed first.
    func receive(until deadline: Date) throws -> Received? {
        let wait = max(0, Int(deadline.timeIntervalSinceNow * 1000))
        guard try socket.waitForMessage(milliseconds: wait), let received = try socket.receiveWithSender(dontWait: true) else { return nil }
        var frames = received.frames
        var identity: [UInt8]?
        if routed {
            guard !frames.isEmpty else { return nil }
            identity = frames.removeFirst()
        }
        do {
            return .message(try codec.decode(frames), from: identity, user: received.userID)
        } catch let error as WireError {
            rejected += 1
            let sender = identity.map { ProtocolSocket.describe($0) } ?? self.sender
            warnings.warn(logger, sender: sender, "dropped a malformed message", metadata: ["reason": "\(error)", "from": "\(sender)"])
            return .invalid(error, from: identity)
        }
    }

    /// The next message as a driver takes it, waiting until `deadline` (seconds since 1970) at most.
    func receive(until deadline: Double) throws -> TransportInput? {
        switch try receive(until: Date(timeIntervalSince1970: deadline)) {
        case .message(let message, let from, let user)?: .message(message, from: from, user: user)
        case .invalid(let error, let from)?: .invalid(error, from: from)
        case nil: nil
        }
    }

    /// A routing id as printable text.
    static func describe(_ identity: [UInt8]?) -> String { describeConnection(identity) }
}
