import Foundation
import Testing
@testable import Tensors

/// The vectorised `exp` and `log` (own polynomials on AVX-512 and AVX2 CPUs, libm on the BLAS path)
/// against double-precision libm, on every path this CPU has (each forced in turn); the own paths give the
/// same bits.
@Suite struct VectorMathTests {
    @Test func expIsWithinTwoUlps() {
        let results = Gemm.availablePaths.map { path in Gemm.withPath(path) { expIsWithinTwoUlps(path) } }
        let own = zip(Gemm.availablePaths, results).filter { $0.0 != .blas }.map(\.1)
        #expect(own.dropFirst().allSatisfy { $0 == own[0] })
    }

    @Test func logIsAccurate() {
        let results = Gemm.availablePaths.map { path in Gemm.withPath(path) { logIsAccurate(path) } }
        let own = zip(Gemm.availablePaths, results).filter { $0.0 != .blas }.map(\.1)
        #expect(own.dropFirst().allSatisfy { $0 == own[0] })
    }

    func expIsWithinTwoUlps(_ path: Gemm.Path) -> [Float] {
        let count = 100_003   // not a multiple of the vector width: the masked tail is covered
        let x = Tensor(uninitializedShape: [count]), y = Tensor(uninitializedShape: [count])
        for i in 0..<count { x.data[i] = -87 + 175 * Float(i) / Float(count - 1) }
        Vector.exp(x.data, y.data, count: count)
        var worst = 0.0
        for i in 0..<count {
            let expected = Foundation.exp(Double(x.data[i]))
            worst = max(worst, abs(Double(y.data[i]) - expected) / expected)
        }
        #expect(worst < 2.5e-7, "\(path): worst relative error \(worst)")
        return y.scalars
    }

    func logIsAccurate(_ path: Gemm.Path) -> [Float] {
        let count = 100_003
        let x = Tensor(uninitializedShape: [count]), y = Tensor(uninitializedShape: [count])
        for i in 0..<count { x.data[i] = Float(Foundation.exp(-60 + 120 * Double(i) / Double(count - 1))) }
        // and densely around 1, where log is smallest
        for i in 0..<1000 { x.data[i] = 0.9 + 0.2 * Float(i) / 999 }
        Vector.log(x.data, y.data, count: count)
        var worst = 0.0
        for i in 0..<count {
            let expected = Foundation.log(Double(x.data[i]))
            worst = max(worst, abs(Double(y.data[i]) - expected) / max(abs(expected), 1))
        }
        #expect(worst < 2.5e-7, "\(path): worst error \(worst)")
        return y.scalars
    }

    /// The largest inputs exp accepts (n = 128 in x = n ln 2 + r: one past a float's largest exponent, which
    /// the AVX2 form applies as two factors) and the smallest, where the result is near the normal range's end.
    @Test func expAtTheEndsOfItsRange() {
        let x: [Float] = [88.7, 88.6, 88.5, 88.4, 88.3762, 88, -87.3, -87.2, -87, -86.5, 0, 1e-8]
        for path in Gemm.availablePaths {
            Gemm.withPath(path) {
                var y = [Float](repeating: 0, count: x.count)
                Vector.exp(x, &y, count: x.count)
                for (input, value) in zip(x, y) {
                    let expected = Foundation.exp(Double(input))
                    #expect(value.isFinite && abs(Double(value) - expected) / expected < 2.5e-7, "\(path): exp(\(input)) = \(value)")
                }
            }
        }
    }

    /// Values outside the polynomials' domain get libm's answer on every path (NaN, infinities, zero,
    /// negatives, subnormals, exp past its clamps), mixed in one vector group with ordinary values, computed
    /// in place and in a short last group.
    @Test func specialValuesFollowLibm() {
        let expInputs: [Float] = [.nan, .infinity, -.infinity, 89, 88.72, 88.8, 100, -87.4, -88, -100, -104, -110,
                                  0, 1, -1.5, 3, 20, -.nan]
        let logInputs: [Float] = [0, -0.0, -1, -.infinity, .infinity, .nan, .leastNormalMagnitude / 4, .leastNonzeroMagnitude,
                                  .leastNormalMagnitude, .greatestFiniteMagnitude, 1, 2.5, 0.3, 7e5, -1e-30, 1e30, 4]
        for path in Gemm.availablePaths {
            Gemm.withPath(path) {
                check(expInputs, Vector.exp(_:_:count:), Foundation.expf, domain: -87.3...88.7, scale: 0, path: path, name: "exp")
                check(logInputs, Vector.log(_:_:count:), Foundation.logf,
                      domain: Float.leastNormalMagnitude...Float.greatestFiniteMagnitude, scale: 1, path: path, name: "log")
            }
        }
    }

    func check(_ inputs: [Float], _ vector: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void,
               _ libm: (Float) -> Float, domain: ClosedRange<Float>, scale: Double, path: Gemm.Path, name: String) {
        // Inside the domain: relative error for exp (scale 0), absolute near 1 for log (scale 1).
        // Every length up to the whole array: each value lands in full groups and in short last groups.
        for length in 1...inputs.count {
            let values = UnsafeMutablePointer<Float>.allocate(capacity: length)
            defer { values.deallocate() }
            values.initialize(from: inputs, count: length)
            vector(values, values, length)   // in place
            for i in 0..<length {
                let x = inputs[i], y = values[i], expected = libm(x)
                if domain.contains(x) {
                    let error = abs(Double(y) - Double(expected)) / max(abs(Double(expected)), scale)
                    #expect(error < 2.5e-7, "\(path): \(name)(\(x)) = \(y), libm \(expected)")
                } else {
                    #expect(y.bitPattern == expected.bitPattern || (y.isNaN && expected.isNaN),
                            "\(path): \(name)(\(x)) = \(y), libm \(expected)")
                }
            }
        }
    }
}
