import Foundation
import CKernels
import Tensors
import NN

/// Complementary Relation Contrastive Distillation (Lechatelia/CRCD, `CRCDLoss` with `ContrastMemory`).
///
/// Embeddings `v_s = normalize(embed_s(f_s))`, `v_t = normalize(embed_t(f_t))`; two momentum memories
/// of unit rows, `memory_v1` (student side, M_s) and `memory_v2` (teacher side, M_t), `n_data x d`.
/// For the batch's data-set indices `idx` and contrast indices `cidx` (`B x (K+1)`, column 0 = `idx`):
///
///     student side: A = M_t[idx]; r[a,n] = normalize(v_s[a] - A[n] + 1e-6)
///                   w[a,n,k] = normalize(M_t[cidx[a,k]] - A[n] + 1e-6)
///                   out_s[a,n,k] = exp(<w, r> / T) / Z_s
///     teacher side: the mirror image with v_t and M_s.
///     loss = NCE(out_s) + NCE(out_t);  then M[idx] = normalize(m M[idx] + (1 - m) v)
///
/// `Z_s`, `Z_t` are set on the first call to `mean(exp(<w, r>/T)) * n_data` and kept (`contrast.params`).
///
/// The `B x B x (K+1) x d` relation tensor is never formed: `<w, r>` and the norms follow from Gram
/// matrices (one `sgemm` of the gathered contrast rows against the anchors per side), and the backward
/// pass is written out by hand. Entries whose contrast index equals the anchor's index degenerate to
/// `w = normalize(1e-6 * 1)`; they are recognised by comparing indices, not by trusting cancellation.
/// Memory is O(B * B * (K+1)) floats.
public final class CRCDLoss: Module {
    /// `normalize(linear(x))`, with the key layout `linear.weight`, `linear.bias` of the reference.
    public final class Embed: Module {
        public let linear: Linear
        init(inputCount: Int, dimension: Int, generator: inout SeededGenerator) {
            linear = Linear(inputCount: inputCount, outputCount: dimension, generator: &generator)
            super.init()
        }
        public override var children: [(String, Module)] { [("linear", linear)] }
        public func callAsFunction(_ x: Tensor) -> Tensor { linear(x).normalizedRows() }
    }

    /// The two memories and `params = [K, T, Z_s, Z_t, momentum]` (key prefix `contrast.`).
    public final class Memory: Module {
        public let params: Tensor
        public let memoryStudent: Tensor
        public let memoryTeacher: Tensor
        init(rows: Int, dimension: Int, negatives: Int, temperature: Float, momentum: Float, generator: inout SeededGenerator) {
            params = Tensor([Float(negatives), temperature, -1, -1, momentum], shape: [5])
            let bound = 1 / (Float(dimension) / 3).squareRoot()
            memoryStudent = Tensor.randomUniform([rows, dimension], low: -bound, high: bound, using: &generator).normalizedRows()
            memoryTeacher = Tensor.randomUniform([rows, dimension], low: -bound, high: bound, using: &generator).normalizedRows()
            super.init()
        }
        public override var ownBuffers: [(String, Tensor)] {
            [("params", params), ("memory_v1", memoryStudent), ("memory_v2", memoryTeacher)]
        }
    }

    public let embedStudent: Embed
    public let embedTeacher: Embed
    public let contrast: Memory

    public var negatives: Int { Int(contrast.params.data[0]) }
    public var temperature: Float { contrast.params.data[1] }
    public var momentum: Float { contrast.params.data[4] }
    public var dataCount: Int { contrast.memoryStudent.shape[0] }

    /// - Parameters:
    ///   - dataCount: n_data, the training set's size (rows of each memory).
    ///   - negatives: K, contrast samples per anchor (500 in the paper).
    public init(studentDimension: Int, teacherDimension: Int, dimension: Int = 128, dataCount: Int, negatives: Int = 500,
                temperature: Float = 0.05, momentum: Float = 0.5, generator: inout SeededGenerator) {
        embedStudent = Embed(inputCount: studentDimension, dimension: dimension, generator: &generator)
        embedTeacher = Embed(inputCount: teacherDimension, dimension: dimension, generator: &generator)
        contrast = Memory(rows: dataCount, dimension: dimension, negatives: negatives, temperature: temperature,
                          momentum: momentum, generator: &generator)
        super.init()
    }

    public override var children: [(String, Module)] {
        [("embed_s", embedStudent), ("embed_t", embedTeacher), ("contrast", contrast)]
    }

    /// Contrast indices for a batch: column 0 is the sample's own index, the others uniform over the
    /// data set, drawn from `generator`.
    public func contrastIndices(for indices: [Int], using generator: inout SeededGenerator) -> [Int] {
        var result: [Int] = []
        result.reserveCapacity(indices.count * (negatives + 1))
        for i in indices {
            result.append(i)
            for _ in 0..<negatives { result.append(Int(generator.next() % UInt64(dataCount))) }
        }
        return result
    }

    /// The CRCD loss of student features `f_s` and teacher features `f_t` (`B x dim`) for data-set
    /// indices `indices`, with contrast indices `contrastIndices` (`B * (K+1)`, row-major). Moves the
    /// memories afterwards, and sets the normalisers on the first call.
    public func callAsFunction(student: Tensor, teacher: Tensor, indices: [Int], contrastIndices: [Int]) -> Tensor {
        let b = student.shape[0], k1 = negatives + 1
        precondition(teacher.shape[0] == b && indices.count == b && contrastIndices.count == b * k1,
                     "CRCD: \(b) students, \(teacher.shape[0]) teachers, \(indices.count) indices, \(contrastIndices.count) contrast indices for K = \(negatives)")
        let vs = embedStudent(student), vt = embedTeacher(teacher)
        let studentSide = CRCDLoss.side(vs, memory: contrast.memoryTeacher, indices: indices, contrastIndices: contrastIndices,
                                        negatives: negatives, temperature: temperature, dataCount: dataCount,
                                        normaliser: contrast.params.data + 2)
        let teacherSide = CRCDLoss.side(vt, memory: contrast.memoryStudent, indices: indices, contrastIndices: contrastIndices,
                                        negatives: negatives, temperature: temperature, dataCount: dataCount,
                                        normaliser: contrast.params.data + 3)
        CRCDLoss.update(contrast.memoryStudent, rows: indices, with: vs, momentum: momentum)
        CRCDLoss.update(contrast.memoryTeacher, rows: indices, with: vt, momentum: momentum)
        return studentSide + teacherSide
    }

    /// `M[rows] = normalize(m M[rows] + (1 - m) v)`, outside the graph. Every new row is computed from
    /// the memory as it was before the call; a row that appears twice in a batch takes the later
    /// sample's value (the reference's `index_copy_` leaves that case unspecified).
    static func update(_ memory: Tensor, rows: [Int], with v: Tensor, momentum: Float) {
        let d = memory.shape[1]
        let updated = Tensor(uninitializedShape: [rows.count, d])
        for (i, r) in rows.enumerated() {
            let old = memory.data + r * d, src = v.data + i * d, out = updated.data + i * d
            var norm: Float = 0
            for j in 0..<d { out[j] = old[j] * momentum + src[j] * (1 - momentum); norm += out[j] * out[j] }
            let inv = 1 / norm.squareRoot()
            for j in 0..<d { out[j] *= inv }
        }
        for (i, r) in rows.enumerated() { (memory.data + r * d).update(from: updated.data + i * d, count: d) }
    }

    /// One side: the NCE loss of `exp(<w, r>/T)/Z` for the unit embeddings `v` (`B x d`, in the graph)
    /// against the (constant) memory rows, with a hand-written backward.
    ///
    /// Work is split by sample `i` across threads. For each `i`, the thread gathers its K+1 contrast rows
    /// `P_i` (`K1 x d`), multiplies the anchors against them (`PA_i = A P_i^T`, `B x K1`, contiguous in k),
    /// and runs the per-entry kernel (`cohort_crcd_row`: cosines, exp, log, dL/dcos and the gradient's
    /// coefficients, vectorised) over each anchor's row while `PA_i` is still in cache.
    ///
    /// - Parameter normaliser: where Z lives; a negative value there is replaced by this call's estimate.
    static func side(_ v: Tensor, memory: Tensor, indices: [Int], contrastIndices: [Int], negatives: Int,
                     temperature: Float, dataCount: Int, normaliser: UnsafeMutablePointer<Float>) -> Tensor {
        let b = v.shape[0], d = v.shape[1], k1 = negatives + 1
        let eps: Float = 1e-6, sqrtD = Float(d).squareRoot(), dEps2 = Float(d) * eps * eps
        let anchors = withNoGrad { memory.indexSelect(rows: indices) }
        let perAnchor = Tensor(uninitializedShape: [2, b])            // sum(a_n), |a_n|^2
        let perPair = Tensor(uninitializedShape: [3, b * b])          // |r|, sum(r), <a_n, s_i>
        let s = v.data, a = anchors.data, rows = memory.data
        let sumA = perAnchor.data, normA = perAnchor.data + b
        let rNorm = perPair.data, rSum = perPair.data + b * b, aDotS = perPair.data + 2 * b * b
        for n in 0..<b { sumA[n] = Vector.sum(a + n * d, count: d); normA[n] = Vector.dot(a + n * d, a + n * d, count: d) }
        Parallelism.forEachChunk(b, costPerItem: b * d * 3) { range in
            for i in range {
                // r[i,n] = s_i - a_n + eps, formed explicitly (B x B x d is small).
                for n in 0..<b {
                    var q: Float = 0, sum: Float = 0
                    for j in 0..<d { let r = s[i * d + j] - a[n * d + j] + eps; q += r * r; sum += r }
                    rNorm[i * b + n] = Swift.max(q.squareRoot(), 1e-12); rSum[i * b + n] = sum
                    aDotS[i * b + n] = Vector.dot(a + n * d, s + i * d, count: d)
                }
            }
        }
        let anchorIndices = indices.map(Int64.init)
        let contrast = contrastIndices.map(Int64.init)
        /// A thread's buffers for one sample: its contrast rows, their sums, squared norms and products
        /// with `s_i`, the anchors' products with them, and the gradient's per-row coefficients.
        struct Scratch {
            let storage: Tensor
            let p, sumP, normP, ps, pa, cw: UnsafeMutablePointer<Float>
            init(b: Int, k1: Int, d: Int) {
                storage = Tensor(uninitializedShape: [k1 * d + 4 * k1 + b * k1])
                p = storage.data; sumP = p + k1 * d; normP = sumP + k1; ps = normP + k1; cw = ps + k1; pa = cw + k1
            }
        }
        func prepare(_ i: Int, _ t: Scratch) {
            contrast.withUnsafeBufferPointer { cb in cohort_gather_rows(rows, cb.baseAddress! + i * k1, k1, d, t.p) }
            for k in 0..<k1 {
                let row = t.p + k * d
                t.sumP[k] = Vector.sum(row, count: d); t.normP[k] = Vector.dot(row, row, count: d)
                t.ps[k] = Vector.dot(row, s + i * d, count: d)
            }
            Gemm.multiply(a, t.p, transposeB: true, into: t.pa, m: b, n: k1, k: d)
        }
        // Per (i, n): the terms of <w, r> and |w| that do not depend on k.
        @inline(__always) func pairTerms(_ i: Int, _ n: Int) -> (r: Float, base: Float, wBase: Float, degenerateCos: Float) {
            let r = rNorm[i * b + n]
            let sumS = rSum[i * b + n] - Float(d) * eps + sumA[n]
            // <p - a + e, s - a + e> = <p, s> - <p, a> + eps sum(p) - base
            let base = aDotS[i * b + n] - normA[n] - eps * (sumS - 2 * sumA[n]) - dEps2
            let wBase = normA[n] - 2 * eps * sumA[n] + dEps2
            // A degenerate w = normalize(eps * 1) = 1/sqrt(d): <w, r> = sum(r_raw) / (sqrt(d) |r|).
            return (r, base, wBase, rSum[i * b + n] / (sqrtD * r))
        }
        let invT = 1 / temperature
        let chunks = Parallelism.ranges(b, costPerItem: b * k1 * (2 * d + 60))
        if normaliser.pointee < 0 {
            // First call: Z = mean(exp(<w, r>/T)) * n_data, from one extra pass.
            let sums = Tensor.zeros([Swift.max(chunks.count, 1)])
            let sumData = sums.data
            Parallelism.run(chunks) { chunk, range in
                let t = Scratch(b: b, k1: k1, d: d)
                var total = 0.0
                for i in range {
                    prepare(i, t)
                    for n in 0..<b {
                        let q = pairTerms(i, n)
                        total += contrast.withUnsafeBufferPointer { c in
                            cohort_crcd_exp_sum(k1, t.pa + n * k1, t.normP, t.sumP, t.ps, c.baseAddress! + i * k1,
                                                anchorIndices[n], q.r, q.base, q.wBase, q.degenerateCos, eps, invT)
                        }
                    }
                }
                withExtendedLifetime(t.storage) {}
                sumData[chunk] = Float(total)
            }
            let expSum = withExtendedLifetime(sums) { (0..<chunks.count).reduce(0.0) { $0 + Double(sumData[$1]) } }
            normaliser.pointee = Float(expSum / Double(b * b * k1) * Double(dataCount))
        }
        // One pass: the NCE loss and, since the loss is a scalar, its gradient for an upstream gradient of
        // 1 (the backward only scales it). dL/ds_i = sum_{n,k} g (w_hat - cos r_hat) / |r| with
        // g = dL/dcos and w_hat = (p - a + e)/|w| expanded so that the contrast rows and the anchors are
        // each summed once; a degenerate w_hat is 1/sqrt(d).
        let z = normaliser.pointee
        let rowsCount = Float(b * b), mPn = Float(negatives) / Float(dataCount), c = mPn + 1e-7
        let dv = Tensor.zeros([b, d])
        let dvData = dv.data
        let anchorWeights = Tensor(uninitializedShape: [b, b])
        let anchorWeight = anchorWeights.data
        let partial = Tensor.zeros([Swift.max(chunks.count, 1)])
        let partialData = partial.data
        Parallelism.run(chunks) { chunk, range in
            let t = Scratch(b: b, k1: k1, d: d)
            let sums = Tensor(uninitializedShape: [3])
            var loss = 0.0
            for i in range {
                prepare(i, t)
                let out = dvData + i * d
                var selfWeight: Float = 0, uniform: Float = 0
                t.cw.update(repeating: 0, count: k1)
                for n in 0..<b {
                    let q = pairTerms(i, n)
                    loss += contrast.withUnsafeBufferPointer { cb in
                        cohort_crcd_row(k1, t.pa + n * k1, t.normP, t.sumP, t.ps, cb.baseAddress! + i * k1, anchorIndices[n],
                                        q.r, q.base, q.wBase, q.degenerateCos, eps, invT, 1 / z, c, mPn,
                                        1 / (temperature * rowsCount), t.cw, sums.data)
                    }
                    let cosTerm = sums.data[0], hSum = sums.data[1], degenerateSum = sums.data[2]
                    // - cosTerm (s - a + e) / |r|^2, and the w_hat terms' anchor and eps shares.
                    let weight = cosTerm / (q.r * q.r)
                    selfWeight -= weight
                    uniform += hSum * eps + degenerateSum / (sqrtD * q.r) - weight * eps
                    anchorWeight[i * b + n] = weight - hSum
                }
                Vector.axpy(selfWeight, s + i * d, out, count: d)
                for j in 0..<d { out[j] += uniform }
                for k in 0..<k1 { Vector.axpy(t.cw[k], t.p + k * d, out, count: d) }
            }
            withExtendedLifetime((t.storage, sums)) {}
            partialData[chunk] = Float(loss)
        }
        // The anchors' share for all rows at once: dV += anchorWeight (B x B) x A (B x d).
        Gemm.multiply(anchorWeight, a, into: dvData, m: b, n: d, k: b, beta: 1)
        let total = (0..<chunks.count).reduce(0.0) { $0 + Double(partialData[$1]) }
        withExtendedLifetime((anchors, perAnchor, perPair, anchorWeights, partial)) {}
        let out = Tensor(scalar: Float(-total / Double(rowsCount)))
        return out.recorded("crcdSide", [v]) { upstream in [dv * upstream.item] }
    }
}

/// CRCD's "gradient element": for a linear classifier, the gradient of the mean cross-entropy with
/// respect to the feature, `g = (softmax(W f + b) - onehot(y)) W / B`, built from ordinary
/// differentiable ops, so a loss on `g` back-propagates to `f`, `W` and `b` (second order without a
/// double backward).
public func gradientElement(feature: Tensor, weight: Tensor, bias: Tensor?, labels: [Int]) -> Tensor {
    let batch = feature.shape[0], classes = weight.shape[0]
    let oneHot = Tensor.zeros([batch, classes])
    for (i, y) in labels.enumerated() { oneHot.data[i * classes + y] = 1 }
    let probabilities = feature.linear(weight: weight, bias: bias).softmax()
    return (probabilities - oneHot).matmul(weight) * (1 / Float(batch))
}

/// The distillation weight over training: the "mimic" schedule of the CRCD repository (1 until the last
/// 1/25 of the iterations, then 0), a constant, or a linear decay to 0.
public enum DistillationWeightSchedule: String, Sendable, Codable, CaseIterable {
    case mimic, constant, linearDecay = "linear-decay"

    /// The weight at `step` of `total` steps.
    public func weight(step: Int, total: Int) -> Float {
        switch self {
        case .constant: return 1
        case .mimic: return step < total - total / 25 ? 1 : 0
        case .linearDecay: return total > 0 ? Swift.max(0, 1 - Float(step) / Float(total)) : 1
        }
    }
}
