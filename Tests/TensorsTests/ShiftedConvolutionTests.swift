import Testing
import CKernels
@testable import Tensors
import TestSupport

/// The convolutions without lowering (`cohort_conv_shifted_forward`, `cohort_conv_shifted_weight_gradient`)
/// called directly on every one of Cohort's kernel paths this CPU has (AVX2, AVX-512; each forced in turn),
/// against a double-precision reference. The shapes cross every edge of the kernels' blocking: output
/// channels around the 8-row tile, taps around the k blocks (256 deep; 576 = 3 x 192), pixels around the
/// column panels (24 on AVX2, 32 on AVX-512) and, for the weight gradient, around its 256-pixel blocks; image
/// rows narrower than a panel, padding as wide as the kernel allows, a kernel taller than it is wide, more
/// weight-gradient rows than one packing block, and 16 and 32 of them (AVX-512's weight gradient with the rows as
/// the vector). The inputs also sit with gaps of NaN between images and
/// against inaccessible pages, so a load outside the images' memory crashes and an unmasked lane shows.
@Suite struct ShiftedConvolutionTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let outputs, channels, height, width, kernelHeight, kernelWidth, paddingHeight, paddingWidth, images: Int
        var testDescription: String {
            "\(channels)->\(outputs) \(kernelHeight)x\(kernelWidth) p\(paddingHeight),\(paddingWidth) @\(height)x\(width) x\(images)"
        }
        var outputHeight: Int { height + 2 * paddingHeight - kernelHeight + 1 }
        var taps: Int { kernelHeight * kernelWidth }
    }

    static let cases: [Case] = [
        Case(outputs: 20, channels: 30, height: 17, width: 17, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 2),
        Case(outputs: 64, channels: 64, height: 7, width: 7, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 2),
        Case(outputs: 16, channels: 1, height: 28, width: 28, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 1),
        Case(outputs: 3, channels: 2, height: 5, width: 7, kernelHeight: 5, kernelWidth: 3, paddingHeight: 0, paddingWidth: 1, images: 3),
        Case(outputs: 9, channels: 16, height: 4, width: 4, kernelHeight: 5, kernelWidth: 5, paddingHeight: 2, paddingWidth: 2, images: 2),
        Case(outputs: 8, channels: 3, height: 11, width: 13, kernelHeight: 3, kernelWidth: 1, paddingHeight: 2, paddingWidth: 0, images: 2),
        Case(outputs: 17, channels: 5, height: 9, width: 26, kernelHeight: 3, kernelWidth: 5, paddingHeight: 1, paddingWidth: 2, images: 1),
        // More rows than the packing buffer holds (256): the weight gradient's rows go in blocks.
        Case(outputs: 264, channels: 2, height: 16, width: 16, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 1),
        // 16 and 32 rows, whose weight gradient on AVX-512 takes the rows as the vector (zero-bordered planes,
        // the implicit rows broadcast): pixel blocks ending inside an image row, shifts of two, an output
        // taller than the input (the border below), rows of 7.
        Case(outputs: 16, channels: 16, height: 17, width: 19, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 2),
        Case(outputs: 16, channels: 16, height: 6, width: 9, kernelHeight: 5, kernelWidth: 5, paddingHeight: 2, paddingWidth: 2, images: 2),
        Case(outputs: 32, channels: 4, height: 11, width: 13, kernelHeight: 3, kernelWidth: 1, paddingHeight: 2, paddingWidth: 0, images: 2),
        Case(outputs: 32, channels: 4, height: 7, width: 7, kernelHeight: 3, kernelWidth: 3, paddingHeight: 1, paddingWidth: 1, images: 3),
    ]

    static var ownPaths: [Gemm.Path] { Gemm.availablePaths.filter { $0 != .blas } }

    /// out[o][y][x] = sum over (c, ky, kx) of w[o][c][ky][kx] * in[c][y + ky - ph][x + kx - pw], in double.
    static func referenceForward(_ c: Case, _ weights: [Float], _ images: [Float]) -> (values: [Double], magnitudes: [Double]) {
        let (oh, w, plane) = (c.outputHeight, c.width, c.height * c.width)
        var values = [Double](repeating: 0, count: c.images * c.outputs * oh * w), magnitudes = values
        for n in 0..<c.images { for o in 0..<c.outputs { for y in 0..<oh { for x in 0..<w {
            var sum = 0.0, magnitude = 0.0
            for ch in 0..<c.channels { for ky in 0..<c.kernelHeight { for kx in 0..<c.kernelWidth {
                let iy = y + ky - c.paddingHeight, ix = x + kx - c.paddingWidth
                guard iy >= 0 && iy < c.height && ix >= 0 && ix < w else { continue }
                let product = Double(weights[((o * c.channels + ch) * c.kernelHeight + ky) * c.kernelWidth + kx])
                    * Double(images[(n * c.channels + ch) * plane + iy * w + ix])
                sum += product; magnitude += abs(product)
            } } }
            let index = ((n * c.outputs + o) * oh + y) * w + x
            values[index] = sum; magnitudes[index] = magnitude
        } } } }
        return (values, magnitudes)
    }

    @Test(arguments: cases) func forwardMatchesTheReference(_ c: Case) {
        let paths = Self.ownPaths
        guard !paths.isEmpty else { return }   // no own kernels on this CPU: nothing runs without lowering
        let k = c.channels * c.taps, outputSize = c.outputs * c.outputHeight * c.width, inputSize = c.channels * c.height * c.width
        let weights = randn([c.outputs, k], seed: 31).scalars, images = randn([c.images, inputSize], seed: 32).scalars
        let (expected, magnitudes) = Self.referenceForward(c, weights, images)
        var results: [[Float]] = []
        for path in paths {
            let out = Gemm.withPath(path) { () -> [Float] in
                var packed = [Float](repeating: .nan, count: cohort_packed_weights_count(c.outputs, k))
                #expect(cohort_pack_weights(c.outputs, k, weights, &packed) == 1, "\(path)")
                // Slack around the outputs: nothing outside them may be written.
                var out = [Float](repeating: .nan, count: c.images * outputSize + 64)
                let done = out.withUnsafeMutableBufferPointer { buffer in
                    cohort_conv_shifted_forward(c.outputs, c.channels, c.height, c.width, c.kernelHeight, c.kernelWidth,
                                                c.paddingHeight, c.paddingWidth, packed, images, inputSize, c.images,
                                                buffer.baseAddress!, outputSize)
                }
                #expect(done == 1, "\(path)")
                let untouched = out[(c.images * outputSize)...].allSatisfy { $0.isNaN }
                #expect(untouched, "\(path): wrote past the outputs")
                return Array(out[..<(c.images * outputSize)])
            }
            let worst = Self.worstError(out, expected, magnitudes)
            #expect(worst < 1e-6, "\(path), \(c): worst relative error \(worst)")
            results.append(out)
        }
        // Each element's sum runs in the same order on every own path: the same bits.
        #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(paths)")
    }

    /// out[r][ch kh kw + t] = initial + sum over images and pixels j of a[r][j] * b[ch][j shifted by tap t],
    /// in double, with `a` and `b` contiguous.
    static func referenceWeightGradient(_ c: Case, _ a: [Float], _ b: [Float], _ initial: [Float], ldo: Int)
        -> (values: [Double], magnitudes: [Double]) {
        let m = c.outputs, pixels = c.outputHeight * c.width, plane = c.height * c.width
        var values = initial.map(Double.init), magnitudes = values.map(abs)
        for r in 0..<m { for ch in 0..<c.channels { for t in 0..<c.taps {
            let dy = t / c.kernelWidth - c.paddingHeight, dx = t % c.kernelWidth - c.paddingWidth
            var sum = 0.0, magnitude = 0.0
            for image in 0..<c.images {
                for j in 0..<pixels {
                    let iy = j / c.width + dy, ix = j % c.width + dx
                    guard iy >= 0 && iy < c.height && ix >= 0 && ix < c.width else { continue }
                    let product = Double(a[image * m * pixels + r * pixels + j])
                        * Double(b[image * c.channels * plane + ch * plane + iy * c.width + ix])
                    sum += product; magnitude += abs(product)
                }
            }
            values[r * ldo + ch * c.taps + t] += sum; magnitudes[r * ldo + ch * c.taps + t] += magnitude
        } } }
        return (values, magnitudes)
    }

    /// The worst of |value - expected| / (magnitude + 1), NaN counted as infinite.
    static func worstError(_ values: [Float], _ expected: [Double], _ magnitudes: [Double]) -> Double {
        var worst = 0.0
        for i in expected.indices {
            let error = abs(Double(values[i]) - expected[i]) / (magnitudes[i] + 1)
            worst = max(worst, error.isNaN ? .infinity : error)
        }
        return worst
    }

    @Test(arguments: cases) func weightGradientMatchesTheReference(_ c: Case) {
        let paths = Self.ownPaths
        guard !paths.isEmpty else { return }
        // In the backward pass `a` is the layer's input (m = its channels) and `b` the output gradient.
        let m = c.outputs, pixels = c.outputHeight * c.width, plane = c.height * c.width
        let n = c.channels * c.taps, ldo = n + 3
        let a = randn([c.images, m * pixels], seed: 33).scalars, b = randn([c.images, c.channels * plane], seed: 34).scalars
        let initial = randn([m * ldo], seed: 35).scalars
        let (expected, magnitudes) = Self.referenceWeightGradient(c, a, b, initial, ldo: ldo)
        var results: [[Float]] = []
        for path in paths {
            var out = initial
            let done = Gemm.withPath(path) {
                cohort_conv_shifted_weight_gradient(m, c.channels, c.height, c.width, c.kernelHeight, c.kernelWidth,
                                                    c.paddingHeight, c.paddingWidth, a, m * pixels, b, c.channels * plane,
                                                    c.images, &out, ldo)
            }
            #expect(done == 1, "\(path)")
            // The padding past each row's n columns is left alone.
            for r in 0..<m { for j in n..<ldo { #expect(out[r * ldo + j] == initial[r * ldo + j], "\(path): wrote padding") } }
            let worst = Self.worstError(out, expected, magnitudes)
            #expect(worst < 1e-6, "\(path), \(c): worst relative error \(worst)")
            results.append(out)
        }
        #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(paths)")
    }

    /// `values`, `count` blocks of `size` floats, laid out `stride` apart with NaN in the gaps, in memory whose
    /// first or last float touches an inaccessible page.
    static func guarded(_ values: [Float], count: Int, size: Int, stride: Int, _ placement: GuardPlacement) -> GuardedMemory<Float> {
        var laid = [Float](repeating: .nan, count: (count - 1) * stride + size)
        for i in 0..<count { laid.replaceSubrange(i * stride..<(i * stride + size), with: values[(i * size)..<((i + 1) * size)]) }
        return GuardedMemory(laid, placement: placement)
    }

    /// With 17 x 17 and 7 x 7 planes and two images, the AVX2 forward's panels cross from one image into the
    /// next, reading both sides of a gap.
    static let gapCases: [Case] = [cases[0], cases[1], cases[3], cases[4], cases[6], cases[8], cases[10]]

    /// The forward pass reads the images in place, `image_stride` apart: the gaps between them (NaN here)
    /// never reach the result, and nothing before the first image or past the last is read.
    @Test(arguments: gapCases, GuardPlacement.allCases) func forwardReadsOnlyTheImages(_ c: Case, _ placement: GuardPlacement) {
        let k = c.channels * c.taps, outputSize = c.outputs * c.outputHeight * c.width, inputSize = c.channels * c.height * c.width
        let weights = randn([c.outputs, k], seed: 41).scalars, images = randn([c.images, inputSize], seed: 42).scalars
        let (expected, magnitudes) = Self.referenceForward(c, weights, images)
        let stride = inputSize + 5
        let memory = Self.guarded(images, count: c.images, size: inputSize, stride: stride, placement)
        for path in Self.ownPaths {
            let out = Gemm.withPath(path) { () -> [Float] in
                var packed = [Float](repeating: .nan, count: cohort_packed_weights_count(c.outputs, k))
                #expect(cohort_pack_weights(c.outputs, k, weights, &packed) == 1, "\(path)")
                var out = [Float](repeating: .nan, count: c.images * outputSize)
                #expect(cohort_conv_shifted_forward(c.outputs, c.channels, c.height, c.width, c.kernelHeight, c.kernelWidth,
                                                    c.paddingHeight, c.paddingWidth, packed, memory.pointer, stride,
                                                    c.images, &out, outputSize) == 1, "\(path)")
                return out
            }
            let worst = Self.worstError(out, expected, magnitudes)
            #expect(worst < 1e-6, "\(path), \(c), \(placement): worst relative error \(worst)")
        }
    }

    /// The weight gradient reads the output gradients in place, `b_stride` apart, under the same rule.
    @Test(arguments: gapCases, GuardPlacement.allCases) func weightGradientReadsOnlyTheGradients(_ c: Case, _ placement: GuardPlacement) {
        let m = c.outputs, pixels = c.outputHeight * c.width, plane = c.height * c.width
        let n = c.channels * c.taps, size = c.channels * plane
        let a = randn([c.images, m * pixels], seed: 43).scalars, b = randn([c.images, size], seed: 44).scalars
        let initial = [Float](repeating: 0, count: m * n)
        let (expected, magnitudes) = Self.referenceWeightGradient(c, a, b, initial, ldo: n)
        let stride = size + 7
        let memory = Self.guarded(b, count: c.images, size: size, stride: stride, placement)
        for path in Self.ownPaths {
            var out = initial
            let done = Gemm.withPath(path) {
                cohort_conv_shifted_weight_gradient(m, c.channels, c.height, c.width, c.kernelHeight, c.kernelWidth,
                                                    c.paddingHeight, c.paddingWidth, a, m * pixels, memory.pointer, stride,
                                                    c.images, &out, n)
            }
            #expect(done == 1, "\(path)")
            let worst = Self.worstError(out, expected, magnitudes)
            #expect(worst < 1e-6, "\(path), \(c), \(placement): worst relative error \(worst)")
        }
    }

    /// With OpenBLAS in force the kernels decline (the caller lowers instead).
    @Test func declinesOnTheBLASPath() {
        let c = Self.cases[0]
        Gemm.withPath(.blas) {
            var packed = [Float](repeating: 0, count: cohort_packed_weights_count(c.outputs, c.channels * c.taps))
            let weights = [Float](repeating: 1, count: c.outputs * c.channels * c.taps)
            #expect(cohort_pack_weights(c.outputs, c.channels * c.taps, weights, &packed) == 0)
            var out = [Float](repeating: 0, count: 9)
            #expect(cohort_conv_shifted_forward(1, 1, 3, 3, 3, 3, 1, 1, packed, [Float](repeating: 0, count: 9), 9, 1,
                                                &out, 9) == 0)
            #expect(cohort_conv_shifted_weight_gradient(1, 1, 3, 3, 3, 3, 1, 1, [Float](repeating: 0, count: 9), 9,
                                                        [Float](repeating: 0, count: 9), 9, 1, &out, 9) == 0)
        }
    }
}
