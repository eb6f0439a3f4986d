import Testing
@testable import Tensors
import TestSupport

/// Direct (quadruple-loop) convolution, the reference the lowered one is checked against.
func naiveConv2d(_ x: Tensor, _ w: Tensor, _ b: Tensor?, stride: (Int, Int), padding: (Int, Int)) -> [Float] {
    let (n, c, h, wd) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
    let (co, kh, kw) = (w.shape[0], w.shape[2], w.shape[3])
    let oh = (h + 2 * padding.0 - kh) / stride.0 + 1, ow = (wd + 2 * padding.1 - kw) / stride.1 + 1
    var out = [Float](repeating: 0, count: n * co * oh * ow)
    for i in 0..<n { for o in 0..<co { for y in 0..<oh { for xx in 0..<ow {
        var s: Float = b?.data[o] ?? 0
        for ci in 0..<c { for dy in 0..<kh { for dx in 0..<kw {
            let iy = y * stride.0 - padding.0 + dy, ix = xx * stride.1 - padding.1 + dx
            if iy >= 0 && iy < h && ix >= 0 && ix < wd {
                s += x.data[((i * c + ci) * h + iy) * wd + ix] * w.data[((o * c + ci) * kh + dy) * kw + dx]
            }
        } } }
        out[((i * co + o) * oh + y) * ow + xx] = s
    } } } }
    return out
}

struct ConvCase: Sendable, CustomTestStringConvertible {
    let input: [Int], output: Int, kernel: (Int, Int), stride: (Int, Int), padding: (Int, Int), bias: Bool
    var testDescription: String { "\(input) k\(kernel) s\(stride) p\(padding) bias:\(bias)" }
}

@Suite struct ConvolutionTests {
    static let cases: [ConvCase] = [
        ConvCase(input: [2, 3, 6, 6], output: 4, kernel: (3, 3), stride: (1, 1), padding: (1, 1), bias: false),
        ConvCase(input: [2, 3, 7, 7], output: 4, kernel: (3, 3), stride: (2, 2), padding: (1, 1), bias: true),
        ConvCase(input: [2, 3, 6, 6], output: 5, kernel: (1, 1), stride: (2, 2), padding: (0, 0), bias: false),
        // Stride 2 over even sizes: the phase-plane form on Cohort's own paths (shifts -1, 0 and +1 in phase planes).
        ConvCase(input: [2, 3, 8, 10], output: 4, kernel: (3, 3), stride: (2, 2), padding: (1, 1), bias: true),
        ConvCase(input: [2, 2, 6, 4], output: 3, kernel: (5, 5), stride: (2, 2), padding: (2, 2), bias: false),
        ConvCase(input: [2, 3, 8, 6], output: 2, kernel: (3, 1), stride: (2, 2), padding: (1, 0), bias: false),
        ConvCase(input: [2, 2, 6, 8], output: 3, kernel: (2, 2), stride: (2, 2), padding: (0, 0), bias: true),
        ConvCase(input: [2, 2, 4, 6], output: 3, kernel: (4, 4), stride: (2, 2), padding: (1, 1), bias: false),
        // Output rows other than half the input's (3 and 5 of 8): the phase grid and the output differ in height.
        ConvCase(input: [2, 2, 8, 6], output: 3, kernel: (3, 3), stride: (2, 2), padding: (0, 1), bias: false),
        ConvCase(input: [2, 2, 8, 6], output: 2, kernel: (3, 3), stride: (2, 2), padding: (2, 1), bias: true),
        ConvCase(input: [3, 4, 5, 5], output: 2, kernel: (1, 1), stride: (1, 1), padding: (0, 0), bias: true),
        ConvCase(input: [2, 2, 7, 6], output: 3, kernel: (5, 3), stride: (2, 1), padding: (2, 0), bias: true),
        ConvCase(input: [1, 2, 4, 4], output: 3, kernel: (3, 3), stride: (3, 3), padding: (2, 2), bias: false),
        ConvCase(input: [2, 2, 6, 7], output: 3, kernel: (3, 5), stride: (1, 1), padding: (0, 2), bias: false),
        ConvCase(input: [2, 2, 5, 5], output: 2, kernel: (5, 5), stride: (1, 1), padding: (2, 2), bias: true),
        // Padding as wide as the image or wider (a kernel larger than a tiny input).
        ConvCase(input: [2, 2, 2, 2], output: 3, kernel: (7, 7), stride: (1, 1), padding: (3, 3), bias: false),
        ConvCase(input: [1, 2, 3, 1], output: 2, kernel: (5, 5), stride: (1, 1), padding: (2, 2), bias: false),
    ]

    /// Every case on every matrix-product path this CPU has (OpenBLAS, Cohort's AVX2 and AVX-512 kernels,
    /// each forced in turn; the stride-1 convolutions without lowering on the AVX2 and AVX-512 paths).
    @Test(arguments: cases) func convolutionMatchesDirectLoops(_ c: ConvCase) {
        for path in Gemm.availablePaths { Gemm.withPath(path) { convolutionMatchesDirectLoops(c, path) } }
    }

    func convolutionMatchesDirectLoops(_ c: ConvCase, _ path: Gemm.Path) {
        let x = randn(c.input, seed: 1), w = randn([c.output, c.input[1], c.kernel.0, c.kernel.1], seed: 2)
        let b = c.bias ? randn([c.output], seed: 3) : nil
        let y = x.conv2d(weight: w, bias: b, stride: c.stride, padding: c.padding)
        #expect(maxDifference(y.scalars, naiveConv2d(x, w, b, stride: c.stride, padding: c.padding)) < 1e-4, "\(path)")
    }

    @Test(arguments: cases) func convolutionGradient(_ c: ConvCase) {
        for path in Gemm.availablePaths { Gemm.withPath(path) { convolutionGradient(c, path) } }
    }

    func convolutionGradient(_ c: ConvCase, _ path: Gemm.Path) {
        var inputs = [randn(c.input, seed: 4), randn([c.output, c.input[1], c.kernel.0, c.kernel.1], seed: 5)]
        if c.bias { inputs.append(randn([c.output], seed: 6)) }
        expectGradients(inputs) {
            $0[0].conv2d(weight: $0[1], bias: $0.count > 2 ? $0[2] : nil, stride: c.stride, padding: c.padding)
        }
    }

    @Test func groupedLoweringMatchesForManySamples() {
        // Enough samples of a small image that several are lowered side by side, with a remainder group.
        let x = randn([67, 3, 8, 8], seed: 7), w = randn([5, 3, 3, 3], seed: 8)
        let y = x.conv2d(weight: w, stride: (1, 1), padding: (1, 1))
        #expect(maxDifference(y.scalars, naiveConv2d(x, w, nil, stride: (1, 1), padding: (1, 1))) < 1e-4)
        let plan = ConvPlan(batch: 67, outputChannels: 5, geometry: ConvGeometry(
            channels: 3, height: 8, width: 8, kernelHeight: 3, kernelWidth: 3, strideHeight: 1, strideWidth: 1,
            paddingHeight: 1, paddingWidth: 1))
        #expect(plan.group > 1 && 67 % plan.group != 0)
        expectGradients([x, w], check: GradientCheck(samplesPerInput: 15)) {
            $0[0].conv2d(weight: $0[1], stride: (1, 1), padding: (1, 1))
        }
    }

    @Test(arguments: cases) func col2imIsTheAdjointOfIm2col(_ c: ConvCase) {
        let g = ConvGeometry(channels: c.input[1], height: c.input[2], width: c.input[3],
                             kernelHeight: c.kernel.0, kernelWidth: c.kernel.1, strideHeight: c.stride.0,
                             strideWidth: c.stride.1, paddingHeight: c.padding.0, paddingWidth: c.padding.1)
        let x = randn([g.channels, g.height, g.width], seed: 9)
        let y = randn([g.columnRows, g.columnCols], seed: 10)
        let lowered = Tensor(uninitializedShape: [g.columnRows, g.columnCols])
        Im2col.lower(x.data, g, into: lowered.data, leadingDimension: g.columnCols)
        let folded = Tensor.zeros(x.shape)
        let scratch = y.copy()   // accumulate may clobber its input
        withExtendedLifetime(scratch) {
            Im2col.accumulate(scratch.data, leadingDimension: g.columnCols, g, into: folded.data)
        }
        let lhs = zip(lowered.scalars, y.scalars).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        let rhs = zip(x.scalars, folded.scalars).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        #expect(abs(lhs - rhs) < 1e-3 * max(1, abs(lhs)))
    }

    /// A same convolution large enough to cross the kernels' blocks: 20 output channels (two full 8-row
    /// tiles and an edge), 30 x 9 = 270 taps (two 256-deep blocks), images of 12 x 12 (4.5 column panels on
    /// AVX-512, 6 on AVX2), 7 x 7 and 5 x 11 (on AVX2 panels cross from one image into the next), 4 x 5 (narrower
    /// than a panel). Forward and input gradient against direct loops; on the AVX2 and AVX-512 paths both run
    /// without lowering. And there each image convolved alone gives the batch's values bit for bit: where
    /// the panels fall does not change a sum.
    @Test(arguments: [(3, 12, 12), (5, 7, 7), (4, 5, 11), (3, 4, 5)])
    func largeSameConvolutionMatchesDirectLoops(_ n: Int, _ h: Int, _ w: Int) {
        for path in Gemm.availablePaths { Gemm.withPath(path) { largeSameConvolutionMatchesDirectLoops(n, h, w, path) } }
    }

    func largeSameConvolutionMatchesDirectLoops(_ n: Int, _ h: Int, _ w: Int, _ path: Gemm.Path) {
        let (c, co) = (30, 20)
        let x = randn([n, c, h, w], seed: 21), weight = randn([co, c, 3, 3], seed: 22), dy = randn([n, co, h, w], seed: 23)
        let geometry = ConvGeometry(channels: c, height: h, width: w, kernelHeight: 3, kernelWidth: 3,
                                    strideHeight: 1, strideWidth: 1, paddingHeight: 1, paddingWidth: 1)
        let plan = ConvPlan(batch: n, outputChannels: co, geometry: geometry)
        let y = Tensor(uninitializedShape: [n, co, h, w])
        plan.forward(input: x.data, weight: weight.data, bias: nil, output: y.data)
        #expect(maxDifference(y.scalars, naiveConv2d(x, weight, nil, stride: (1, 1), padding: (1, 1))) < 1e-3, "\(path)")
        // (On Cohort's kernels; OpenBLAS blocks a product differently as the lowered matrix widens.)
        let single = ConvPlan(batch: 1, outputChannels: co, geometry: geometry)
        for i in 0..<n where path != .blas {
            let alone = Tensor(uninitializedShape: [1, co, h, w])
            single.forward(input: x.data + i * c * h * w, weight: weight.data, bias: nil, output: alone.data)
            #expect(alone.scalars == Array(y.scalars[(i * co * h * w)..<((i + 1) * co * h * w)]), "\(path), image \(i)")
        }
        let dx = Tensor(uninitializedShape: x.shape), dw = Tensor(uninitializedShape: weight.shape)
        plan.backward(input: x.data, weight: weight.data, outputGradient: dy.data, inputGradient: dx.data, weightGradient: dw.data)
        var expected = [Float](repeating: 0, count: x.count)
        for i in 0..<n { for o in 0..<co { for oy in 0..<h { for ox in 0..<w {
            let g = dy.data[((i * co + o) * h + oy) * w + ox]
            for ci in 0..<c { for ky in 0..<3 { for kx in 0..<3 {
                let iy = oy - 1 + ky, ix = ox - 1 + kx
                guard iy >= 0 && iy < h && ix >= 0 && ix < w else { continue }
                expected[((i * c + ci) * h + iy) * w + ix] += g * weight.data[((o * c + ci) * 3 + ky) * 3 + kx]
            } } }
        } } } }
        #expect(maxDifference(dx.scalars, expected) < 1e-3, "\(path)")
        let dwGeneral = Tensor(uninitializedShape: weight.shape)
        plan.backward(input: x.data, weight: weight.data, outputGradient: dy.data, inputGradient: nil, weightGradient: dwGeneral.data)
        #expect(maxDifference(dw.scalars, dwGeneral.scalars) < 1e-3)
    }

    /// Stride-2 convolutions large enough to cross the kernels' blocks (20 output channels, 270 taps; 64 and
    /// 324 output pixels, past the weight gradient's 256-pixel block): forward, input and weight gradients
    /// against direct loops on every path (the phase-plane form on AVX2 and AVX-512, lowering on BLAS), and
    /// the same bits on the AVX2 and AVX-512 paths.
    /// 32 output channels over 4 input channels: on AVX-512 the weight gradient takes the 32 rows as the vector.
    @Test(arguments: [(3, 16, 16, 30, 20), (2, 36, 36, 30, 20), (2, 14, 18, 30, 20), (2, 12, 20, 4, 32)])
    func largeStridedConvolutionMatchesDirectLoops(_ n: Int, _ h: Int, _ w: Int, _ c: Int, _ co: Int) {
        let phased = Gemm.availablePaths.filter { $0 != .blas }
        let results = Gemm.availablePaths.map { path in
            Gemm.withPath(path) { largeStridedConvolutionMatchesDirectLoops(n, h, w, c, co, path) }
        }
        let own = zip(Gemm.availablePaths, results).filter { phased.contains($0.0) }.map { $0.1 }
        #expect(own.dropFirst().allSatisfy { $0 == own[0] }, "\(phased) differ")
    }

    /// The forward output, the input gradient and the weight gradient, each checked against direct loops.
    func largeStridedConvolutionMatchesDirectLoops(_ n: Int, _ h: Int, _ w: Int, _ c: Int, _ co: Int, _ path: Gemm.Path) -> [[Float]] {
        let geometry = ConvGeometry(channels: c, height: h, width: w, kernelHeight: 3, kernelWidth: 3,
                                    strideHeight: 2, strideWidth: 2, paddingHeight: 1, paddingWidth: 1)
        let (oh, ow) = (geometry.outputHeight, geometry.outputWidth)
        let x = randn([n, c, h, w], seed: 24), weight = randn([co, c, 3, 3], seed: 25), dy = randn([n, co, oh, ow], seed: 26)
        let plan = ConvPlan(batch: n, outputChannels: co, geometry: geometry)
        #expect(plan.usesPhases == (path != .blas))
        // Outputs start as NaN: every element must be written.
        let y = Tensor(repeating: .nan, shape: [n, co, oh, ow])
        plan.forward(input: x.data, weight: weight.data, bias: nil, output: y.data)
        #expect(!y.scalars.contains { $0.isNaN }, "\(path)")
        #expect(maxDifference(y.scalars, naiveConv2d(x, weight, nil, stride: (2, 2), padding: (1, 1))) < 1e-3, "\(path)")
        let dx = Tensor(repeating: .nan, shape: x.shape), dw = Tensor(repeating: .nan, shape: weight.shape)
        plan.backward(input: x.data, weight: weight.data, outputGradient: dy.data, inputGradient: dx.data, weightGradient: dw.data)
        var expectedDx = [Double](repeating: 0, count: x.count), expectedDw = [Double](repeating: 0, count: weight.count)
        for i in 0..<n { for o in 0..<co { for oy in 0..<oh { for ox in 0..<ow {
            let g = Double(dy.data[((i * co + o) * oh + oy) * ow + ox])
            for ci in 0..<c { for ky in 0..<3 { for kx in 0..<3 {
                let iy = 2 * oy - 1 + ky, ix = 2 * ox - 1 + kx
                guard iy >= 0 && iy < h && ix >= 0 && ix < w else { continue }
                let wi = ((o * c + ci) * 3 + ky) * 3 + kx, xi = ((i * c + ci) * h + iy) * w + ix
                expectedDx[xi] += g * Double(weight.data[wi])
                expectedDw[wi] += g * Double(x.data[xi])
            } } }
        } } } }
        #expect(!dx.scalars.contains { $0.isNaN } && !dw.scalars.contains { $0.isNaN }, "\(path)")
        #expect(maxDifference(dx.scalars, expectedDx.map { Float($0) }) < 1e-3, "\(path)")
        #expect(maxDifference(dw.scalars, expectedDw.map { Float($0) }) < 1e-2, "\(path)")
        // The weight gradient alone (the first layer's case) gives the same.
        let dwAlone = Tensor(uninitializedShape: weight.shape)
        plan.backward(input: x.data, weight: weight.data, outputGradient: dy.data, inputGradient: nil, weightGradient: dwAlone.data)
        #expect(dwAlone.scalars == dw.scalars, "\(path)")
        // And the input gradient alone.
        let dxAlone = Tensor(uninitializedShape: x.shape)
        plan.backward(input: x.data, weight: weight.data, outputGradient: dy.data, inputGradient: dxAlone.data, weightGradient: nil)
        #expect(dxAlone.scalars == dx.scalars, "\(path)")
        return [y.scalars, dx.scalars, dw.scalars]
    }

    /// Every tiling — bands of rows, groups of samples, one whole sample — and both backward algorithms
    /// (same-convolution via the lowered output gradient, general via col2im) give the same results.
    @Test(arguments: [(3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (5, 1, 2)])
    func everyTilingAgrees(_ kernel: Int, _ stride: Int, _ padding: Int) {
        for path in Gemm.availablePaths { Gemm.withPath(path) { everyTilingAgrees(kernel, stride, padding, path) } }
    }

    func everyTilingAgrees(_ kernel: Int, _ stride: Int, _ padding: Int, _ path: Gemm.Path) {
        let x = randn([5, 3, 9, 9], seed: 11), w = randn([4, 3, kernel, kernel], seed: 12)
        let geometry = ConvGeometry(channels: 3, height: 9, width: 9, kernelHeight: kernel, kernelWidth: kernel,
                                    strideHeight: stride, strideWidth: stride, paddingHeight: padding, paddingWidth: padding)
        let expected = naiveConv2d(x, w, nil, stride: (stride, stride), padding: (padding, padding))
        let dy = randn([5, 4, geometry.outputHeight, geometry.outputWidth], seed: 13)
        var reference: (dx: [Float], dw: [Float])?
        // Budgets from one band row per tile up to several samples per tile.
        for budget in [geometry.columnRows * geometry.outputWidth, geometry.columnRows * geometry.outputWidth * 3, 1 << 20] {
            let plan = ConvPlan(batch: 5, outputChannels: 4, geometry: geometry, budget: budget)
            let y = Tensor(uninitializedShape: dy.shape)
            plan.forward(input: x.data, weight: w.data, bias: nil, output: y.data)
            #expect(maxDifference(y.scalars, expected) < 1e-4, "budget \(budget): group \(plan.group), band \(plan.bandRows)")
            let dx = Tensor(uninitializedShape: x.shape), dw = Tensor(uninitializedShape: w.shape)
            plan.backward(input: x.data, weight: w.data, outputGradient: dy.data, inputGradient: dx.data, weightGradient: dw.data)
            // Weight gradient alone takes the general path even for a same convolution.
            let dwOnly = Tensor(uninitializedShape: w.shape)
            plan.backward(input: x.data, weight: w.data, outputGradient: dy.data, inputGradient: nil, weightGradient: dwOnly.data)
            #expect(maxDifference(dw.scalars, dwOnly.scalars) < 1e-4)
            if let reference {
                #expect(maxDifference(dx.scalars, reference.dx) < 1e-4)
                #expect(maxDifference(dw.scalars, reference.dw) < 1e-4)
            } else {
                reference = (dx.scalars, dw.scalars)
            }
        }
        // And the reference itself is the gradient of the convolution.
        expectGradients([x, w], check: GradientCheck(samplesPerInput: 12)) {
            $0[0].conv2d(weight: $0[1], stride: (stride, stride), padding: (padding, padding))
        }
    }
}
