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
        let text = cohortConfiguration(epochs: 2, trainLimit: 192, extra: "mcl: {embedding_dim: 16, layer_weights: [1.0, 0.5, 1.0]}\ncheckpoint_every: 2")
            .replacingOccurrences(of: "mcl: {embedding_dim: 32}\n", with: "")
        var configuration = try CohortConfiguration.parse(text)
        configuration.output = directory + "/inproc"
        let memory = try Parallelism.withThreadCount(1) {
            try InProcessCohort(configuration: configuration).run(progress: ProgressReporter(interactive: false))
        }
        configuration.output = directory + "/zmq"
        let coordinator = try Coordinator(configuration: configuration, console: SilentSink())
        let endpoint = coordinator.controlEndpoint
        let failures = Mutex<[String]>([])
        let group = DispatchGroup()
        let settings = configuration
        for rank in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                do { try PeerNode(configuration: settings, rank: rank, coordinator: endpoint, console: SilentSink()).run() } catch {
                    failures.withLock { $0.append("peer \(rank): \(error)") }
                }
            }.start()
        }
        let summary = try coordinator.run()
        #expect(group.wait(timeout: .now() + 120) == .success)
        #expect(failures.withLock { $0 }.isEmpty, "\(failures.withLock { $0 })")

        #expect(memory.steps == 6 && summary.steps == 6 && memory.transport == "inproc" && summary.transport == "zmq")
        #expect(memory.peers.map(\.test_top1) == summary.peers.map(\.test_top1) && memory.ensemble_top1 == summary.ensemble_top1)
        #expect(memory.teacher_top1 == summary.teacher_top1)
        for rank in 0..<3 {
            for file in ["last.safetensors", "epoch-0001.safetensors", "epoch-0002.state.safetensors", "step-000004.state.safetensors"] {
                try expectIdentical(directory + "/inproc/peer-\(rank)/checkpoints/" + file, directory + "/zmq/peer-\(rank)/checkpoints/" + file)
            }
            let state = try SafeTensors.read(directory + "/zmq/peer-\(rank)/checkpoints/epoch-0002.state.safetensors")
            for key in ["auxiliary_classifier.fc2.weight", "loss.mcl_head_aux2.proj_head.2.weight", "momentum.auxiliary_classifier.fc1.weight"] {
                #expect(state.entry(key) != nil, "\(key)")
            }
            #expect(state.names.contains { $0.hasPrefix("loss.crcd") } && state.names.contains { $0.hasPrefix("loss.rrd") }, "\(state.names)")
        }
        // Both write the coordinator's states: a run of either kind resumes the same way.
        for run in ["inproc", "zmq"] {
            let (states, skipped) = CoordinatorState.readable(output: directory + "/" + run)
            #expect(skipped.isEmpty && states.last?.globalStep == 6 && states.last?.evaluatedEpochs == 2, "\(run)")
        }
    }
}
