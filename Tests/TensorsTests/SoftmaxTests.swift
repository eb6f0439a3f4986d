import Testing
@testable import Tensors
import TestSupport

@Suite struct SoftmaxTests {
    @Test func softmaxGradient() { expectGradients([randn([4, 7], seed: 1, std: 2)]) { $0[0].softmax() } }
    @Test func logSoftmaxGradient() { expectGradients([randn([4, 7], seed: 2, std: 2)]) { $0[0].logSoftmax() } }
    @Test func normalizedRowsGradient() { expectGradients([randn([5, 6], seed: 3)]) { $0[0].normalizedRows() } }

    @Test func softmaxRowsSumToOneAndAreStable() {
        let x = Tensor([1000, 1001, 1002, -5, 0, 5], shape: [2, 3])
        let s = x.softmax().scalars
        #expect(abs(s[0] + s[1] + s[2] - 1) < 1e-6)
        #expect(abs(s[2] - 0.66524096) < 1e-6)
        let l = x.logSoftmax().scalars
        #expect(abs(l[2] - (-0.40760596)) < 1e-5)
    }

    @Test func normalizedRowsHaveUnitNormAndClampZero() {
        let x = Tensor([3, 4, 0, 0], shape: [2, 2])
        #expect(x.normalizedRows().scalars == [0.6, 0.8, 0, 0])
    }
}
