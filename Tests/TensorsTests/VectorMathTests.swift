import Foundation
import Testing
@testable import Tensors

/// The vectorised `exp` and `log` (own polynomials on AVX-512 CPUs) against double-precision libm.
@Suite struct VectorMathTests {
    @Test func expIsWithinTwoUlps() {
        let count = 100_003   // not a multiple of the vector width: the masked tail is covered
        let x = Tensor(uninitializedShape: [count]), y = Tensor(uninitializedShape: [count])
        for i in 0..<count { x.data[i] = -87 + 175 * Float(i) / Float(count - 1) }
        Vector.exp(x.data, y.data, count: count)
        var worst = 0.0
        for i in 0..<count {
            let expected = Foundation.exp(Double(x.data[i]))
            worst = max(worst, abs(Double(y.data[i]) - expected) / expected)
        }
        #expect(worst < 2.5e-7, "worst relative error \(worst)")
    }

    @Test func logIsAccurate() {
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
        #expect(worst < 2.5e-7, "worst error \(worst)")
    }
}
