import Testing
@testable import Tensors
import TestSupport

@Suite struct NormalizationTests {
    func statistics(_ c: Int) -> (Tensor, Tensor) { (Tensor.zeros([c]), Tensor(repeating: 1, shape: [c])) }

    @Test func batchNormTrainingGradient() {
        let (rm, rv) = statistics(3)
        expectGradients([randn([4, 3, 3, 5], seed: 1), uniform([3], 0.5, 1.5, seed: 2), randn([3], seed: 3)]) {
            $0[0].batchNorm(weight: $0[1], bias: $0[2], runningMean: rm, runningVariance: rv, training: true)
        }
    }

    @Test func batchNormEvaluationGradient() {
        let rm = randn([3], seed: 4), rv = uniform([3], 0.5, 2, seed: 5)
        expectGradients([randn([4, 3, 2, 2], seed: 6), uniform([3], 0.5, 1.5, seed: 7), randn([3], seed: 8)]) {
            $0[0].batchNorm(weight: $0[1], bias: $0[2], runningMean: rm, runningVariance: rv, training: false)
        }
    }

    @Test func batchNormOnRowsGradient() {
        let (rm, rv) = statistics(4)
        expectGradients([randn([6, 4], seed: 9), uniform([4], 0.5, 1.5, seed: 10), randn([4], seed: 11)]) {
            $0[0].batchNorm(weight: $0[1], bias: $0[2], runningMean: rm, runningVariance: rv, training: true)
        }
    }

    @Test func batchNormStatistics() {
        // One channel, values 1...4: mean 2.5, biased variance 1.25, unbiased 5/3.
        let x = Tensor([1, 2, 3, 4], shape: [2, 1, 1, 2])
        let rm = Tensor.zeros([1]), rv = Tensor(repeating: 1, shape: [1])
        let y = x.batchNorm(weight: Tensor(repeating: 1, shape: [1]), bias: Tensor.zeros([1]),
                            runningMean: rm, runningVariance: rv, training: true, momentum: 0.1, epsilon: 0)
        let s = 1 / Float(1.25).squareRoot()
        #expect(maxDifference(y.scalars, [-1.5 * s, -0.5 * s, 0.5 * s, 1.5 * s]) < 1e-6)
        #expect(abs(rm.item - 0.25) < 1e-7)
        #expect(abs(rv.item - (0.9 + 0.1 * 5 / 3)) < 1e-6)
    }

    @Test func globalAveragePoolGradient() {
        expectGradients([randn([2, 3, 4, 5], seed: 12)]) { $0[0].globalAveragePool() }
    }
}

@Suite struct LossTests {
    @Test func crossEntropyGradient() {
        expectGradients([randn([5, 4], seed: 1, std: 2)]) { $0[0].crossEntropy(labels: [0, 3, 1, 1, 2]) }
    }

    @Test func crossEntropyValue() {
        let logits = Tensor([0, 0, Float(logf(3)), 0], shape: [2, 2])
        // Row 0: uniform over 2 -> log 2; row 1: p(label 0) = 3/4 -> -log(3/4).
        let loss = logits.crossEntropy(labels: [1, 0]).item
        #expect(abs(loss - (logf(2) - logf(0.75)) / 2) < 1e-6)
    }

    @Test func klDivergenceGradient() {
        let target = randn([4, 6], seed: 2, std: 2)
        expectGradients([randn([4, 6], seed: 3, std: 2)]) { $0[0].klDivergence(target: target, temperature: 3) }
    }

    @Test func klDivergenceIsZeroAtTargetAndScalesWithTemperature() {
        let x = randn([3, 5], seed: 4)
        #expect(abs(x.klDivergence(target: x, temperature: 4).item) < 1e-6)
        let y = randn([3, 5], seed: 5)
        // T^2 / B * sum p (log p - log q), computed directly.
        let t: Float = 2
        let p = (y * (1 / t)).softmax().scalars, logQ = (x * (1 / t)).logSoftmax().scalars
        var expected: Float = 0
        for i in 0..<p.count { expected += p[i] * (logf(p[i]) - logQ[i]) }
        expected *= t * t / 3
        #expect(abs(x.klDivergence(target: y, temperature: t).item - expected) < 1e-5)
    }
}

#if canImport(Glibc)
import Glibc
#endif

@Suite struct FusedOpTests {
    @Test func batchNormReLUGradient() {
        let rm = Tensor.zeros([3]), rv = Tensor(repeating: 1, shape: [3])
        // Shift the inputs so that few normalised values sit near the ReLU's kink.
        let x = randn([4, 3, 3, 3], seed: 21)
        expectGradients([x, uniform([3], 0.5, 1.5, seed: 22), uniform([3], 0.3, 0.6, seed: 23)],
                        check: GradientCheck(step: 1e-3, relativeTolerance: 2e-2, absoluteTolerance: 2e-3)) {
            $0[0].batchNormReLU(weight: $0[1], bias: $0[2], runningMean: rm, runningVariance: rv, training: true)
        }
    }

    @Test func batchNormReLUEqualsTheTwoOps() {
        let x = randn([3, 4, 5, 5], seed: 24), w = uniform([4], 0.5, 1.5, seed: 25), b = randn([4], seed: 26)
        for training in [true, false] {
            let fused = x.batchNormReLU(weight: w, bias: b, runningMean: Tensor.zeros([4]),
                                        runningVariance: Tensor(repeating: 1, shape: [4]), training: training)
            let separate = x.batchNorm(weight: w, bias: b, runningMean: Tensor.zeros([4]),
                                       runningVariance: Tensor(repeating: 1, shape: [4]), training: training).relu()
            #expect(maxDifference(fused.scalars, separate.scalars) == 0)
        }
    }

    @Test func addingReLUGradientAndValues() {
        let a = randn([4, 5], seed: 27), b = randn([4, 5], seed: 28)
        for i in 0..<a.count where abs(a.data[i] + b.data[i]) < 0.05 { a.data[i] += 0.2 }
        expectGradients([a, b]) { $0[0].addingReLU($0[1]) }
        #expect(a.addingReLU(b).scalars == (a + b).relu().scalars)
    }
}
