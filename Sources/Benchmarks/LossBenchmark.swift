import Foundation
import Tensors
import NN
import Distill

/// Times one call (forward and backward) of a distillation loss at the official sizes.
public struct LossBenchmark: Sendable {
    public enum Kind: String, CaseIterable, Sendable { case crcd, rrd, mcl }
    public var kind: Kind
    public var batch = 128
    public var threads = 1
    public var steps = 10

    public init(kind: Kind, batch: Int = 128, threads: Int = 1, steps: Int = 10) {
        self.kind = kind; self.batch = batch; self.threads = threads; self.steps = steps
    }

    public struct Result: Codable, Sendable {
        public var benchmark = "loss"
        public let loss: String
        public let configuration: String
        public let batch: Int
        public let threads: Int
        public let ms_per_call: Double
        public let peak_rss_mb: Double
    }

    public func run() -> Result {
        Parallelism.setThreadCount(threads)
        var g = SeededGenerator(seed: 1)
        let call: () -> Void
        let description: String
        switch kind {
        case .crcd:
            // CRCD as the reference trains it: the feature relation and the gradient-element relation, each
            // B=128, K=500, d=128; student resnet20 (64-d features), teacher resnet32x4 (256-d), 10 classes,
            // 50,000 samples.
            let feature = CRCDLoss(studentDimension: 64, teacherDimension: 256, dimension: 128, dataCount: 50_000, negatives: 500,
                                   generator: &g)
            let gradient = CRCDLoss(studentDimension: 64, teacherDimension: 256, dimension: 128, dataCount: 50_000, negatives: 500,
                                    generator: &g)
            let fs = Tensor.randomNormal([batch, 64], using: &g, requiresGrad: true)
            let ft = Tensor.randomNormal([batch, 256], using: &g)
            let weight = Tensor.randomNormal([10, 64], using: &g, requiresGrad: true)
            let bias = Tensor.zeros([10], requiresGrad: true)
            let teacherWeight = Tensor.randomNormal([10, 256], using: &g)
            let labels = (0..<batch).map { $0 % 10 }
            let gt = gradientElement(feature: ft, weight: teacherWeight, bias: nil, labels: labels)
            var step = 0
            call = {
                var r = SeededGenerator(seed: UInt64(step)); step += 1
                let indices = (0..<batch).map { (step * batch + $0) % 50_000 }
                feature.zeroGrad(); gradient.zeroGrad(); fs.grad = nil; weight.grad = nil; bias.grad = nil
                let gs = gradientElement(feature: fs, weight: weight, bias: bias, labels: labels)
                let loss = feature(student: fs, teacher: ft, indices: indices, contrastIndices: feature.contrastIndices(for: indices, using: &r))
                    + gradient(student: gs, teacher: gt, indices: indices, contrastIndices: gradient.contrastIndices(for: indices, using: &r))
                loss.backward()
            }
            description = "B=\(batch) K=500 d=128, feature + gradient-element relations, forward+backward"
        case .rrd:
            let loss = RRDQueueLoss(studentDimension: 64, teacherDimension: 256, dimension: 128, keys: 16384, generator: &g)
            let fs = Tensor.randomNormal([batch, 64], using: &g, requiresGrad: true)
            let ft = Tensor.randomNormal([batch, 256], using: &g)
            call = { loss.zeroGrad(); fs.grad = nil; loss(student: fs, teacher: ft).backward() }
            description = "B=\(batch) K=16384 d=128, forward+backward"
        case .mcl:
            var heads: [ProjectionHead] = []
            for _ in 0..<4 { heads.append(ProjectionHead(inputCount: 64, dimension: 128, generator: &g)) }
            let features = (0..<4).map { _ in Tensor.randomNormal([batch, 64], using: &g, requiresGrad: true) }
            let labels = (0..<batch).map { $0 % 10 }
            call = {
                let embeddings = zip(heads, features).map { $0($1) }
                let others = embeddings.dropFirst().map { $0.copy() }
                MCL.peerTerms(own: embeddings[0], others: Array(others), labels: labels).weighted(MCL.Settings()).backward()
            }
            description = "one peer of 4, B=\(batch) d=128, heads + VCL/ICL/soft, forward+backward"
        }
        let median = Timing.medianMilliseconds(warmup: 1, repetitions: steps, call)
        return Result(loss: kind.rawValue, configuration: description, batch: batch, threads: threads,
                      ms_per_call: (median * 100).rounded() / 100,
                      peak_rss_mb: (ProcessInfo.peakResidentMegabytes * 10).rounded() / 10)
    }
}
