import CBLAS

/// Single-precision matrix products through OpenBLAS.
public enum Gemm {
    /// `C = alpha * op(A) op(B) + beta * C`, row-major, where `op(A)` is `m x k` and `op(B)` is `k x n`.
    ///
    /// - Parameters:
    ///   - transposeA: `A` is stored `k x m` and used transposed.
    ///   - transposeB: `B` is stored `n x k` and used transposed.
    ///   - lda, ldb, ldc: leading dimensions; default to the packed row lengths.
    public static func multiply(
        _ a: UnsafePointer<Float>, transposeA: Bool = false,
        _ b: UnsafePointer<Float>, transposeB: Bool = false,
        into c: UnsafeMutablePointer<Float>,
        m: Int, n: Int, k: Int, alpha: Float = 1, beta: Float = 0,
        lda: Int? = nil, ldb: Int? = nil, ldc: Int? = nil
    ) {
        guard m > 0, n > 0 else { return }
        guard k > 0 else {
            if beta == 0 {
                for row in 0..<m { (c + row * (ldc ?? n)).update(repeating: 0, count: n) }
            } else if beta != 1 {
                for row in 0..<m { Vector.scale(c + row * (ldc ?? n), by: beta, count: n) }
            }
            return
        }
        cblas_sgemm(CblasRowMajor,
                    transposeA ? CblasTrans : CblasNoTrans,
                    transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda ?? (transposeA ? m : k)),
                    b, Int32(ldb ?? (transposeB ? k : n)),
                    beta, c, Int32(ldc ?? n))
    }
}
