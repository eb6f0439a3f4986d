import Testing
@testable import Tensors
import TestSupport

@Suite struct UnaryTests {
    @Test func expGradient() { expectGradients([randn([4, 6], seed: 1)]) { $0[0].exp() } }
    @Test func logGradient() { expectGradients([uniform([4, 6], 0.5, 3, seed: 2)]) { $0[0].log() } }
    @Test func sqrtGradient() { expectGradients([uniform([4, 6], 0.5, 3, seed: 3)]) { $0[0].sqrt() } }
    @Test func squaredGradient() { expectGradients([randn([4, 6], seed: 4)]) { $0[0].squared() } }

    @Test func reluGradient() {
        // Keep every element away from the kink so finite differences do not straddle it.
        let x = randn([5, 7], seed: 5)
        for i in 0..<x.count where abs(x.data[i]) < 0.05 { x.data[i] = 0.3 }
        expectGradients([x]) { $0[0].relu() }
    }

    @Test func reluValuesAndTie() {
        let x = Tensor([-1, 0, 2, -0.5, 3, 0, 1, -2, 4], shape: [9])
        x.requiresGrad = true
        let y = x.relu()
        #expect(y.scalars == [0, 0, 2, 0, 3, 0, 1, 0, 4])
        y.sum().backward()
        #expect(x.grad!.scalars == [0, 0, 1, 0, 1, 0, 1, 0, 1])
    }
}
