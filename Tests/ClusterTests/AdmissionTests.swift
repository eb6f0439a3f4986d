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

/// Issue 20: while the coordinator evaluates its teacher before admitting anyone, the peers' hellos pile up;
/// the late welcomes they get are answers to one admission, not warnings, and the wait is visible as
/// progress lines.
@Suite struct SlowCoordinatorStartTests {
    @Test func peersWaitingForATeacherEvaluationGetNoWelcomeWarnings() throws {
        let directory = scratch("slow-start")
        try write("""
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 10000}
            epochs: 1
            batch_size: 128
            peers: [{model: resnet8}, {model: resnet8}]
            teacher: {model: resnet8, checkpoint: \(teacherCheckpoint), kd: {}}
            network: {coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*", timeout: 120, join_timeout: 120}
            """, to: directory + "/cohort.yaml")
        let launch = try CohortProcess(["launch", "--config", directory + "/cohort.yaml", "--threads", "2", "--out", directory + "/run"])
        #expect(launch.finish() == 0, "\(launch.output)")
        let output = launch.output
        #expect(output.contains("evaluating the teacher (resnet8) on the test set: 10,000 images"), "\(output)")
        #expect(output.contains("evaluating the teacher (resnet8) on the test set: done, test top-1"))
        #expect(!output.contains("unexpected welcome") && !output.contains("dropped a welcome"), "\(output)")
        // The teacher's evaluation outlasted a hello's repeat interval (2 s), so the peers did say hello again.
        let lines = output.split(separator: "\n")
        func time(_ line: Substring?) -> Int? {
            guard let line, let t = line.split(separator: " ").dropFirst().first else { return nil }
            let parts = t.split(separator: ":").compactMap { Int($0) }
            return parts.count == 3 ? parts[0] * 3600 + parts[1] * 60 + parts[2] : nil
        }
        let started = time(lines.first { $0.contains("on the test set: 10,000 images") })
        let ended = time(lines.first { $0.contains("on the test set: done") })
        if let started, let ended { #expect(ended - started >= 3, "the teacher's evaluation took \(ended - started) s: too short to test repeated hellos") }
    }
}
