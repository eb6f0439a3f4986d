/// Iteration over the elements of a broadcast binary op: NumPy's rules (shapes aligned at the right,
/// a dimension of 1 stretches), with adjacent dimensions merged so that the innermost loop is as long
/// as possible.
struct BroadcastPlan {
    /// The result's shape.
    let outputShape: [Int]
    /// Merged dimensions; the last one is the inner run.
    private let dims: [Int]
    private let strideA: [Int]
    private let strideB: [Int]

    /// The plan for `a op b`, or `nil` when the shapes do not broadcast.
    init?(_ a: [Int], _ b: [Int]) {
        let rank = Swift.max(a.count, b.count)
        let pa = [Int](repeating: 1, count: rank - a.count) + a
        let pb = [Int](repeating: 1, count: rank - b.count) + b
        var out = [Int]()
        for (x, y) in zip(pa, pb) {
            guard x == y || x == 1 || y == 1 else { return nil }
            out.append(x == 1 ? y : x)
        }
        outputShape = out
        let sa = Tensor.strides(of: pa).enumerated().map { pa[$0.offset] == 1 ? 0 : $0.element }
        let sb = Tensor.strides(of: pb).enumerated().map { pb[$0.offset] == 1 ? 0 : $0.element }
        // Drop size-1 dimensions, then merge neighbours that are contiguous for both inputs.
        var d: [Int] = [], xa: [Int] = [], xb: [Int] = []
        for i in 0..<rank where out[i] != 1 {
            if let last = d.last, xa.last! == sa[i] * out[i], xb.last! == sb[i] * out[i] {
                d[d.count - 1] = last * out[i]
                xa[xa.count - 1] = sa[i]; xb[xb.count - 1] = sb[i]
            } else {
                d.append(out[i]); xa.append(sa[i]); xb.append(sb[i])
            }
        }
        if d.isEmpty { d = [1]; xa = [0]; xb = [0] }
        dims = d; strideA = xa; strideB = xb
    }

    /// Inner-run length and the inputs' strides along it (0 or the element stride).
    var innerCount: Int { dims.last! }
    var innerStrideA: Int { strideA.last! }
    var innerStrideB: Int { strideB.last! }

    /// Calls `body(outputOffset, offsetA, offsetB)` at the start of every inner run, in row-major order.
    func forEachRun(_ body: (Int, Int, Int) -> Void) {
        let outer = dims.count - 1
        let inner = dims.last!
        if outer == 0 { body(0, 0, 0); return }
        var index = [Int](repeating: 0, count: outer)
        var offA = 0, offB = 0, offOut = 0
        while true {
            body(offOut, offA, offB)
            offOut += inner
            var axis = outer - 1
            while axis >= 0 {
                index[axis] += 1
                offA += strideA[axis]; offB += strideB[axis]
                if index[axis] < dims[axis] { break }
                offA -= strideA[axis] * dims[axis]; offB -= strideB[axis] * dims[axis]
                index[axis] = 0
                axis -= 1
            }
            if axis < 0 { return }
        }
    }
}
