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

    /// Planes of 35 values: the statistics' and the backward pass's 16-wide loops, their 8-wide step and a
    /// scalar tail all run (the test above has 15).
    @Test func batchNormTrainingGradientOnWidePlanes() {
        let (rm, rv) = statistics(2)
        expectGradients([randn([3, 2, 5, 7], seed: 41), uniform([2], 0.5, 1.5, seed: 42), randn([2], seed: 43)]) {
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

    /// The fused ReLU's backward pass finds its mask from the input: the same gradients, bit for bit, as
    /// the two ops in sequence (which read the ReLU's output), with the plane not a multiple of 8 (the
    /// scalar tails) and values that land on the kink.
    @Test func batchNormReLUGradientsEqualTheTwoOps() {
        let x = randn([3, 4, 5, 3], seed: 29), w = uniform([4], 0.5, 1.5, seed: 30), b = randn([4], seed: 31)
        let seed = randn([3, 4, 5, 3], seed: 32)
        func gradients(_ fused: Bool) -> [[Float]] {
            let (xi, wi, bi) = (x.copy(), w.copy(), b.copy())
            for t in [xi, wi, bi] { t.requiresGrad = true }
            let (rm, rv) = (Tensor.zeros([4]), Tensor(repeating: 1, shape: [4]))
            let y = fused ? xi.batchNormReLU(weight: wi, bias: bi, runningMean: rm, runningVariance: rv, training: true)
                          : xi.batchNorm(weight: wi, bias: bi, runningMean: rm, runningVariance: rv, training: true).relu()
            y.backward(seed)
            return [y.scalars, xi.grad!.scalars, wi.grad!.scalars, bi.grad!.scalars]
        }
        #expect(gradients(true) == gradients(false))
    }

    /// `batchNormReLUConv2d` (the normalised tensor not kept, rebuilt in the backward pass) against
    /// `batchNormReLU` then `conv2d`: the same output, gradients of all five inputs and running statistics bit
    /// for bit, in training and evaluation, on every kernel path (forced in turn) and for the stride-1, the
    /// strided and the 1x1 convolutions — on odd planes (stride 2 lowered) and on even ones large enough for
    /// two shares of the batch (stride 2 in phase planes on the AVX2 and AVX-512 paths) — also with an input that needs no gradient
    /// (only the parameters' flow).
    @Test(arguments: [(3, 1, 1), (3, 2, 1), (1, 2, 0), (1, 1, 0)], [(3, 5, 9, 11, 6), (16, 16, 10, 12, 16)])
    func batchNormReLUConv2dEqualsTheTwoOps(_ geometry: (kernel: Int, stride: Int, padding: Int),
                                            _ sizes: (n: Int, c: Int, h: Int, w: Int, outputs: Int)) {
        let (n, c, h, w, outputs) = sizes
        let x = randn([n, c, h, w], seed: 51), gamma = uniform([c], 0.5, 1.5, seed: 52), beta = randn([c], seed: 53)
        let kernel = randn([outputs, c, geometry.kernel, geometry.kernel], seed: 54, std: 0.3)
        let bias = randn([outputs], seed: 55)
        let oh = (h + 2 * geometry.padding - geometry.kernel) / geometry.stride + 1
        let ow = (w + 2 * geometry.padding - geometry.kernel) / geometry.stride + 1
        let seed = randn([n, outputs, oh, ow], seed: 56)
        for path in Gemm.availablePaths {
            Gemm.withPath(path) {
                for training in [true, false] {
                    for inputNeedsGradient in [true, false] {
                        func run(_ fused: Bool) -> [[Float]] {
                            let (xi, gi, bi, ki, ci) = (x.copy(), gamma.copy(), beta.copy(), kernel.copy(), bias.copy())
                            for t in [gi, bi, ki, ci] { t.requiresGrad = true }
                            xi.requiresGrad = inputNeedsGradient
                            let rm = randn([c], seed: 57), rv = uniform([c], 0.5, 2, seed: 58)
                            let stride = (geometry.stride, geometry.stride), padding = (geometry.padding, geometry.padding)
                            let y = fused
                                ? xi.batchNormReLUConv2d(normWeight: gi, normBias: bi, runningMean: rm, runningVariance: rv,
                                                         training: training, convWeight: ki, convBias: ci, stride: stride,
                                                         padding: padding)
                                : xi.batchNormReLU(weight: gi, bias: bi, runningMean: rm, runningVariance: rv, training: training)
                                    .conv2d(weight: ki, bias: ci, stride: stride, padding: padding)
                            y.backward(seed)
                            return [y.scalars, xi.grad?.scalars ?? [], gi.grad!.scalars, bi.grad!.scalars, ki.grad!.scalars,
                                    ci.grad!.scalars, rm.scalars, rv.scalars]
                        }
                        let fused = run(true), separate = run(false)
                        #expect(fused == separate, "\(path), \(geometry), training \(training), input gradient \(inputNeedsGradient)")
                        #expect(fused[1].isEmpty != inputNeedsGradient)
                    }
                }
            }
        }
    }

    /// Its gradients against finite differences, with and without a convolution bias.
    @Test(arguments: [false, true]) func batchNormReLUConv2dGradient(_ withBias: Bool) {
        let rm = Tensor.zeros([3]), rv = Tensor(repeating: 1, shape: [3])
        var inputs = [randn([2, 3, 5, 4], seed: 61), uniform([3], 0.5, 1.5, seed: 62), uniform([3], 0.3, 0.6, seed: 63),
                      randn([4, 3, 3, 3], seed: 64, std: 0.3)]
        if withBias { inputs.append(randn([4], seed: 65)) }
        expectGradients(inputs, check: GradientCheck(step: 1e-3, relativeTolerance: 2e-2, absoluteTolerance: 2e-3)) {
            $0[0].batchNormReLUConv2d(normWeight: $0[1], normBias: $0[2], runningMean: rm, runningVariance: rv, training: true,
                                      convWeight: $0[3], convBias: withBias ? $0[4] : nil, padding: (1, 1))
        }
    }

    /// `batchNormAddingReLU` (a residual block's join, the normalised values never stored) against
    /// `batchNorm` then `addingReLU`: the same values and gradients bit for bit, in training and in
    /// evaluation, and the running statistics updated alike; and its gradient against finite differences.
    /// Planes of 15 and of 35 values (the 16-wide loops, the 8-wide step, the scalar tail).
    @Test(arguments: [[3, 4, 5, 3], [2, 4, 5, 7]]) func batchNormAddingReLUEqualsTheTwoOps(_ shape: [Int]) {
        let x = randn(shape, seed: 33), r = randn(shape, seed: 34)
        let w = uniform([4], 0.5, 1.5, seed: 35), b = randn([4], seed: 36), seed = randn(shape, seed: 37)
        for training in [true, false] {
            func run(_ fused: Bool) -> [[Float]] {
                let (xi, ri, wi, bi) = (x.copy(), r.copy(), w.copy(), b.copy())
                for t in [xi, ri, wi, bi] { t.requiresGrad = true }
                let rm = randn([4], seed: 38), rv = uniform([4], 0.5, 2, seed: 39)
                let y = fused
                    ? xi.batchNormAddingReLU(ri, weight: wi, bias: bi, runningMean: rm, runningVariance: rv, training: training)
                    : xi.batchNorm(weight: wi, bias: bi, runningMean: rm, runningVariance: rv, training: training).addingReLU(ri)
                y.backward(seed)
                return [y.scalars, xi.grad!.scalars, ri.grad!.scalars, wi.grad!.scalars, bi.grad!.scalars, rm.scalars, rv.scalars]
            }
            #expect(run(true) == run(false), "training: \(training)")
        }
        let rm = Tensor.zeros([4]), rv = Tensor(repeating: 1, shape: [4])
        let rShifted = r.copy()
        // Keep the sums away from the ReLU's kink, where finite differences are meaningless.
        let plain = x.batchNorm(weight: w, bias: b, runningMean: Tensor.zeros([4]), runningVariance: Tensor(repeating: 1, shape: [4]),
                                training: true)
        for i in 0..<r.count where abs(plain.data[i] + r.data[i]) < 0.1 { rShifted.data[i] += 0.3 }
        expectGradients([x, rShifted, w, b], check: GradientCheck(step: 1e-3, relativeTolerance: 2e-2, absoluteTolerance: 2e-3)) {
            $0[0].batchNormAddingReLU($0[1], weight: $0[2], bias: $0[3], runningMean: rm, runningVariance: rv, training: true)
        }
    }

    /// The statistics stay accurate for values far from zero with a small spread (the case a naive sum of
    /// squares loses), also when each channel's first value is an outlier (the case a sum of squares shifted
    /// by that value loses on large batches), against a double-precision two-pass reference.
    @Test(arguments: [false, true]) func batchNormStatisticsOfOffsetValues(_ outlier: Bool) {
        let (n, c, plane) = (64, 2, 255)   // 16-wide blocks, an 8-wide step and a scalar tail per row
        var g = SeededGenerator(seed: 40)
        let x = Tensor.randomNormal([n, c, 15, 17], using: &g)
        for i in 0..<x.count { x.data[i] = 1000 + 0.01 * x.data[i] }
        if outlier { for ch in 0..<c { x.data[ch * plane] = 1010 } }
        let rm = Tensor.zeros([c]), rv = Tensor.zeros([c])
        _ = x.batchNorm(weight: Tensor(repeating: 1, shape: [c]), bias: Tensor.zeros([c]), runningMean: rm,
                        runningVariance: rv, training: true, momentum: 1)
        let m = n * plane
        for ch in 0..<c {
            var values: [Double] = []
            for i in 0..<n { for j in 0..<plane { values.append(Double(x.data[(i * c + ch) * plane + j])) } }
            let mean = values.reduce(0, +) / Double(m)
            let unbiased = values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(m - 1)
            let meanError = abs(Double(rm.data[ch]) - mean), varianceError = abs(Double(rv.data[ch]) - unbiased) / unbiased
            #expect(meanError < 1e-4, "outlier \(outlier), channel \(ch)")
            // The statistics are within 1.4e-7 here; shifted by the first value they were 1.1e-4 and 2.8e-4 off.
            #expect(varianceError < 1e-5, "outlier \(outlier), channel \(ch): variance \(varianceError) off")
        }
    }

    @Test func addingReLUGradientAndValues() {
        let a = randn([4, 5], seed: 27), b = randn([4, 5], seed: 28)
        for i in 0..<a.count where abs(a.data[i] + b.data[i]) < 0.05 { a.data[i] += 0.2 }
        expectGradients([a, b]) { $0[0].addingReLU($0[1]) }
        #expect(a.addingReLU(b).scalars == (a + b).relu().scalars)
    }
}
