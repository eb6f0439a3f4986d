import Foundation
import Logging
import Testing
import TestSupport
import Runtime
import Wire
import ZeroMQ
@testable import Cluster

/// The peers' data plane on real sockets: outputs reach the named peers with the sender's authenticated
/// name; with keys, a stranger's key or a client without CURVE never gets a message in; a peer back at
/// a new endpoint is reached there; hostile bytes are dropped.
@Suite(.serialized) struct MeshLinkTests {
    static let codec = WireCodec(digest: String(repeating: "ab", count: 32))
    static let logger = Logger(label: "test.mesh") { _ in SwiftLogNoOpLogHandler() }

    static func outputs(rank: Int, step: Int) -> Message {
        .outputs(.init(rank: rank, globalStep: step, attempt: 9),
                 tensors: [TensorPayload(name: "logits", shape: [2, 10], values: (0..<20).map { Float($0 + rank) })])
    }

    /// The next input at `link`'s socket within `seconds`, through a transport as a peer's driver takes it.
    static func next(_ sockets: PeerSockets, seconds: Double = 3) throws -> TransportInput? {
        let deadline = wallClock() + seconds
        while wallClock() < deadline {
            if let input = try sockets.receive(until: deadline) { return input }
        }
        return nil
    }

    @Test func outputsReachEachNamedPeerWithTheSendersName() throws {
        let directory = scratch("mesh-link")
        for name in ["coordinator", "peer-0", "peer-1", "peer-2", "stranger"] { _ = try KeyFile.generate(name: name, in: directory) }
        let settings = CohortConfiguration.SecuritySettings(coordinatorKey: directory + "/coordinator.pub", peerKeys: (0..<3).map { directory + "/peer-\($0).pub" })
        let context = try ZMQContext()
        let keys = try (0..<3).map { try CohortKeys(settings: settings, secretKeyPath: directory + "/peer-\($0).key") }
        let zap = try ZAPHandler(context: context, keys: keys[0], logger: Self.logger)
        defer { zap.stop() }
        let links = try (0..<3).map { try MeshLink(context: context, bind: "tcp://127.0.0.1:*", host: "ignored", keys: keys[$0], codec: Self.codec, logger: Self.logger) }
        #expect(links.allSatisfy { $0.endpoint.hasPrefix("tcp://127.0.0.1:") })
        // A control socket that never hears anything: the transports read the mesh beside it.
        let quiet = try ZMQSocket(context, type: .dealer)
        try quiet.setLinger(milliseconds: 0)
        let sockets = links.map { PeerSockets(control: ProtocolSocket(quiet, codec: Self.codec, logger: Self.logger, routed: false), mesh: $0) }

        let targets = [Message.MeshTarget(rank: 1, endpoint: links[1].endpoint), Message.MeshTarget(rank: 2, endpoint: links[2].endpoint)]
        try sockets[0].publish(Self.outputs(rank: 0, step: 4), to: targets)
        for r in [1, 2] {
            guard case .peerData(let message, let user)? = try Self.next(sockets[r]) else { Issue.record("peer \(r) got nothing"); return }
            #expect(message == Self.outputs(rank: 0, step: 4) && user == "peer-0")
        }

        // Strangers: an unknown key, and a client without CURVE; neither gets a message to peer 1.
        let stranger = try KeyFile.readPair(directory + "/stranger.key")
        for curve in [true, false] {
            let push = try ZMQSocket(context, type: .push)
            try push.setLinger(milliseconds: 0)
            if curve { try push.makeCurveClient(serverKey: keys[1].own.publicKey, keys: stranger) }
            try push.connect(links[1].endpoint)
            try push.send(Self.codec.encode(Self.outputs(rank: 2, step: 5)), dontWait: true)
        }
        // Hostile bytes from a peer's own key are dropped by validation, and nothing else arrives.
        let rogue = try ZMQSocket(context, type: .push)
        try rogue.setLinger(milliseconds: 0)
        try rogue.makeCurveClient(serverKey: keys[1].own.publicKey, keys: keys[2].own)
        try rogue.connect(links[1].endpoint)
        try rogue.send([[0xFF, 0x00, 0x13]], dontWait: false)
        #expect(try Self.next(sockets[1], seconds: 2) == nil, "nothing from strangers or garbage reaches the peer")

        // Peer 2 back at a new endpoint: the next outputs go there, not to the old one.
        let moved = try MeshLink(context: context, bind: "tcp://127.0.0.1:*", host: "ignored", keys: keys[2], codec: Self.codec, logger: Self.logger)
        let movedSockets = PeerSockets(control: ProtocolSocket(quiet, codec: Self.codec, logger: Self.logger, routed: false), mesh: moved)
        try sockets[0].publish(Self.outputs(rank: 0, step: 6), to: [Message.MeshTarget(rank: 2, endpoint: moved.endpoint)])
        guard case .peerData(let message, let user)? = try Self.next(movedSockets) else { Issue.record("the moved peer got nothing"); return }
        #expect(message == Self.outputs(rank: 0, step: 6) && user == "peer-0")
        #expect(try Self.next(sockets[2], seconds: 0.5) == nil)
    }

    @Test func aWildcardBindIsAdvertisedByHostName() {
        #expect(MeshLink.advertised("tcp://0.0.0.0:41234", host: "node7") == "tcp://node7:41234")
        #expect(MeshLink.advertised("tcp://10.0.0.2:5580", host: "node7") == "tcp://10.0.0.2:5580")
        #expect(MeshLink.defaultBind(coordinator: "tcp://127.0.0.1:5570") == "tcp://127.0.0.1:*")
        #expect(MeshLink.defaultBind(coordinator: "tcp://10.0.0.1:5570") == "tcp://*:*")
    }
}
