import Testing
import CKernels
@testable import Tensors
import TestSupport

/// Batch normalisation's per-channel loops in C (`cohort_bn_*`, `norm.c`) on every one of Cohort's paths
/// this CPU has (AVX2, AVX-512; each forced in turn): the sums against double precision and the same bits
/// on both paths, the element-wise passes with the portable Swift loops' bits (which the BLAS path runs).
/// The planes cross every edge of the loops: under one 8-lane vector, around the 16-lane vectors and the
/// 32-value blocks, and the model's planes (7 x 7 to 32 x 32). Rows lie `stride` apart with NaN in the gaps,
/// so a read outside a row shows.
@Suite struct BatchNormKernelTests {
    static let planes = [1, 5, 8, 9, 16, 24, 31, 32, 33, 47, 49, 64, 196, 784, 1024]
    static let rows = 5

    static var ownPaths: [Gemm.Path] { Gemm.availablePaths.filter { $0 != .blas } }

    /// `rows` rows of `plane` values (`base` + a standard normal), 3 floats of NaN between rows.
    static func channel(_ plane: Int, base: Float, seed: UInt64) -> (values: [Float], stride: Int) {
        let stride = plane + 3
        let normal = randn([rows * plane], seed: seed).scalars
        var values = [Float](repeating: .nan, count: (rows - 1) * stride + plane)
        for i in 0..<rows { for j in 0..<plane { values[i * stride + j] = base + normal[i * plane + j] } }
        return (values, stride)
    }

    @Test(arguments: planes) func statisticsMatchDoublePrecision(_ plane: Int) throws {
        // A mean far from zero: the deviations from each row's estimate keep the variance exact.
        let (x, stride) = Self.channel(plane, base: 100, seed: 61)
        var values: [Double] = []
        for i in 0..<Self.rows { for j in 0..<plane { values.append(Double(x[i * stride + j])) } }
        let mean = values.reduce(0, +) / Double(values.count)
        let variance = values.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(values.count)
        var results: [[Float]] = []
        for path in Self.ownPaths {
            var mu: Float = .nan, v: Float = .nan
            let done = Gemm.withPath(path) { cohort_bn_statistics(x, Self.rows, stride, plane, &mu, &v) }
            #expect(done == 1, "\(path)")
            #expect(abs(Double(mu) - mean) <= 1e-6 * abs(mean), "\(path) plane \(plane): mean \(mu) against \(mean)")
            #expect(abs(Double(v) - variance) <= 1e-5 * variance, "\(path) plane \(plane): variance \(v) against \(variance)")
            results.append([mu, v])
        }
        #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(Self.ownPaths) differ: \(results)")
        var mu: Float = 0, v: Float = 0
        #expect(Gemm.withPath(.blas) { cohort_bn_statistics(x, Self.rows, stride, plane, &mu, &v) } == 0)
    }

    @Test(arguments: planes, [false, true]) func gradientSumsMatchDoublePrecision(_ plane: Int, _ reluMask: Bool) {
        let (x, stride) = Self.channel(plane, base: 0.5, seed: 62), (g, _) = Self.channel(plane, base: 0, seed: 63)
        let (mu, scale, shift): (Float, Float, Float) = (0.4, 1.3, -0.6)
        var sumG = 0.0, sumGX = 0.0, magnitude = 0.0
        for i in 0..<Self.rows {
            for j in 0..<plane {
                let xv = x[i * stride + j]
                let gv = reluMask && xv * scale + shift <= 0 ? 0 : Double(g[i * stride + j])
                sumG += gv; sumGX += gv * Double(xv - mu); magnitude += abs(gv) * (1 + abs(Double(xv - mu)))
            }
        }
        var results: [[Float]] = []
        for path in Self.ownPaths {
            var sums: [Float] = [.nan, .nan]
            let done = Gemm.withPath(path) {
                cohort_bn_gradient_sums(x, g, Self.rows, stride, plane, mu, scale, shift, reluMask ? 1 : 0, &sums)
            }
            #expect(done == 1, "\(path)")
            #expect(abs(Double(sums[0]) - sumG) <= 1e-6 * (magnitude + 1), "\(path) plane \(plane): \(sums[0]) against \(sumG)")
            #expect(abs(Double(sums[1]) - sumGX) <= 1e-6 * (magnitude + 1), "\(path) plane \(plane): \(sums[1]) against \(sumGX)")
            results.append(sums)
        }
        #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(Self.ownPaths) differ: \(results)")
    }

    /// Values that tell the vector ReLU from the scalar one (-0 kept or made +0) and NaN, scattered through
    /// a channel of `c` = 2, so that both the vector lanes and the scalar tail meet them.
    static func awkward(_ values: [Float]) -> [Float] {
        var out = values
        for i in stride(from: 3, to: out.count, by: 7) { out[i] = -0.0 }
        for i in stride(from: 5, to: out.count, by: 11) { out[i] = .nan }
        return out
    }

    /// The map and its joins through `BatchNormKernel.apply`: every path, the BLAS one running the Swift
    /// loops, gives the same bits.
    @Test(arguments: planes) func theMapGivesThePortableBits(_ plane: Int) {
        let shape = [3, 2, plane], count = 6 * plane
        let x = Tensor(Self.awkward(randn([count], seed: 64).scalars), shape: shape)
        let residual = Tensor(Self.awkward(randn([count], seed: 65).scalars), shape: shape)
        let kernel = BatchNormKernel(shape: shape)
        let affine = BatchNormKernel.Affine(channels: 2)
        // Channel 1's shift is -0: x = -0 maps to -0 (kept by the vector ReLU, +0 from the scalar one).
        for (i, (scale, shift)) in [(Float(0.7), Float(0.1)), (1, -0.0)].enumerated() {
            affine.scales.data[i] = scale; affine.shifts.data[i] = shift
            affine.mean.data[i] = 0; affine.invStd.data[i] = 1
        }
        for join in [BatchNormKernel.Join.none, .relu, .residualReLU(residual.data)] {
            let results = Gemm.availablePaths.map { path in
                Gemm.withPath(path) { () -> [UInt32] in
                    let y = Tensor(repeating: 7, shape: shape)
                    kernel.apply(x: x.data, y: y.data, affine: affine, join: join)
                    return y.scalars.map(\.bitPattern)
                }
            }
            #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(Gemm.availablePaths), plane \(plane), \(join)")
        }
        withExtendedLifetime((x, residual)) {}
    }

    /// The input gradient, `dx = k (g' - mean_g - (x - mu) c2)`, against the same formula in Swift, bit for
    /// bit, on both paths; written in place of `g` too.
    @Test(arguments: planes, [false, true]) func theInputGradientGivesThePortableBits(_ plane: Int, _ reluMask: Bool) {
        let (x, stride) = Self.channel(plane, base: 0.5, seed: 66), (g, _) = Self.channel(plane, base: 0, seed: 67)
        let (mu, scale, shift, k, meanG, c2): (Float, Float, Float, Float, Float, Float) = (0.4, 1.3, -0.6, 0.8, 0.05, 0.3)
        var expected = g
        for i in 0..<Self.rows {
            for j in 0..<plane {
                let at = i * stride + j, xv = x[at]
                let gv = reluMask && xv * scale + shift <= 0 ? 0 : g[at]
                expected[at] = k * (gv - meanG - (xv - mu) * c2)
            }
        }
        for path in Self.ownPaths {
            var dx = [Float](repeating: 42, count: g.count), inPlace = g
            Gemm.withPath(path) {
                #expect(cohort_bn_input_gradient(x, g, &dx, Self.rows, stride, plane, mu, scale, shift, reluMask ? 1 : 0,
                                                 k, meanG, c2) == 1)
                inPlace.withUnsafeMutableBufferPointer { p in
                    _ = cohort_bn_input_gradient(x, p.baseAddress!, p.baseAddress!, Self.rows, stride, plane, mu, scale, shift,
                                                 reluMask ? 1 : 0, k, meanG, c2)
                }
            }
            for i in 0..<Self.rows {
                for j in 0..<plane {
                    let at = i * stride + j
                    #expect(dx[at].bitPattern == expected[at].bitPattern, "\(path) plane \(plane) at \(at)")
                    #expect(inPlace[at].bitPattern == expected[at].bitPattern, "\(path) plane \(plane) at \(at), in place")
                }
            }
            // The gaps between rows are left alone.
            #expect(dx.indices.allSatisfy { $0 % stride < plane || dx[$0] == 42 }, "\(path) plane \(plane): wrote a gap")
        }
    }
}
