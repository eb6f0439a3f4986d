import Foundation
import Testing
import Tensors
import NN
import Distill
import Training
import TestSupport
@testable import Data
@testable import Runtime

/// Layer-wise MCL (issue 10): auxiliary branches on every peer, MCL between the same layer of every pair.
@Suite struct LayerWiseMCLTests {
    static let configuration = """
        data: {dataset: fashion-mnist}
        seed: 11
        batch_size: 16
        peers: [{model: resnet8}, {model: resnet14}, {model: wrn_16_2}]
        mcl: {embedding_dim: 32, layer_weights: [0.5, 2.0, 1.5]}
        """

    /// A batch of 16 random 1x16x16 images, two of each of 8 classes (as the m-per-class sampler gives).
    static func batch() -> Batch {
        let labels = (0..<16).map { $0 % 8 }
        let images = randn([16, 1, 16, 16], seed: 7).scalars
        return Batch(epoch: 0, step: 0, indices: Array(0..<16), labels: labels, images: images, shape: [16, 1, 16, 16])
    }

    /// Issue 10, "must show" 1: for 3 peers with auxiliary branches, the gradient each peer computes for its
    /// own parameters (backbone, branches, every projection head) from the others' exchanged outputs equals
    /// the gradient of the joint loss — every network's cross-entropies (backbone and branches), the
    /// logit distillation and, at each layer, the layer's weight times the joint MCL terms over the
    /// peers' embeddings at that layer — computed in one graph.
    @Test func perPeerGradientsEqualTheJointLossGradient() throws {
        let c = try CohortConfiguration.parse(Self.configuration)
        #expect(c.layerWiseMCL)
        let peers = (0..<3).map { PeerTrainer(rank: $0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1) }
        let batch = Self.batch()
        let labels = batch.labels
        let settings = c.mcl.settings
        let weights = c.mcl.layerWeights!
        // Every trainable parameter of a peer: the optimizer's list (backbone, branches, heads).
        for p in peers {
            let names = p.optimizer.parameters.map(\.0)
            #expect(names.contains("auxiliary_classifier.fc2.weight") && names.contains("loss.mcl_head_aux1.proj_head.0.weight")
                    && names.contains("fc.weight"))
        }

        // Joint: one graph over the whole cohort.
        var finals: [Tensor] = [], logits: [Tensor] = [], layers: [[Tensor]] = [[], []]
        var joint = Tensor(scalar: 0)
        for p in peers {
            p.model.train(); p.auxiliary!.train()
            let (stages, feature, l) = p.model.forwardWithStages(batch.imageTensor())
            finals.append(p.head!(feature))
            logits.append(l)
            joint = joint + l.crossEntropy(labels: labels)
            for (i, branch) in p.auxiliary!(stages).enumerated() {
                layers[i].append(p.auxiliaryHeads[i](branch.feature))
                joint = joint + branch.logits.crossEntropy(labels: labels)
            }
        }
        let mean = MCL.ensembleMean(logits)
        for l in logits {
            joint = joint + MCL.ensembleDistillation(logits: l, ensembleMean: mean, temperature: settings.temperature) * settings.logitDistillation
        }
        joint = joint + MCL.jointTerms(embeddings: finals, labels: labels, settings: settings).weighted(settings) * weights[2]
        for i in 0..<2 {
            joint = joint + MCL.jointTerms(embeddings: layers[i], labels: labels, settings: settings).weighted(settings) * weights[i]
        }
        for p in peers { p.optimizer.zeroGrad() }
        joint.backward()
        let expected = peers.map { p in p.optimizer.parameters.map { $0.1.grad!.scalars } }

        // Per peer: each runs its forward pass, the outputs are exchanged as plain values, and each forms
        // its own loss with the others' outputs as constants.
        let outputs = peers.map { $0.forward(batch) }
        #expect(outputs.allSatisfy { $0.auxiliaryEmbeddings.count == 2 && $0.auxiliaryEmbeddings[1].count == 16 * 32 })
        for p in peers {
            p.optimizer.zeroGrad()
            let position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
            let (total, terms) = p.loss(p.pending!, others: outputs.filter { $0.rank != p.rank }, teacher: nil, position: position, totalSteps: 1)
            for term in ["ce", "ce_aux1", "ce_aux2", "vcl", "soft_icl", "mcl_aux1", "mcl_aux2", "logit_kd"] {
                #expect(terms[term] != nil, "\(term)")
            }
            total.backward()
            var compared = 0
            for ((name, parameter), reference) in zip(p.optimizer.parameters, expected[p.rank]) {
                let scale = max(reference.map(abs).max() ?? 0, 1e-4)
                #expect(maxDifference(parameter.grad!.scalars, reference) <= 2e-4 * scale, "peer \(p.rank) \(name)")
                if reference.contains(where: { $0 != 0 }) { compared += 1 }
            }
            #expect(compared > p.optimizer.parameters.count / 2, "peer \(p.rank): most gradients are non-zero")
        }
    }

    /// The per-layer weights reach the loss: a branch weighted 0 gives its head no gradient, and the
    /// auxiliary heads' gradients scale with their layer's weight.
    @Test func layerWeightsScaleTheirLayer() throws {
        func auxiliaryHeadGradient(_ weights: String) throws -> (aux1: [Float], aux2: [Float]) {
            let text = Self.configuration.replacingOccurrences(of: "[0.5, 2.0, 1.5]", with: weights)
            let c = try CohortConfiguration.parse(text)
            let peers = (0..<3).map { PeerTrainer(rank: $0, configuration: c, dataCount: 16, teacherFeatureCount: nil, stepsPerEpoch: 1) }
            let outputs = peers.map { $0.forward(Self.batch()) }
            let p = peers[0]
            p.optimizer.zeroGrad()
            let position = TrainingPosition(epoch: 0, stepInEpoch: 0, globalStep: 0, elapsedSeconds: 0)
            p.loss(p.pending!, others: Array(outputs.dropFirst()), teacher: nil, position: position, totalSteps: 1).total.backward()
            return (p.auxiliaryHeads[0].second.weight.grad?.scalars ?? [], p.auxiliaryHeads[1].second.weight.grad?.scalars ?? [])
        }
        let unit = try auxiliaryHeadGradient("[1, 1, 1]")
        let scaled = try auxiliaryHeadGradient("[0, 3, 1]")
        #expect(unit.aux1.contains { $0 != 0 })
        #expect(scaled.aux1.isEmpty || scaled.aux1.allSatisfy { $0 == 0 }, "layer 1 weighted 0")
        let tripled = unit.aux2.map { 3 * $0 }
        #expect(tripled.contains { $0 != 0 } && scaled.aux2.count == tripled.count)
        #expect(maxDifference(scaled.aux2, tripled) <= 1e-5 * (tripled.map(abs).max() ?? 0), "layer 2 weighted 3")
    }

    @Test func configurationNamesTheKeyAndTheCount() throws {
        #expect(throws: ConfigurationError.self) { try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet8}]\nmcl: {layer_weights: [1, 1]}") }
        do {
            _ = try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet8}]\nmcl: {layer_weights: [1, 1]}")
        } catch {
            #expect("\(error)".contains("mcl.layer_weights") && "\(error)".contains("3 weights"), "\(error)")
        }
        let plain = try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet8}]")
        let layered = try CohortConfiguration.parse("peers: [{model: resnet8}, {model: resnet8}]\nmcl: {layer_weights: [1, 1, 1]}")
        #expect(!plain.layerWiseMCL && layered.layerWiseMCL)
        #expect(!plain.canonicalSettings.contains("layer_weights") && layered.canonicalSettings.contains("mcl.layer_weights=1.0,1.0,1.0\n"))
        #expect(plain.digest != layered.digest)
        #expect(layered.outputLayout.expected(batchSize: 8).map(\.name) == ["embedding.aux1", "embedding.aux2", "embedding", "logits"])
        #expect(plain.outputLayout.expected(batchSize: 8).map(\.name) == ["embedding", "logits"])
        // Turning layer-wise MCL on leaves the backbone's and the final head's initial weights as they were.
        let a = PeerTrainer(rank: 1, configuration: plain, dataCount: 8, teacherFeatureCount: nil, stepsPerEpoch: 1)
        let b = PeerTrainer(rank: 1, configuration: layered, dataCount: 8, teacherFeatureCount: nil, stepsPerEpoch: 1)
        #expect(a.model.stateDict().map(\.1.scalars) == b.model.stateDict().map(\.1.scalars))
        #expect(a.head!.stateDict().map(\.1.scalars) == b.head!.stateDict().map(\.1.scalars))
        #expect(a.auxiliary == nil && b.auxiliary != nil && b.auxiliaryHeads.count == 2)
    }

    /// A short layer-wise cohort on Fashion-MNIST: every term is logged, the exported weights are the
    /// backbone's alone (they load into a plain network), the state file holds the branches, their heads
    /// and their momentum, and a fresh peer restored from it holds exactly that state.
    @Test func inProcessCohortCheckpointsTheBranchesWithTheState() throws {
        let out = NSTemporaryDirectory() + "cohort-layerwise-\(getpid())"
        try? FileManager.default.removeItem(atPath: out)
        let c = try CohortConfiguration.parse("""
            data: {dataset: fashion-mnist, train_limit: 256, test_limit: 100}
            epochs: 1
            batch_size: 64
            peers: [{model: resnet8}, {model: wrn_16_2}]
            mcl: {embedding_dim: 32, layer_weights: [1, 1, 1]}
            output: \(out)
            """)
        let summary = try InProcessCohort(configuration: c).run(progress: ProgressReporter(interactive: false))
        #expect(summary.steps == 4 && summary.peers.allSatisfy { $0.test_top1 > 0 })
        let first = try String(contentsOfFile: out + "/peer-1/metrics.jsonl", encoding: .utf8).split(separator: "\n")[0]
        for term in ["ce_aux1", "ce_aux2", "mcl_aux1", "mcl_aux2", "vcl", "logit_kd"] { #expect(first.contains("\"\(term)\""), "\(term)") }
        let weights = try SafeTensors.read(out + "/peer-1/checkpoints/last.safetensors")
        let plain = Architecture.wrn_16_2.make(inputChannels: 1, classCount: 10, seed: 0)
        #expect(weights.names.filter { !$0.hasSuffix("num_batches_tracked") }.sorted() == plain.stateDict().map(\.0).sorted(),
                "the backbone's keys, nothing else")
        try plain.load(weights)
        let state = try SafeTensors.read(out + "/peer-1/checkpoints/epoch-0001.state.safetensors")
        for key in ["auxiliary_classifier.block_extractor1.0.layer.0.bn1.running_mean", "auxiliary_classifier.bn2.weight",
                    "loss.mcl_head_aux1.proj_head.0.weight", "momentum.auxiliary_classifier.fc2.weight"] {
            #expect(state.entry(key) != nil, "\(key)")
        }
        let fresh = PeerTrainer(rank: 1, configuration: c, dataCount: 256, teacherFeatureCount: nil, stepsPerEpoch: 4)
        try fresh.restore(weights: weights, state: state)
        for (name, tensor) in fresh.auxiliary!.stateDict() {
            #expect(tensor.scalars == (try state.floats("auxiliary_classifier." + name)).scalars, "\(name)")
        }
        #expect(fresh.auxiliaryHeads[1].second.weight.scalars == (try state.floats("loss.mcl_head_aux2.proj_head.2.weight")).scalars)
    }

    /// The two example configurations of the comparison differ only in `mcl.layer_weights` (and output).
    @Test func exampleConfigurationsDifferOnlyInTheLayerWeights() throws {
        let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("docs/examples").path
        var plain = try CohortConfiguration.load(path: docs + "/mcl.yaml")
        var layered = try CohortConfiguration.load(path: docs + "/layer-mcl.yaml")
        #expect(!plain.layerWiseMCL && layered.layerWiseMCL)
        plain.output = ""; layered.output = ""
        layered.mcl.layerWeights = nil
        #expect(plain == layered)
    }
}
