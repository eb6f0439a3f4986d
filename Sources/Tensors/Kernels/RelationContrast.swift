import CKernels

/// The kernels of CRCD's relation contrast (Lechatelia/CRCD's `ContrastMemory` with the relation
/// features; `Distill.CRCDLoss` uses them): the fused NCE of one side with its hand-written gradient, and
/// the memories' momentum update. Every pointer CRCD needs lives here, beside the other kernels.
public enum RelationContrast {
    /// `M[rows] = normalize(m M[rows] + (1 - m) v)`, outside the graph. Every new row is computed from
    /// the memory as it was before the call; a row that appears twice in a batch takes the later
    /// sample's value (the reference's `index_copy_` leaves that case unspecified).
    public static func momentumUpdate(_ memory: Tensor, rows: [Int], with v: Tensor, momentum: Float) {
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
    /// - Parameter normaliser: Z; a negative value is replaced by this call's estimate.
    /// - Returns: the side's loss and its gradient with respect to `v` (for an upstream gradient of 1).
    public static func side(_ v: Tensor, memory: Tensor, indices: [Int], contrastIndices: [Int], negatives: Int,
                            temperature: Float, dataCount: Int, normaliser: inout Float) -> (loss: Float, gradient: Tensor) {
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
        // Parts fixed by the problem: the per-part sums, added in order, are the same at any thread count.
        let chunks = Parallelism.fixedRanges(b, costPerItem: b * k1 * (2 * d + 60))
        if normaliser < 0 {
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
            normaliser = Float(expSum / Double(b * b * k1) * Double(dataCount))
        }
        // One pass: the NCE loss and, since the loss is a scalar, its gradient for an upstream gradient of
        // 1 (the backward only scales it). dL/ds_i = sum_{n,k} g (w_hat - cos r_hat) / |r| with
        // g = dL/dcos and w_hat = (p - a + e)/|w| expanded so that the contrast rows and the anchors are
        // each summed once; a degenerate w_hat is 1/sqrt(d).
        let z = normaliser
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
        return (Float(-total / Double(rowsCount)), dv)
    }
}
