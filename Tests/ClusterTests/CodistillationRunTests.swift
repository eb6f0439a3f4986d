import Foundation
import Testing
import TestSupport
import Cluster
import NN
import Tensors
import Training
import Runtime
import Wire

/// Codistillation end to end: in one process (deterministic: the peers take turns) and as a coordinator
/// with peers over ZeroMQ, where each peer trains at its own pace on copies of the others refreshed with
/// the weights they publish.
@Suite(.serialized) struct CodistillationRunTests {
    static func configuration(_ output: String) throws -> CohortConfiguration {
        var c = try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 200}
            seed: 5
            epochs: 2
            batch_size: 64
            peers: [{model: resnet8}, {model: resnet14}]
            mcl: {embedding_dim: 16, layer_weights: [1.0, 0.5, 1.0]}
            codistillation: {every: 3}
            checkpoint_every: 2
            network: {exchange: mesh, coordinator: "tcp://127.0.0.1:*", stream: "tcp://127.0.0.1:*", timeout: 60, join_timeout: 60}
            """)
        c.output = output
        return c
    }

    /// The steps' `copies_staleness_steps`: how many steps each peer's copies were behind it, on average.
    static func staleness(_ output: String, rank: Int) throws -> [Double] {
        try jsonLines(output + "/peer-\(rank)/metrics.jsonl").filter { $0["kind"] as? String == "step" }.compactMap { $0["copies_staleness_steps"] as? Double }
    }

    @Test func inOneProcessItIsDeterministicAndLearnsFromThePublishedWeights() throws {
        let directory = scratch("codistill-inproc")
        var summaries: [CohortSummary] = []
        for run in ["a", "b"] {
            summaries.append(try Parallelism.withThreadCount(1) {
                try InProcessCohort(configuration: try Self.configuration(directory + "/" + run)).run(progress: ProgressReporter(interactive: false))
            })
        }
        #expect(summaries.allSatisfy { $0.steps == 8 } && summaries[0].peers.map(\.test_top1) == summaries[1].peers.map(\.test_top1))
        for rank in 0..<2 {
            try expectIdentical(directory + "/a/peer-\(rank)/checkpoints/last.safetensors", directory + "/b/peer-\(rank)/checkpoints/last.safetensors")
            // The peers take turns in one process: the copies are refreshed every few steps.
            let stale = try Self.staleness(directory + "/a", rank: rank)
            #expect(stale.count == 8 && stale.max()! <= 2 * 3 && stale.enumerated().contains { $0.element < Double($0.offset) }, "\(stale)")
            #expect(FileManager.default.fileExists(atPath: directory + "/a/peer-\(rank)/checkpoints/step-000006.safetensors"))
        }
        // The same cohort with every step's outputs exchanged trains other weights.
        var synchronous = try Self.configuration(directory + "/sync")
        synchronous.codistillation = nil
        _ = try Parallelism.withThreadCount(1) { try InProcessCohort(configuration: synchronous).run(progress: ProgressReporter(interactive: false)) }
        let a = try SafeTensors.read(directory + "/a/peer-0/checkpoints/last.safetensors")
        let s = try SafeTensors.read(directory + "/sync/peer-0/checkpoints/last.safetensors")
        #expect(try a.floats("fc.weight").scalars != s.floats("fc.weight").scalars)
    }

    @Test func overZeroMQEachPeerTrainsOnTheCopiesTheOthersSend() throws {
        let directory = scratch("codistill-zmq")
        let configuration = try Self.configuration(directory + "/run")
        let summary = try TransportEquivalenceTests.runOverZeroMQ(configuration)
        #expect(summary.steps == 8 && summary.peers.count == 2 && summary.peers.allSatisfy { $0.test_top1 > 0 })
        for rank in 0..<2 {
            let stale = try Self.staleness(directory + "/run", rank: rank)
            #expect(stale.count == 8)
            // The first steps run against the other's initial weights (staleness = the step); once weights
            // come, the copies are fresher than that.
            #expect(stale.enumerated().contains { $0.element < Double($0.offset) }, "peer \(rank) never took the other's weights: \(stale)")
        }
        let stream = try String(contentsOfFile: directory + "/run/stream.jsonl", encoding: .utf8)
        #expect(!stream.contains("\"level\":\"warning\""), "nothing dropped, nobody lost")
        #expect(stream.contains("codistilling"))
    }
}
