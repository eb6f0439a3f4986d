import CBLAS
import CKernels

/// Single-precision matrix products: Cohort's own kernels where the CPU has AVX-512 or AVX2 + FMA, OpenBLAS
/// otherwise (or when `COHORT_GEMM=blas` is set, for comparisons; `COHORT_GEMM=avx2` runs the AVX2 kernels on
/// an AVX-512 CPU). With Cohort's kernels the stride-1 convolutions also run without lowering. The AVX2 and
/// AVX-512 kernels give the same bits for alpha = 1 and beta = 0 or 1, the only ones Cohort uses.
public enum Gemm {
    /// OpenBLAS runs single-threaded in every process, whether or not ``Parallelism/setThreadCount(_:)``
    /// was called: its own threads would split products by the machine's core count, and the results
    /// must depend on the problem alone.
    static let singleThreadedBLAS: Void = openblas_set_num_threads(1)

    /// Where products run.
    public enum Path: Int32, Sendable, CaseIterable, CustomStringConvertible {
        case blas = 0, avx2 = 1, avx512 = 2
        public var description: String {
            switch self {
            case .blas: "OpenBLAS"
            case .avx2: "Cohort's AVX2 kernel"
            case .avx512: "Cohort's AVX-512 kernel"
            }
        }
    }

    /// The path in force in this process.
    public static var path: Path { Path(rawValue: Int32(cohort_sgemm_level())) ?? .blas }

    /// The best path this CPU has.
    public static var capability: Path { Path(rawValue: Int32(cohort_sgemm_capability())) ?? .blas }

    /// The paths this CPU can run, from BLAS up to its best.
    public static var availablePaths: [Path] { Path.allCases.filter { $0.rawValue <= capability.rawValue } }

    /// Runs `body` with `path` (at most the CPU's best) in force on the calling thread and on the workers
    /// that ``Parallelism`` runs for it: for tests that compare the paths. Other threads keep theirs.
    public static func withPath<R>(_ path: Path, _ body: () throws -> R) rethrows -> R {
        cohort_sgemm_force(Int32(path.rawValue))
        defer { cohort_sgemm_force(-1) }
        return try body()
    }

    /// Whether products run on one of Cohort's kernels in this process.
    public static var usesOwnKernel: Bool { path != .blas }

    /// Whether stride-1 convolutions run without lowering (Cohort's AVX-512 or AVX2 kernels).
    public static var usesShiftedConvolutions: Bool { path != .blas }

    /// `C = alpha * op(A) op(B) + beta * C`, row-major, where `op(A)` is `m x k` and `op(B)` is `k x n`.
    /// With `beta == 0`, `C`'s old contents are not read.
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
        let ldc = ldc ?? n
        guard k > 0 else {
            if beta == 0 {
                for row in 0..<m { (c + row * ldc).update(repeating: 0, count: n) }
            } else if beta != 1 {
                for row in 0..<m { Vector.scale(c + row * ldc, by: beta, count: n) }
            }
            return
        }
        let lda = lda ?? (transposeA ? m : k), ldb = ldb ?? (transposeB ? k : n)
        if cohort_sgemm(transposeA ? 1 : 0, transposeB ? 1 : 0, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) != 0 {
            return
        }
        _ = singleThreadedBLAS
        cblas_sgemm(CblasRowMajor,
                    transposeA ? CblasTrans : CblasNoTrans,
                    transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb),
                    beta, c, Int32(ldc))
    }
}
