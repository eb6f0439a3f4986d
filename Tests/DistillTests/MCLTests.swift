import Testing
import Tensors
import NN
import TestSupport
@testable import Distill

@Suite struct MCLTests {
    /// Issue: "for a 3-member cohort on one batch, the gradient each peer computes for its own parameters
    /// equals the gradient of the joint MCL loss (sum over all pairs, computed in one graph)".
    /// Each member: a classifier and a projection head on a feature; all four MCL terms and the logit
    /// distillation towards the ensemble.
    @Test func perPeerGradientsEqualTheJointLossGradient() throws {
        let members = 3, batch = 12, classes = 4
        let labels = (0..<batch).map { $0 % classes }
        let settings = MCL.Settings()
        var generator = SeededGenerator(seed: 21)
        let features = [randn([batch, 10], seed: 1), randn([batch, 14], seed: 2), randn([batch, 10], seed: 3)]
        let heads = features.map { ProjectionHead(inputCount: $0.shape[1], dimension: 16, generator: &generator) }
        let classifiers = features.map { Linear(inputCount: $0.shape[1], outputCount: classes, generator: &generator) }
        func parameters(_ i: Int) -> [Tensor] {
            [features[i]] + heads[i].namedParameters().map(\.1) + classifiers[i].namedParameters().map(\.1)
        }
        for i in 0..<members { for p in parameters(i) { p.requiresGrad = true } }

        // Joint: one graph over every member.
        let embeddings = (0..<members).map { heads[$0](features[$0]) }
        let logits = (0..<members).map { classifiers[$0](features[$0]) }
        let mean = MCL.ensembleMean(logits)
        var joint = MCL.jointTerms(embeddings: embeddings, labels: labels, settings: settings).weighted(settings)
        for l in logits {
            joint = joint + l.crossEntropy(labels: labels)
                + MCL.ensembleDistillation(logits: l, ensembleMean: mean, temperature: settings.temperature) * settings.logitDistillation
        }
        joint.backward()
        let jointGradients = (0..<members).map { i in parameters(i).map { $0.grad!.scalars } }
        for i in 0..<members { for p in parameters(i) { p.grad = nil } }

        // Per peer: own graph, the others' embeddings and logits as received values.
        let sent = withNoGrad { (0..<members).map { (heads[$0](features[$0]).copy(), classifiers[$0](features[$0]).copy()) } }
        let received = MCL.ensembleMean(sent.map(\.1))
        for i in 0..<members {
            let own = heads[i](features[i]), ownLogits = classifiers[i](features[i])
            let others = (0..<members).filter { $0 != i }.map { sent[$0].0 }
            let loss = MCL.peerTerms(own: own, others: others, labels: labels, settings: settings).weighted(settings)
                + ownLogits.crossEntropy(labels: labels)
                + MCL.ensembleDistillation(logits: ownLogits, ensembleMean: received, temperature: settings.temperature)
                    * settings.logitDistillation
            loss.backward()
            for (p, expected) in zip(parameters(i), jointGradients[i]) {
                let scale = max(expected.map(abs).max() ?? 0, 1e-3)
                #expect(maxDifference(p.grad!.scalars, expected) <= 1e-5 * scale, "member \(i)")
            }
        }
    }

    @Test func contrastiveTermMatchesItsDefinition() {
        let labels = [0, 1, 0, 1, 1]
        let logits = randn([5, 5], seed: 4, std: 3)
        let value = MCL.contrastiveTerm(logits, positiveWeights: MCL.positiveWeights(labels: labels)).item
        var expected: Double = 0
        for a in 0..<5 {
            var denominator = 0.0
            for c in 0..<5 where c != a { denominator += exp(Double(logits.data[a * 5 + c])) }
            let positives = (0..<5).filter { $0 != a && labels[$0] == labels[a] }
            expected += positives.map { Double(logits.data[a * 5 + $0]) - log(denominator) }.reduce(0, +) / Double(positives.count)
        }
        #expect(abs(Double(value) + expected / 5) < 1e-5)
    }

    @Test func projectionHeadGradientAndKeys() {
        var generator = SeededGenerator(seed: 5)
        let head = ProjectionHead(inputCount: 6, dimension: 8, generator: &generator)
        #expect(head.stateDict().map(\.0) == ["proj_head.0.weight", "proj_head.0.bias", "proj_head.2.weight", "proj_head.2.bias"])
        let x = randn([4, 6], seed: 6)
        for i in 0..<x.count where abs(x.data[i]) < 0.05 { x.data[i] = 0.2 }
        expectGradients([x]) { head($0[0]) }
        let e = head(x).scalars
        for r in 0..<4 {
            let norm: Float = e[(r * 8)..<(r * 8 + 8)].map { $0 * $0 }.reduce(0, +)
            #expect(abs(norm - 1) < 1e-5)
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
