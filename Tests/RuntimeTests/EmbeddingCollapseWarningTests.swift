import Foundation
import Testing
import Tensors
import NN
import Distill
import Training
import TestSupport
@testable import Data
@testable import Runtime

/// Issue 21: every peer records the mean pairwise cosine of its embeddings per step and warns once when
/// they have collapsed.
@Suite struct EmbeddingCollapseWarningTests {
    static func configuration(layerWise: Bool = false) throws -> CohortConfiguration {
        try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist}
            seed: 5
            batch_size: 16
            optimizer: {lr: 1.0e-9}
            peers: [{model: resnet8}, {model: resnet8}]
            mcl: {embedding_dim: 16\(layerWise ? ", layer_weights: [1, 1, 1]" : "")}
            """)
    }

    /// Distinct random images, two of each of 8 classes.
    static func batch(_ step: Int) -> Batch {
        let labels = (0..<16).map { $0 % 8 }
        return Batch(epoch: 0, step: step, indices: Array(0..<16), labels: labels,
                     images: randn([16, 1, 16, 16], seed: UInt64(100 + step)).scalars, shape: [16, 1, 16, 16])
    }

    /// Runs `steps` steps of the two peers; returns each step's terms and every warning, per peer.
    static func train(_ peers: [PeerTrainer], steps: Int) throws -> (terms: [[[String: Double]]], warnings: [[String]]) {
        var terms: [[[String: Double]]] = [[], []], warnings: [[String]] = [[], []]
        for step in 0..<steps {
            let batch = batch(step)
            let outputs = peers.map { $0.forward(batch) }
            for p in peers {
                let position = TrainingPosition(epoch: 0, stepInEpoch: step, globalStep: step, elapsedSeconds: 0)
                terms[p.rank].append(try p.finish(others: outputs.filter { $0.rank != p.rank }, teacher: nil, position: position,
                                                  totalSteps: steps))
                warnings[p.rank] += p.takeWarnings()
            }
        }
        return (terms, warnings)
    }

    @Test func aCollapsedHeadWarnsOnceAndAHealthyOneNever() throws {
        let c = try Self.configuration()
        let peers = (0..<2).map { PeerTrainer(rank: $0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1000) }
        // Peer 1's head collapsed: its last layer ignores its input, so every embedding is the bias's direction.
        let second = peers[1].head!.second
        second.weight.data.update(repeating: 0, count: second.weight.count)
        for k in 0..<second.bias!.count { second.bias!.data[k] = Float(k % 3) - 0.7 }
        let steps = EmbeddingCollapse.Watch.patience + 10
        let (terms, warnings) = try Self.train(peers, steps: steps)
        for step in 0..<steps {
            #expect(terms[1][step]["embedding_cosine"]! > 0.999)
            #expect(terms[0][step]["embedding_cosine"]! < 0.99)
        }
        #expect(warnings[0].isEmpty)
        #expect(warnings[1].count == 1)
        #expect(warnings[1].first?.contains("peer 1's embedding has collapsed") == true)
    }

    @Test func layerWiseBranchesAreWatchedToo() throws {
        let c = try Self.configuration(layerWise: true)
        let peers = (0..<2).map { PeerTrainer(rank: $0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1000) }
        let second = peers[0].auxiliaryHeads[1].second
        second.weight.data.update(repeating: 0, count: second.weight.count)
        for k in 0..<second.bias!.count { second.bias!.data[k] = 1 }
        let (terms, warnings) = try Self.train(peers, steps: EmbeddingCollapse.Watch.patience)
        let last = terms[0].last!
        #expect(last["embedding_cosine_aux2"]! > 0.999)
        #expect(last["embedding_cosine_aux1"]! < 0.99 && last["embedding_cosine"]! < 0.99)
        #expect(warnings[0] == [warnings[0].first].compactMap { $0 })
        #expect(warnings[0].first?.contains("peer 0's auxiliary branch 2 embedding has collapsed") == true)
        #expect(warnings[1].isEmpty)
    }

    @Test func theSoftTermsRampInLinearly() throws {
        var c = try Self.configuration()
        #expect(c.mcl.softRampFactor(step: 0, stepsPerEpoch: 10) == 1)
        c = try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet8}]\nmcl: {soft_ramp_epochs: 2}\n")
        #expect(c.mcl.softRampEpochs == 2)
        #expect(c.mcl.softRampFactor(step: 0, stepsPerEpoch: 10) == 0)
        #expect(c.mcl.softRampFactor(step: 5, stepsPerEpoch: 10) == 0.25)
        #expect(c.mcl.softRampFactor(step: 20, stepsPerEpoch: 10) == 1)
        #expect(c.mcl.softRampFactor(step: 99, stepsPerEpoch: 10) == 1)
        #expect(c.canonicalSettings.contains("mcl.soft_ramp_epochs=2.0\n"))
    }
}
