import Testing
@testable import Tensors
import TestSupport

@Suite struct ArithmeticTests {
    static let shapePairs: [([Int], [Int])] = [
        ([3, 4], [3, 4]),   // same shape
        ([3, 4], [1, 4]),   // row broadcast
        ([3, 4], [3, 1]),   // column broadcast
        ([3, 4], [4]),      // rank-extending row
        ([2, 3, 4], [3, 1]),
        ([1, 4], [3, 1]),   // both broadcast
        ([3, 4], []),       // scalar tensor
    ]

    @Test(arguments: shapePairs) func addGradient(_ shapes: ([Int], [Int])) {
        expectGradients([randn(shapes.0, seed: 1), randn(shapes.1, seed: 2)]) { $0[0] + $0[1] }
    }

    @Test(arguments: shapePairs) func subGradient(_ shapes: ([Int], [Int])) {
        expectGradients([randn(shapes.0, seed: 3), randn(shapes.1, seed: 4)]) { $0[0] - $0[1] }
        expectGradients([randn(shapes.1, seed: 3), randn(shapes.0, seed: 4)]) { $0[0] - $0[1] }
    }

    @Test(arguments: shapePairs) func mulGradient(_ shapes: ([Int], [Int])) {
        expectGradients([randn(shapes.0, seed: 5), randn(shapes.1, seed: 6)]) { $0[0] * $0[1] }
    }

    @Test(arguments: shapePairs) func divGradient(_ shapes: ([Int], [Int])) {
        expectGradients([randn(shapes.0, seed: 7), uniform(shapes.1, 0.5, 2, seed: 8)]) { $0[0] / $0[1] }
    }

    @Test func scalarOpsGradient() {
        expectGradients([randn([3, 5], seed: 9)]) { ((($0[0] * 3) + 1) - 0.5) / 4 }
        expectGradients([randn([3, 5], seed: 10)]) { 2 - (-$0[0]) * 0.5 }
    }

    @Test func broadcastValues() {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let row = Tensor([10, 20, 30], shape: [1, 3])
        let column = Tensor([100, 200], shape: [2, 1])
        #expect((a + row).scalars == [11, 22, 33, 14, 25, 36])
        #expect((a - column).scalars == [-99, -98, -97, -196, -195, -194])
        #expect((a * column).shape == [2, 3])
        #expect((row + column).scalars == [110, 120, 130, 210, 220, 230])
        #expect((a / Tensor(scalar: 2)).scalars == [0.5, 1, 1.5, 2, 2.5, 3])
    }

    @Test func sumToShapeIsAdjointOfBroadcast() {
        let g = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        #expect(g.sum(toShape: [1, 3]).scalars == [5, 7, 9])
        #expect(g.sum(toShape: [2, 1]).scalars == [6, 15])
        #expect(g.sum(toShape: [3]).scalars == [5, 7, 9])
        #expect(g.sum(toShape: []).scalars == [21])
    }
}
