/// Matrix products through BLAS, with the transposes BLAS offers (no transposing copies).
extension Tensor {
    /// `op(self) x op(other)` for 2-D tensors, where `op` transposes when asked.
    ///
    /// - Parameters:
    ///   - other: the right factor.
    ///   - transposeSelf: use `self` transposed (`self` is `k x m`).
    ///   - transposeOther: use `other` transposed (`other` is `n x k`).
    public func matmul(_ other: Tensor, transposeSelf: Bool = false, transposeOther: Bool = false) -> Tensor {
        precondition(rank == 2 && other.rank == 2, "matmul needs 2-D tensors, got \(shape) and \(other.shape)")
        let (m, k) = transposeSelf ? (shape[1], shape[0]) : (shape[0], shape[1])
        let (k2, n) = transposeOther ? (other.shape[1], other.shape[0]) : (other.shape[0], other.shape[1])
        precondition(k == k2, "matmul: inner dimensions differ: \(shape)\(transposeSelf ? "ᵀ" : "") x \(other.shape)\(transposeOther ? "ᵀ" : "")")
        let out = Tensor(uninitializedShape: [m, n])
        Gemm.multiply(data, transposeA: transposeSelf, other.data, transposeB: transposeOther, into: out.data,
                      m: m, n: n, k: k)
        // Each factor's gradient reads only the other factor: keep a factor only when the other needs one.
        let aNeedsGrad = requiresGrad, bNeedsGrad = other.requiresGrad, aShape = shape, bShape = other.shape
        let savedA = bNeedsGrad ? detached() : nil, savedB = aNeedsGrad ? other.detached() : nil
        return out.recorded("matmul", [self, other]) { g in
            var ga: Tensor?, gb: Tensor?
            if aNeedsGrad, let b = savedB {
                let r = Tensor(uninitializedShape: aShape)
                if !transposeSelf {   // dA = dC op(B)^T
                    Gemm.multiply(g.data, b.data, transposeB: !transposeOther, into: r.data, m: m, n: k, k: n)
                } else {              // dA = op(B) dC^T
                    Gemm.multiply(b.data, transposeA: transposeOther, g.data, transposeB: true, into: r.data,
                                  m: k, n: m, k: n)
                }
                ga = r
            }
            if bNeedsGrad, let a = savedA {
                let r = Tensor(uninitializedShape: bShape)
                if !transposeOther {  // dB = op(A)^T dC
                    Gemm.multiply(a.data, transposeA: !transposeSelf, g.data, into: r.data, m: k, n: n, k: m)
                } else {              // dB = dC^T op(A)
                    Gemm.multiply(g.data, transposeA: true, a.data, transposeB: transposeSelf, into: r.data,
                                  m: n, n: k, k: m)
                }
                gb = r
            }
            return [ga, gb]
        }
    }
}
