import Foundation
import Testing
import Runtime
import Wire
import ZeroMQ

/// A coordinator (`cohort coordinator`) faced with strangers: malformed messages, another cohort's
/// configuration, ranks that do not exist or are taken, the wrong model.
@Suite(.serialized) struct AdmissionTests {
    @Test func coordinatorAdmitsOnlyTheConfiguredPeersAndDropsMalformedMessages() throws {
        let directory = scratch("admission")
        let config = directory + "/cohort.yaml"
        let text = cohortConfiguration()
        try write(text, to: config)
        let (coordinator, endpoint) = try startCoordinator(config: config, directory: directory)
        defer { if coordinator.process.isRunning { kill(coordinator.process.processIdentifier, SIGKILL) } }
        let codec = WireCodec(digest: try CohortConfiguration.parse(text).digest)
        let context = try ZMQContext()

        /// Sends `frames` from a new connection and returns the decoded answer, if one comes within 5 s.
        func exchange(_ frames: [[UInt8]]) throws -> Message? {
            let socket = try ZMQSocket(context, type: .dealer)
            try socket.setLinger(milliseconds: 0)
            try socket.connect(endpoint)
            try socket.send(frames)
            guard try socket.waitForMessage(milliseconds: 5000), let answer = try socket.receive() else { return nil }
            return try codec.decode(answer)
        }
        func refusal(_ frames: [[UInt8]]) throws -> String? {
            guard case .welcome(let w)? = try exchange(frames), !w.accepted else { return nil }
            return w.reason
        }

        #expect(try exchange([Array("not the protocol".utf8)]) == nil, "garbage gets no answer")
        #expect(try exchange(codec.encode(.outputs(.init(rank: 0, globalStep: 0), tensors: []))) == nil, "no step from a stranger")
        let otherCohort = WireCodec(digest: "0123").encode(.hello(.init(rank: 0, model: "resnet8")))
        #expect(try refusal(otherCohort)?.contains("configuration digest 0123 differs") == true)
        #expect(try refusal(codec.encode(.hello(.init(rank: 3, model: "resnet8"))))?.contains("rank 3 is not in this cohort") == true)
        #expect(try refusal(codec.encode(.hello(.init(rank: 2, model: "resnet8"))))?.contains("runs resnet14") == true)
        let first = try ZMQSocket(context, type: .dealer)
        try first.setLinger(milliseconds: 0)
        try first.connect(endpoint)
        try first.send(codec.encode(.hello(.init(rank: 0, model: "resnet8", host: "test"))))
        #expect(try first.waitForMessage(milliseconds: 5000))
        guard case .welcome(let w) = try codec.decode(try first.receive()!) else { Issue.record("no welcome"); return }
        #expect(w.accepted && w.session != nil)
        // Without keys nobody can prove a rank: a new connection saying hello as rank 0 is ignored while
        // the holder is alive (a restarted peer gets in once the old connection is silent for
        // heartbeat_timeout); with keys rank 0's key takes it over at once (HostileClientTests).
        #expect(try exchange(codec.encode(.hello(.init(rank: 0, model: "resnet8")))) == nil)

        // A real peer process started with another configuration stops with a clear error.
        let other = directory + "/other.yaml"
        try write(text.replacingOccurrences(of: "seed: 3", with: "seed: 4"), to: other)
        let peer = try CohortProcess(["peer", "--config", other, "--rank", "1", "--coordinator", endpoint, "--out", directory + "/other",
                                      "--threads", "1"])
        #expect(peer.finish(seconds: 120) == 1)
        #expect(peer.output.contains("another configuration"), "\(peer.output)")

        kill(coordinator.process.processIdentifier, SIGTERM)
        #expect(coordinator.finish(seconds: 30) == 143, "\(coordinator.output)")
        let stream = try String(contentsOfFile: directory + "/run/stream.jsonl", encoding: .utf8)
        #expect(stream.contains("dropped a malformed message") && stream.contains("refused a peer") && stream.contains("peer 0 joined"))
        #expect(stream.contains("dropped a message from an unknown sender") && stream.contains("ignored a hello for rank 0: a live connection holds it"))
    }
}

