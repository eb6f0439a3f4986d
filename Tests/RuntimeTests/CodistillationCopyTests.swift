import Foundation
import Testing
import Tensors
import NN
import Training
import TestSupport
import Wire
@testable import Data
@testable import Runtime

/// Codistillation's copies: a peer's published weights, loaded into a copy of that peer, give the peer's
/// own outputs; what does not fit is refused whole; every architecture's names fit the wire's bound.
@Suite struct CodistillationCopyTests {
    static func configuration(_ models: [String]) throws -> CohortConfiguration {
        try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist}
            seed: 3
            batch_size: 16
            peers: [\(models.map { "{model: \($0)}" }.joined(separator: ", "))]
            mcl: {embedding_dim: 8, layer_weights: [1, 1, 1]}
            network: {exchange: mesh}
            codistillation: {every: 2}
            """)
    }

    @Test func aCopyLoadedWithAPeersWeightsComputesThatPeersOutputs() throws {
        let c = try Self.configuration(["resnet8", "resnet8"])
        let peer = PeerTrainer(rank: 0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1)
        let copy = PeerTrainer(rank: 1, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1)
        let batch = LayerWiseMCLTests.batch()
        // Train the peer a step so its weights and running statistics are its own.
        _ = peer.forward(batch)
        _ = try peer.finish(others: [], teacher: nil, position: TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0), totalSteps: 1)
        let before = copy.copyOutputs(batch)
        try copy.loadPublished(peer.publishedWeights())
        let own = peer.copyOutputs(batch), copied = copy.copyOutputs(batch)
        #expect(copied.logits == own.logits && copied.embedding == own.embedding && copied.auxiliaryEmbeddings == own.auxiliaryEmbeddings)
        #expect(before.logits != own.logits)
        #expect(copy.pending == nil && peer.pending == nil, "nothing kept for a backward pass")
        // The running statistics travel too (evaluation-mode outputs agree).
        peer.model.eval(); copy.model.eval()
        #expect(peer.model.forward(batch.imageTensor()).1.scalars == copy.model.forward(batch.imageTensor()).1.scalars)
    }

    @Test func weightsThatDoNotFitAreRefusedAndChangeNothing() throws {
        let c = try Self.configuration(["resnet8", "resnet14"])
        let resnet14 = PeerTrainer(rank: 1, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1)
        let copy = PeerTrainer(rank: 0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1)
        let batch = LayerWiseMCLTests.batch()
        let before = copy.copyOutputs(batch).logits
        #expect(throws: StateDictError.self) { try copy.loadPublished(resnet14.publishedWeights()) }
        var weights = PeerTrainer(rank: 0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1).publishedWeights()
        weights[0] = TensorPayload(name: weights[0].name, shape: [1], values: [0])
        #expect(throws: StateDictError.self) { try copy.loadPublished(weights) }
        #expect(throws: StateDictError.self) { try copy.loadPublished(Array(weights.dropLast())) }
        #expect(copy.copyOutputs(batch).logits == before)
    }

    @Test func everyArchitecturesNamesFitTheWire() throws {
        for name in Architecture.allCases.map(\.rawValue) {
            let c = try Self.configuration([name, "resnet8"])
            let names = PeerTrainer(rank: 0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1).publishedWeights().map(\.name)
            let longest = names.map(\.utf8.count).max()!
            #expect(longest <= HeaderBounds.maximumTensorNameBytes, "\(name): \(names.first { $0.utf8.count == longest }!)")
        }
    }
}
