import Foundation
import Testing
import TestSupport
import Runtime
import Wire
import ZeroMQ
@testable import Cluster

/// Clients written against `docs/protocol.md` that do what real peers never do (issue 16): oversized
/// fields, repeated keys, floods, a rank taken over. Each is contained, and the coordinator goes on
/// serving the real peers, which train exactly what an in-process run trains.
@Suite(.serialized) struct HostileClientTests {
    @Test func hostileClientsAreContainedWhileTheCohortTrains() throws {
        let directory = scratch("hostile")
        let text = cohortConfiguration(epochs: 3, trainLimit: 1280)
        let config = directory + "/cohort.yaml"
        try write(text, to: config)
        let reference = try CohortProcess(["launch", "--config", config, "--transport", "inproc", "--threads", "1", "--out", directory + "/inproc"])
        #expect(reference.finish() == 0, "\(reference.output)")

        let launch = try CohortProcess(["launch", "--config", config, "--threads", "3", "--out", directory + "/run"])
        var control = ""
        try #require(launch.waitForOutput(seconds: 120) { output in
            guard let c = output.range(of: "coordinator at ") else { return false }
            control = String(output[c.upperBound...].prefix { $0 != ";" })
            return output.contains("all 3 peer(s) joined") || output.contains("3 of 3 peer(s) joined")
        }, "\(launch.output)")
        let codec = WireCodec(digest: try CohortConfiguration.parse(text).digest)
        let context = try ZMQContext()
        func connection() throws -> ZMQSocket {
            let s = try ZMQSocket(context, type: .dealer)
            try s.setLinger(milliseconds: 0)
            try s.connect(control)
            return s
        }
        let hello = codec.encode(.hello(.init(rank: 0, model: "resnet8", host: "intruder")))
        let header = String(decoding: hello[1], as: UTF8.self)
        let repeated = header.replacingOccurrences(of: "\"rank\":0", with: "\"rank\":0,\"rank\":1")
        #expect(repeated != header)
        let probes: [(String, [[UInt8]])] = [
            // A 200 KiB model name (far under the message limit): dropped unread, not echoed, no answer.
            ("a 200 KiB model name", codec.encode(.hello(.init(rank: 0, model: String(repeating: "x", count: 200_000))))),
            // A header over 1 MiB.
            ("a header over 1 MiB", codec.encode(.hello(.init(rank: 0, model: "resnet8", host: String(repeating: "h", count: 2 << 20))))),
            // A key twice in one object ("rank" 0 and 1): refused, whichever the decoder would keep.
            ("a repeated key", [WireCodec.signature, Array(repeated.utf8)]),
            // Rank 0 is held by the live peer 0: without keys nothing proves a rank, so the hello is ignored.
            ("a hello for a live rank", hello),
        ]
        // Every probe goes out at once, each from its own connection, and the flood right after, so that
        // all of them reach the coordinator while the peers train (a fast machine trains this cohort in
        // a few seconds; one probe after another, each waiting 3 s for an answer, outlasted it).
        let sockets = try probes.map { _, frames in
            let s = try connection()
            try s.send(frames)
            return s
        }
        // A flood of bad messages from one connection.
        let flood = try connection()
        for _ in 0..<500 { try flood.send([WireCodec.signature, Array("{".utf8)], dontWait: true) }
        for (socket, (probe, _)) in zip(sockets, probes) {
            #expect(try !socket.waitForMessage(milliseconds: 3000), "\(probe) was answered")
        }

        #expect(launch.finish() == 0, "\(launch.output)")
        // The real peers trained what the in-process run trained.
        for rank in 0..<3 {
            try expectIdentical(directory + "/inproc/peer-\(rank)/checkpoints/last.safetensors", directory + "/run/peer-\(rank)/checkpoints/last.safetensors")
        }
        let stream = try String(contentsOfFile: directory + "/run/stream.jsonl", encoding: .utf8)
        #expect(!stream.contains(String(repeating: "x", count: 100)) && !stream.contains(String(repeating: "h", count: 100)), "a sender's text is not echoed")
        #expect(stream.contains("a string of 200000 bytes, more than the limit of 16384"))
        #expect(stream.contains("more than the limit of 1048576"))
        #expect(stream.contains("the key \\\"rank\\\" appears twice in one object"), "duplicate keys")
        #expect(stream.contains("ignored a hello for rank 0: a live connection holds it"))
        #expect(!stream.contains("peer 0 joined again"), "the live peer kept its rank")
        // The flood: three warnings and one note that the rest are suppressed, not 500 lines.
        let lines = stream.split(separator: "\n")
        let floodWarnings = lines.filter { $0.contains("dropped a malformed message") && $0.contains("not the expected JSON") }
        #expect(floodWarnings.count <= 4, "\(floodWarnings.count) warnings for the flood")
        #expect(lines.contains { $0.contains("further warnings about") && $0.contains("are suppressed") })
    }

    /// With CURVE keys, a connection holding rank 0's key takes the rank over at once and the old
    /// connection is told; a stranger's key cannot. Its heartbeats no longer count for the rank.
    @Test func onlyTheRanksKeyTakesARankOver() throws {
        let directory = scratch("takeover")
        let keys = directory + "/keys"
        let keygen = try CohortProcess(["keygen", "--out", keys, "coordinator", "peer-0", "peer-1", "peer-2", "stranger"])
        #expect(keygen.finish() == 0, "\(keygen.output)")
        let text = cohortConfiguration() + """

            security:
              coordinator_key: \(keys)/coordinator.pub
              peer_keys: [\(keys)/peer-0.pub, \(keys)/peer-1.pub, \(keys)/peer-2.pub]
            """
        let config = directory + "/cohort.yaml"
        try write(text, to: config)
        let (coordinator, endpoint) = try startCoordinator(config: config, directory: directory, extra: ["--key", keys + "/coordinator.key"])
        defer { if coordinator.process.isRunning { kill(coordinator.process.processIdentifier, SIGKILL) } }
        let codec = WireCodec(digest: try CohortConfiguration.parse(text).digest)
        let context = try ZMQContext()
        let serverKey = try KeyFile.readKey(keys + "/coordinator.pub")
        func connection(_ key: String) throws -> ZMQSocket {
            let s = try ZMQSocket(context, type: .dealer)
            try s.setLinger(milliseconds: 0)
            try s.makeCurveClient(serverKey: serverKey, keys: try KeyFile.readPair(keys + "/" + key + ".key"))
            try s.connect(endpoint)
            return s
        }
        func welcome(_ s: ZMQSocket) throws -> Message.Welcome? {
            try s.send(codec.encode(.hello(.init(rank: 0, model: "resnet8"))))
            guard try s.waitForMessage(milliseconds: 5000), case .welcome(let w) = try codec.decode(try s.receive()!) else { return nil }
            return w
        }
        let first = try connection("peer-0")
        let a = try #require(try welcome(first))
        #expect(a.accepted && a.session != nil)
        #expect(try welcome(try connection("stranger")) == nil, "a stranger's key is denied")
        let second = try connection("peer-0")
        let b = try #require(try welcome(second))
        #expect(b.accepted && b.session != nil && b.session != a.session)
        // The replaced connection is told.
        #expect(try first.waitForMessage(milliseconds: 5000))
        guard case .shutdown(let s) = try codec.decode(try first.receive()!) else { Issue.record("no shutdown for the old connection"); return }
        #expect(s.reason.contains("taken over"))
        kill(coordinator.process.processIdentifier, SIGTERM)
        _ = coordinator.finish(seconds: 30)
    }
}
