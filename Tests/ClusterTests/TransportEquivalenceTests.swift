import Foundation
import Synchronization
import Testing
import TestSupport
import NN
import Cluster
import Tensors
import Training
import Runtime
import Wire

/// Records nothing: the runs below would otherwise print every peer's lines.
private struct SilentSink: LogSink { func emit(_ record: LogRecord) {} }

/// The same protocol cores over both transports: the in-memory one (`cohort launch --transport inproc`)
/// and ZeroMQ (a coordinator and three peers, here on threads of this process over loopback TCP) train
/// bit-identical networks.
@Suite(.serialized) struct TransportEquivalenceTests {
    /// Three peers with layer-wise MCL and a teacher with KD, CRCD and RRD: every weight, loss state
    /// (memories, queues, heads, auxiliary branches) and momentum agrees, and so do the test scores.
    @Test func inMemoryAndZeroMQTransportsTrainTheSameWeights() throws {
        let directory = scratch("transports")
        var configuration = try Self.configuration()
        configuration.output = directory + "/inproc"
        let memory = try Parallelism.withThreadCount(1) {
            try InProcessCohort(configuration: configuration).run(progress: ProgressReporter(interactive: false))
        }
        configuration.output = directory + "/zmq"
        let summary = try Self.runOverZeroMQ(configuration)
        #expect(memory.steps == 6 && summary.steps == 6 && memory.transport == "inproc" && summary.transport == "zmq")
        #expect(memory.peers.map(\.test_top1) == summary.peers.map(\.test_top1) && memory.ensemble_top1 == summary.ensemble_top1)
        #expect(memory.teacher_top1 == summary.teacher_top1)
        try Self.expectSameNetworks(directory + "/inproc", directory + "/zmq")
        // Both write the coordinator's states: a run of either kind resumes the same way.
        for run in ["inproc", "zmq"] {
            let (states, skipped) = CoordinatorState.readable(output: directory + "/" + run)
            #expect(skipped.isEmpty && states.last?.globalStep == 6 && states.last?.evaluatedEpochs == 2, "\(run)")
        }
    }

    /// Mesh mode (`network.exchange: mesh`): the peers send each other their outputs over ZeroMQ (CURVE
    /// keys on every link here, the coordinator's and the peers' data sockets) and train exactly what the
    /// coordinator mode trains; so does the in-memory transport in mesh mode.
    @Test func meshModeTrainsTheSameWeightsAsTheCoordinatorMode() throws {
        let directory = scratch("mesh")
        var configuration = try Self.configuration()
        configuration.output = directory + "/coordinator"
        let reference = try Parallelism.withThreadCount(1) {
            try InProcessCohort(configuration: configuration).run(progress: ProgressReporter(interactive: false))
        }
        configuration.network.exchange = .mesh
        configuration.output = directory + "/inproc-mesh"
        let memory = try Parallelism.withThreadCount(1) {
            try InProcessCohort(configuration: configuration).run(progress: ProgressReporter(interactive: false))
        }
        let keys = directory + "/keys"
        for name in ["coordinator", "peer-0", "peer-1", "peer-2"] { _ = try KeyFile.generate(name: name, in: keys) }
        configuration.security = .init(coordinatorKey: keys + "/coordinator.pub", peerKeys: (0..<3).map { keys + "/peer-\($0).pub" })
        configuration.output = directory + "/zmq-mesh"
        let summary = try Self.runOverZeroMQ(configuration, keys: keys)
        #expect(reference.steps == 6 && memory.steps == 6 && summary.steps == 6)
        #expect(memory.peers.map(\.test_top1) == reference.peers.map(\.test_top1) && summary.peers.map(\.test_top1) == reference.peers.map(\.test_top1))
        try Self.expectSameNetworks(directory + "/coordinator", directory + "/inproc-mesh")
        try Self.expectSameNetworks(directory + "/coordinator", directory + "/zmq-mesh")
        // Each peer received the others' outputs at its own data endpoint.
        let stream = try String(contentsOfFile: directory + "/zmq-mesh/stream.jsonl", encoding: .utf8)
        #expect(stream.contains("receiving the others' outputs at tcp://127.0.0.1:"))
        #expect(!stream.contains("\"level\":\"warning\""), "no peer waited in vain, rejoined or dropped anything")
    }

    /// Three peers (resnet8, resnet8, resnet14) with layer-wise MCL and a resnet8 teacher with KD, CRCD and
    /// RRD, 2 epochs of 3 steps, a checkpoint every 2 steps.
    static func configuration() throws -> CohortConfiguration {
        try CohortConfiguration.parse(cohortConfiguration(epochs: 2, trainLimit: 192,
                                                          extra: "mcl: {embedding_dim: 16, layer_weights: [1.0, 0.5, 1.0]}\ncheckpoint_every: 2")
            .replacingOccurrences(of: "mcl: {embedding_dim: 32}\n", with: ""))
    }

    /// A coordinator and three `PeerNode`s on threads of this process over loopback TCP; the summary.
    /// - Parameter keys: the directory of the key files (`coordinator.key`, `peer-<rank>.key`) with security.
    static func runOverZeroMQ(_ configuration: CohortConfiguration, keys: String? = nil) throws -> CohortSummary {
        let coordinator = try Coordinator(configuration: configuration, keyPath: keys.map { $0 + "/coordinator.key" }, console: SilentSink())
        let endpoint = coordinator.controlEndpoint
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        for rank in 0..<configuration.peers.count {
            group.enter()
            Thread {
                defer { group.leave() }
                do {
                    try PeerNode(configuration: configuration, rank: rank, coordinator: endpoint, keyPath: keys.map { $0 + "/peer-\(rank).key" },
                                 console: SilentSink()).run()
                } catch {
                    failures.withLock { $0.append("peer \(rank): \(error)") }
                }
            }.start()
        }
        let summary = try coordinator.run()
        #expect(group.wait(timeout: .now() + 120) == .success)
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")
        return summary
    }

    /// Every peer's weights, loss states and momentum agree in two runs of the three-peer cohort.
    static func expectSameNetworks(_ a: String, _ b: String) throws {
        for rank in 0..<3 {
            for file in ["last.safetensors", "epoch-0001.safetensors", "epoch-0002.state.safetensors", "step-000004.state.safetensors"] {
                try expectIdentical(a + "/peer-\(rank)/checkpoints/" + file, b + "/peer-\(rank)/checkpoints/" + file)
            }
            let state = try SafeTensors.read(b + "/peer-\(rank)/checkpoints/epoch-0002.state.safetensors")
            for key in ["auxiliary_classifier.fc2.weight", "loss.mcl_head_aux2.proj_head.2.weight", "momentum.auxiliary_classifier.fc1.weight"] {
                #expect(state.entry(key) != nil, "\(key)")
            }
            #expect(state.names.contains { $0.hasPrefix("loss.crcd") } && state.names.contains { $0.hasPrefix("loss.rrd") }, "\(state.names)")
        }
    }
}
