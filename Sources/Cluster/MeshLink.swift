import Foundation
import Logging
import Runtime
import Wire
import ZeroMQ

/// A peer's data plane in mesh mode (`network.exchange: mesh`): a PULL socket bound where the other peers
/// send their outputs, and a PUSH socket to each other peer's data endpoint, opened when a step first
/// names it and replaced when that peer comes back elsewhere. With security, the PULL socket is a CURVE
/// server with this peer's key, admitting the cohort's peer keys only (ZAP domain ``domain``), and each
/// PUSH socket expects the target peer's key, so outputs travel encrypted between the peers and nobody
/// else can send them.
final class MeshLink {
    /// The ZAP domain of the peers' data sockets.
    static let domain = "mesh"

    /// Where the other peers reach this one (what the hello carries).
    let endpoint: String
    let socket: ProtocolSocket
    private let context: ZMQContext
    private let keys: CohortKeys?
    private let codec: WireCodec
    private let logger: Logger
    /// The PUSH socket to each other peer, by rank, with the endpoint it is connected to.
    private var pushes: [Int: (endpoint: String, socket: ProtocolSocket)] = [:]

    /// Binds the data socket at `bind` (a port of `*` picks a free one).
    /// - Parameter host: advertised in place of a wildcard address (`tcp://*:…`, `tcp://0.0.0.0:…`).
    init(context: ZMQContext, bind: String, host: String, keys: CohortKeys?, codec: WireCodec, logger: Logger) throws {
        self.context = context; self.keys = keys; self.codec = codec; self.logger = logger
        let pull = try ZMQSocket(context, type: .pull)
        try pull.setLinger(milliseconds: 0)
        try pull.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        if let keys {
            try pull.makeCurveServer(secretKey: keys.own.secretKey)
            try pull.setZAPDomain(Self.domain)
        }
        do { try pull.bind(bind) } catch {
            throw TransportError(description: "cannot bind the data socket at \(bind) (--mesh-endpoint): \(error)")
        }
        endpoint = Self.advertised(pull.lastEndpoint, host: host)
        socket = ProtocolSocket(pull, codec: codec, logger: logger, routed: false, sender: "a peer (mesh)")
    }

    /// `bound` with a wildcard address replaced by `host`.
    static func advertised(_ bound: String, host: String) -> String {
        for wildcard in ["tcp://0.0.0.0:", "tcp://*:", "tcp://[::]:"] where bound.hasPrefix(wildcard) {
            return "tcp://" + host + ":" + bound.dropFirst(wildcard.count)
        }
        return bound
    }

    /// Where a peer binds its data socket unless told: a free loopback port when the coordinator is on
    /// this host (every peer is, then), a free port on every interface otherwise.
    static func defaultBind(coordinator: String) -> String {
        Coordinator.isLocal(coordinator) ? "tcp://127.0.0.1:*" : "tcp://*:*"
    }

    /// Sends `message` to every target without waiting; a full or broken link to one target does not
    /// hold up the others.
    /// - Throws: ``TransportError`` naming the targets that could not take it.
    func publish(_ message: Message, to targets: [Message.MeshTarget]) throws {
        // Links to peers no longer named (gone, or back elsewhere) are closed with what was queued on them.
        let named = Set(targets.map(\.rank))
        for rank in pushes.keys where !named.contains(rank) { pushes[rank] = nil }
        var failed: [String] = []
        for target in targets {
            do { try push(to: target).send(message, to: nil) } catch {
                failed.append("peer \(target.rank) at \(target.endpoint): \(error)")
            }
        }
        if !failed.isEmpty { throw TransportError(description: failed.joined(separator: "; ")) }
    }

    private func push(to target: Message.MeshTarget) throws -> ProtocolSocket {
        if let open = pushes[target.rank], open.endpoint == target.endpoint { return open.socket }
        pushes[target.rank] = nil  // the peer came back elsewhere: what was queued for the old endpoint goes
        let push = try ZMQSocket(context, type: .push)
        try push.setLinger(milliseconds: 0)
        // Never block the peer's loop: a link that cannot take a step's outputs now fails the send.
        try push.setSendTimeout(milliseconds: 0)
        try push.setSendHighWaterMark(8)
        try push.setMaximumMessageSize(bytes: Int64(codec.maximumBytes))
        if let keys {
            guard keys.peers.indices.contains(target.rank) else { throw TransportError(description: "no peer \(target.rank) in this cohort") }
            try push.makeCurveClient(serverKey: keys.peers[target.rank], keys: keys.own)
        }
        try push.connect(target.endpoint)
        let socket = ProtocolSocket(push, codec: codec, logger: logger, routed: false)
        pushes[target.rank] = (target.endpoint, socket)
        return socket
    }
}

/// A peer's sockets as one transport: the connection to the coordinator and, in mesh mode, the data
/// plane; receiving waits on both at once.
final class PeerSockets: MessageTransport {
    let control: ProtocolSocket
    let mesh: MeshLink?

    init(control: ProtocolSocket, mesh: MeshLink?) { self.control = control; self.mesh = mesh }

    func send(_ message: Message, to connection: ConnectionID?) throws { try control.send(message, to: nil) }

    func receive(until deadline: Double) throws -> TransportInput? {
        guard let mesh else { return try control.receive(until: deadline) }
        let wait = max(0, Int((deadline - wallClock()) * 1000))
        let ready = try ZMQSocket.poll([control.socket, mesh.socket.socket], milliseconds: wait)
        if ready[0] { return try control.receive(until: 0) }
        guard ready[1] else { return nil }
        switch try mesh.socket.receive(until: 0) {
        case .message(let message, _, let user)?: return .peerData(message, user: user)
        case .invalid?, .peerData?, nil: return nil  // logged by the socket
        }
    }

    func publish(_ message: Message, to targets: [Message.MeshTarget]) throws {
        guard let mesh else { throw TransportError(description: "this peer has no data plane (network.exchange: coordinator)") }
        try mesh.publish(message, to: targets)
    }
}
