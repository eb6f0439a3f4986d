import Foundation
import Synchronization
import Testing
import CBLAS
@testable import Tensors

/// `Gemm.multiply` on every path this CPU has (OpenBLAS, Cohort's AVX2 kernel, its AVX-512 kernel), each
/// forced in turn, against a double-precision reference, over shapes that cross every tile edge and cache
/// block: m around the 8-row tile (and the AVX2 kernel's 4-row passes) and the 256-row block, n around
/// the 16-, 24- and 32-column tiles and the 2040- and 2048-column blocks, k around the 256-deep block and
/// odd (the AVX2 loop takes two rows per turn).
@Suite struct GemmTests {
    struct Case: CustomStringConvertible, Sendable {
        let m, n, k: Int
        let transposeA, transposeB: Bool
        let alpha, beta: Float
        let padding: Int   // extra leading-dimension elements
        var description: String { "\(m)x\(n)x\(k) tA=\(transposeA) tB=\(transposeB) alpha=\(alpha) beta=\(beta) pad=\(padding)" }
    }

    static let cases: [Case] = {
        var result: [Case] = []
        let shapes = [(1, 1, 1), (8, 32, 1), (7, 31, 5), (9, 33, 17), (16, 64, 256), (17, 65, 257), (64, 500, 144),
                      (263, 70, 300), (24, 2050, 40), (3, 5, 600), (16, 48, 33), (40, 16, 70),
                      (4, 16, 9), (5, 17, 8), (12, 40, 31),
                      (8, 24, 7), (11, 23, 13), (3, 2041, 9), (16, 72, 2), (9, 49, 1)]
        for (index, (m, n, k)) in shapes.enumerated() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let alpha: Float = index % 3 == 0 ? 1 : 0.5
                let beta: Float = [0, 1, -0.75][index % 3]
                result.append(Case(m: m, n: n, k: k, transposeA: ta, transposeB: tb, alpha: alpha, beta: beta,
                                   padding: index % 2 == 0 ? 0 : 3))
            }
        }
        return result
    }()

    @Test(arguments: cases)
    func matchesReference(_ c: Case) {
        for path in Gemm.availablePaths { Gemm.withPath(path) { check(c, path) } }
    }

    func check(_ c: Case, _ path: Gemm.Path) {
        var g = SeededGenerator(seed: UInt64(c.m * 131 + c.n * 7 + c.k))
        let lda = (c.transposeA ? c.m : c.k) + c.padding, ldb = (c.transposeB ? c.k : c.n) + c.padding
        let ldc = c.n + c.padding
        let a = Tensor.randomNormal([(c.transposeA ? c.k : c.m) * lda], using: &g)
        let b = Tensor.randomNormal([(c.transposeB ? c.n : c.k) * ldb], using: &g)
        let initial = Tensor.randomNormal([c.m * ldc], using: &g)
        let out = initial.copy()
        if c.beta == 0 { out.data.update(repeating: .nan, count: c.m * ldc) }   // must not be read
        Gemm.multiply(a.data, transposeA: c.transposeA, b.data, transposeB: c.transposeB, into: out.data,
                      m: c.m, n: c.n, k: c.k, alpha: c.alpha, beta: c.beta, lda: lda, ldb: ldb, ldc: ldc)
        var worst = 0.0
        for i in 0..<c.m {
            for j in 0..<c.n {
                var sum = 0.0, magnitude = 0.0
                for p in 0..<c.k {
                    let x = Double(c.transposeA ? a.data[p * lda + i] : a.data[i * lda + p])
                    let y = Double(c.transposeB ? b.data[j * ldb + p] : b.data[p * ldb + j])
                    sum += x * y; magnitude += abs(x * y)
                }
                let expected = Double(c.alpha) * sum + (c.beta == 0 ? 0 : Double(c.beta) * Double(initial.data[i * ldc + j]))
                let error = abs(Double(out.data[i * ldc + j]) - expected) / (magnitude + 1)
                worst = max(worst, error.isNaN ? .infinity : error)
            }
        }
        #expect(worst < 1e-5, "\(path), \(c): worst relative error \(worst)")
        // The padding between rows of C is left alone.
        if c.padding > 0 && c.beta != 0 {
            for i in 0..<c.m { for j in c.n..<ldc { #expect(out.data[i * ldc + j] == initial.data[i * ldc + j]) } }
        }
    }

    /// Cohort's kernels sum every element's products in order, one FMA chain: the AVX2 and AVX-512 paths
    /// give the same bits. Only a CPU with AVX-512 has two own paths to compare; on an AVX2-only CPU this
    /// check has nothing to compare and the AVX2 path is covered by the reference test above.
    @Test func ownPathsGiveTheSameBits() {
        var g = SeededGenerator(seed: 11)
        let (m, n, k) = (37, 531, 300)
        let a = Tensor.randomNormal([m, k], using: &g), b = Tensor.randomNormal([k, n], using: &g)
        let own = Gemm.availablePaths.filter { $0 != .blas }
        let results = own.map { path in
            Gemm.withPath(path) { () -> [Float] in
                let out = Tensor(uninitializedShape: [m, n])
                Gemm.multiply(a.data, b.data, into: out.data, m: m, n: n, k: k)
                return out.scalars
            }
        }
        #expect(results.dropFirst().allSatisfy { $0 == results[0] }, "\(own)")
        #expect(Gemm.withPath(.blas) { Gemm.path } == .blas && Gemm.withPath(.avx512) { Gemm.path } == Gemm.capability)
    }

    /// A path forced with `withPath` reaches the workers `Parallelism` runs for the caller (a convolution's
    /// images split across threads then all run on it), and the calling thread keeps its own choice after.
    /// The two ranges wait for each other (at most 2 s) so that, whenever the thread pool has a thread to
    /// spare, a worker other than the caller records its path; the check is on the paths only, so a busy pool
    /// weakens the test for that run but cannot fail it.
    @Test func forcedPathReachesTheWorkers() {
        for path in Gemm.availablePaths {
            let seen = Mutex<[Gemm.Path]>([]), arrived = Atomic<Int>(0)
            Gemm.withPath(path) {
                Parallelism.withThreadCount(2) {
                    Parallelism.run([0..<1, 1..<2]) { _, _ in
                        arrived.add(1, ordering: .sequentiallyConsistent)
                        let deadline = DispatchTime.now().uptimeNanoseconds + 2_000_000_000
                        while arrived.load(ordering: .sequentiallyConsistent) < 2 && DispatchTime.now().uptimeNanoseconds < deadline {
                            sched_yield()
                        }
                        seen.withLock { $0.append(Gemm.path) }
                    }
                }
                #expect(Gemm.path == path)
            }
            let paths = seen.withLock { $0 }
            #expect(paths.count == 2 && paths.allSatisfy { $0 == path }, "\(path): workers ran \(paths)")
        }
    }

    /// The two back ends agree (on CPUs without AVX-512 or AVX2 both are OpenBLAS).
    @Test func agreesWithOpenBLAS() {
        var g = SeededGenerator(seed: 9)
        let (m, n, k) = (64, 1000, 576)
        let a = Tensor.randomNormal([m, k], using: &g), b = Tensor.randomNormal([k, n], using: &g)
        let ours = Tensor(uninitializedShape: [m, n]), blas = Tensor(uninitializedShape: [m, n])
        Gemm.multiply(a.data, b.data, into: ours.data, m: m, n: n, k: k)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), 1, a.data, Int32(k),
                    b.data, Int32(n), 0, blas.data, Int32(n))
        let difference = (0..<(m * n)).map { abs(ours.data[$0] - blas.data[$0]) }.max()!
        #expect(difference < 1e-3)
    }
}
