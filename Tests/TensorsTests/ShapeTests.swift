import Testing
@testable import Tensors
import TestSupport

@Suite struct ShapeTests {
    @Test func reshapeGradient() { expectGradients([randn([2, 3, 4], seed: 1)]) { $0[0].reshaped([4, -1]) * $0[0].reshaped([4, 6]) } }
    @Test func transposeGradient() { expectGradients([randn([3, 5], seed: 2)]) { $0[0].transposed() } }

    @Test(arguments: [0, 1, 2]) func concatenateGradient(_ axis: Int) {
        var b = [2, 3, 4]; b[axis] = 1
        var c = [2, 3, 4]; c[axis] = 2
        expectGradients([randn([2, 3, 4], seed: 3), randn(b, seed: 4), randn(c, seed: 5)]) {
            Tensor.concatenate($0, axis: axis)
        }
    }

    @Test(arguments: [0, 1]) func sliceGradient(_ axis: Int) {
        expectGradients([randn([4, 5], seed: 6)]) { $0[0].slice(axis: axis, start: 1, length: 2) }
    }

    @Test func shapeValues() {
        let a = Tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        #expect(a.transposed().scalars == [1, 4, 2, 5, 3, 6])
        #expect(a.reshaped([3, -1]).shape == [3, 2])
        let c = Tensor.concatenate([a, Tensor([7, 8], shape: [2, 1])], axis: 1)
        #expect(c.scalars == [1, 2, 3, 7, 4, 5, 6, 8])
        #expect(c.slice(axis: 1, start: 2, length: 2).scalars == [3, 7, 6, 8])
        #expect(Tensor.concatenate([a, a], axis: 0).shape == [4, 3])
        // A large transpose exercises the blocked copy.
        let big = randn([70, 45], seed: 7)
        let t = big.transposed()
        #expect(t.data[44 * 70 + 69] == big.data[69 * 45 + 44])
    }
}

@Suite struct GatherTests {
    @Test func indexSelectGradient() {
        expectGradients([randn([5, 3], seed: 1)]) { $0[0].indexSelect(rows: [4, 0, 4, 2]) }
    }

    @Test func indexCopyGradient() {
        expectGradients([randn([5, 3], seed: 2), randn([2, 3], seed: 3)]) { $0[0].indexCopy(rows: [3, 1], from: $0[1]) }
    }

    @Test func gatherScatterValues() {
        let x = Tensor([0, 1, 10, 11, 20, 21], shape: [3, 2])
        #expect(x.indexSelect(rows: [2, 2, 0]).scalars == [20, 21, 20, 21, 0, 1])
        let y = x.indexCopy(rows: [1], from: Tensor([-1, -2], shape: [1, 2]))
        #expect(y.scalars == [0, 1, -1, -2, 20, 21])
        #expect(x.scalars == [0, 1, 10, 11, 20, 21], "indexCopy must not modify its input")
    }
}
