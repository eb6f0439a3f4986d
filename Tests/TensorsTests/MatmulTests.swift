import Testing
@testable import Tensors
import TestSupport

@Suite struct MatmulTests {
    @Test(arguments: [(false, false), (true, false), (false, true), (true, true)])
    func matmulGradient(_ flags: (Bool, Bool)) {
        let a = randn(flags.0 ? [5, 3] : [3, 5], seed: 1)
        let b = randn(flags.1 ? [4, 5] : [5, 4], seed: 2)
        expectGradients([a, b]) { $0[0].matmul($0[1], transposeSelf: flags.0, transposeOther: flags.1) }
    }

    @Test func matmulValues() {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let b = Tensor([7, 8, 9, 10, 11, 12], shape: [3, 2])
        #expect(a.matmul(b).scalars == [58, 64, 139, 154])
        #expect(a.matmul(a, transposeOther: true).scalars == [14, 32, 32, 77])
        #expect(a.matmul(a, transposeSelf: true).shape == [3, 3])
        #expect(b.matmul(a, transposeSelf: true, transposeOther: true).scalars == [58, 139, 64, 154])
    }

    @Test func linearGradient() {
        expectGradients([randn([4, 6], seed: 3), randn([5, 6], seed: 4), randn([5], seed: 5)]) {
            $0[0].linear(weight: $0[1], bias: $0[2])
        }
    }
}
