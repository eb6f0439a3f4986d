import Foundation
import Testing
import TestSupport
import Runtime
import Wire
import ZeroMQ
@testable import Cluster

/// A secured cohort (CURVE keys, the coordinator's ZAP handler): a client with an unknown key, or no
/// key, cannot join, cannot inject outputs and cannot read the log stream, while the real peers train
/// on undisturbed — to the same weights as an in-process run of the same configuration.
@Suite(.serialized) struct SecurityTests {
    @Test func strangersCannotJoinInjectOrListen() throws {
        let directory = scratch("security")
        let keys = directory + "/keys"
        let keygen = try CohortProcess(["keygen", "--out", keys, "coordinator", "peer-0", "peer-1", "peer-2", "monitor", "stranger"])
        #expect(keygen.finish() == 0, "\(keygen.output)")
        let attributes = try FileManager.default.attributesOfItem(atPath: keys + "/peer-1.key")
        #expect((attributes[.posixPermissions] as? Int) == 0o600, "secret keys are owner-only")
        let text = cohortConfiguration(epochs: 3, trainLimit: 1280) + """

            security:
              coordinator_key: \(keys)/coordinator.pub
              peer_keys: [\(keys)/peer-0.pub, \(keys)/peer-1.pub, \(keys)/peer-2.pub]
              monitor_keys: [\(keys)/monitor.pub]
            """
        let config = directory + "/cohort.yaml"
        try write(text, to: config)
        let reference = try CohortProcess(["launch", "--config", config, "--transport", "inproc", "--threads", "1", "--out", directory + "/inproc"])
        #expect(reference.finish() == 0, "\(reference.output)")

        let launch = try CohortProcess(["launch", "--config", config, "--threads", "3", "--keys", keys, "--out", directory + "/run"])
        var control = "", stream = ""
        try #require(launch.waitForOutput(seconds: 120) { output in
            guard let c = output.range(of: "coordinator at "), let s = output.range(of: "log stream at ") else { return false }
            control = String(output[c.upperBound...].prefix { $0 != ";" })
            stream = String(output[s.upperBound...].prefix { $0 != " " && $0 != "\n" })
            return true
        }, "\(launch.output)")
        let monitor = try CohortProcess(["monitor", stream, "--json", "--key", keys + "/monitor.key", "--server-key", keys + "/coordinator.pub"])

        let codec = WireCodec(digest: try CohortConfiguration.parse(text).digest)
        let context = try ZMQContext()
        let stranger = try KeyFile.readPair(keys + "/stranger.key")
        let coordinatorKey = try KeyFile.readKey(keys + "/coordinator.pub")
        func client(curve: Bool) throws -> ZMQSocket {
            let s = try ZMQSocket(context, type: .dealer)
            try s.setLinger(milliseconds: 0)
            if curve { try s.makeCurveClient(serverKey: coordinatorKey, keys: stranger) }
            try s.connect(control)
            return s
        }
        // Every probe goes out at once and the answers are awaited together afterwards, so that all of them
        // reach the coordinator while the peers train (a fast machine trains this cohort in a few seconds;
        // one probe after another, each waiting for an answer, outlasted it).
        let strangers = try [true, false].map { curve in
            let s = try client(curve: curve)
            try s.send(codec.encode(.hello(.init(rank: 0, model: "resnet8"))))
            // Outputs for the next few steps, as rank 0 might send them.
            for step in 0..<40 {
                try s.send(codec.encode(.outputs(.init(rank: 0, globalStep: step), tensors: [
                    TensorPayload(name: "embedding", shape: [64, 32], values: [Float](repeating: 0.1, count: 64 * 32)),
                    TensorPayload(name: "logits", shape: [64, 10], values: [Float](repeating: 9, count: 640))])), dontWait: true)
            }
            return (curve, s)
        }
        // A client that believes another key is the coordinator's: its handshake cannot be decrypted.
        let misled = try ZMQSocket(context, type: .dealer)
        try misled.setLinger(milliseconds: 0)
        try misled.makeCurveClient(serverKey: try KeyFile.readKey(keys + "/peer-1.pub"), keys: stranger)
        try misled.connect(control)
        try misled.send(codec.encode(.hello(.init(rank: 1, model: "resnet8"))), dontWait: true)
        let listener = try ZMQSocket(context, type: .subscriber)
        try listener.setLinger(milliseconds: 0)
        try listener.makeCurveClient(serverKey: coordinatorKey, keys: stranger)
        try listener.subscribe()
        try listener.connect(stream)
        for (curve, s) in strangers {
            #expect(try !s.waitForMessage(milliseconds: 3000), "a stranger (curve: \(curve)) got an answer")
        }
        #expect(try !misled.waitForMessage(milliseconds: 2000), "a client with the wrong server key got an answer")
        #expect(try !listener.waitForMessage(milliseconds: 3000), "a stranger read the log stream")

        #expect(launch.finish() == 0, "\(launch.output)")
        #expect(monitor.finish(seconds: 30) == 0)
        #expect(monitor.output.contains("\"topic\":\"status\""), "the configured monitor reads the stream")
        // The real peers trained exactly what the in-process run trained: nothing was injected.
        for rank in 0..<3 {
            try expectIdentical(directory + "/inproc/peer-\(rank)/checkpoints/last.safetensors", directory + "/run/peer-\(rank)/checkpoints/last.safetensors")
        }
        let log = try String(contentsOfFile: directory + "/run/stream.jsonl", encoding: .utf8)
        #expect(log.contains("authentication failed: unknown key") && log.contains("\"address\":\"127.0.0.1\""), "denials are logged with the address")
        #expect(log.contains("authentication failed: not CURVE") || log.contains("authentication failed"))
        // Failures before ZAP is asked: a client without CURVE, one holding a wrong server key.
        // A client without CURVE reads the coordinator's greeting, sees CURVE and hangs up; whether the
        // coordinator has read the client's mechanism by then (the mismatch reported) or meets the hang-up
        // first (no detail) is a race inside libzmq's greeting exchange, lost under load (seen on a Zen 5
        // with the whole suite running). Either way the attempt is logged as a failed handshake.
        #expect(log.contains("CURVE handshake failed: the client does not speak CURVE")
                || log.contains("CURVE handshake failed: no detail"), "a NULL-mechanism client is logged")
        #expect(log.contains("CURVE handshake failed: the handshake does not decrypt"), "a wrong server key is logged")
    }

    /// Binding beyond loopback without keys is refused unless --insecure.
    @Test func nonLoopbackBindWithoutKeysIsRefused() throws {
        let directory = scratch("insecure")
        let config = directory + "/cohort.yaml"
        try write(cohortConfiguration(), to: config)
        let coordinator = try CohortProcess(["coordinator", "--config", config, "--bind", "tcp://0.0.0.0:*", "--out", directory + "/run"])
        #expect(coordinator.finish(seconds: 60) != 0)
        #expect(coordinator.output.contains("--insecure"), "\(coordinator.output)")
    }
}
