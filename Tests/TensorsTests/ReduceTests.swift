import Testing
@testable import Tensors
import TestSupport

@Suite struct ReduceTests {
    @Test func sumAllGradient() { expectGradients([randn([3, 4], seed: 1)]) { $0[0].sum() } }
    @Test func meanAllGradient() { expectGradients([randn([3, 4], seed: 2)]) { $0[0].mean() } }

    @Test(arguments: [0, 1, 2, -1]) func sumAxisGradient(_ axis: Int) {
        expectGradients([randn([3, 4, 5], seed: 3)]) { $0[0].sum(axis: axis) }
        expectGradients([randn([3, 4, 5], seed: 4)]) { $0[0].sum(axis: axis, keepingDimension: true) }
    }

    @Test(arguments: [0, 1, 2]) func meanAxisGradient(_ axis: Int) {
        expectGradients([randn([3, 4, 5], seed: 5)]) { $0[0].mean(axis: axis) }
    }

    @Test(arguments: [0, 1, 2]) func maxAxisGradient(_ axis: Int) {
        // Distinct values, spaced wider than the finite-difference step.
        let values = (0..<60).map { Float(($0 * 37) % 60) * 0.1 }
        let x = Tensor(values, shape: [3, 4, 5])
        expectGradients([x]) { $0[0].max(axis: axis).values }
    }

    @Test func reductionValues() {
        let x = Tensor([1, 5, 3, 4, 2, 6], shape: [2, 3])
        #expect(x.sum(axis: 0).scalars == [5, 7, 9])
        #expect(x.sum(axis: 1).scalars == [9, 12])
        #expect(x.mean(axis: 1, keepingDimension: true).shape == [2, 1])
        let (m, idx) = x.max(axis: 1)
        #expect(m.scalars == [5, 6])
        #expect(idx == [1, 2])
        #expect(x.sum().item == 21)
    }

    @Test func maxTieGoesToFirstIndex() {
        let x = Tensor([2, 7, 7, 1], shape: [1, 4])
        x.requiresGrad = true
        let (m, idx) = x.max(axis: 1)
        #expect(idx == [1])
        m.sum().backward()
        #expect(x.grad!.scalars == [0, 1, 0, 0])
    }
}
