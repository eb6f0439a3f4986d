import CKernels

/// The arithmetic of batch normalisation over the channel axis of `n x c x plane` values, shared by the ops
/// that normalise (``Tensor/batchNorm(weight:bias:runningMean:runningVariance:training:momentum:epsilon:)``
/// and its fused forms) and by those that normalise again in their backward pass instead of keeping the
/// normalised tensor (``Tensor/batchNormReLUConv2d(normWeight:normBias:runningMean:runningVariance:training:momentum:epsilon:convWeight:convBias:stride:padding:)``).
///
/// Channels are split across threads; each channel's sums run in an order fixed by the shape, so the results
/// are the same at any thread count. On Cohort's AVX2 and AVX-512 paths the per-channel loops run in C
/// (`cohort_bn_*`: the element-wise passes with these loops' bits, the sums in one 16-lane order on both
/// paths); the Swift loops below serve the BLAS path and other CPUs.
struct BatchNormKernel {
    let n: Int
    let c: Int
    let plane: Int
    /// Values per channel.
    var m: Int { n * plane }

    init(shape: [Int]) {
        n = shape[0]; c = shape[1]
        plane = Tensor.count(of: shape) / Swift.max(n * c, 1)
    }

    /// What follows the affine map `x * scale + shift`.
    enum Join {
        case none
        case relu
        /// `max(x * scale + shift + residual, 0)`, the residual of the same shape as the input.
        case residualReLU(UnsafePointer<Float>)
    }

    /// Per channel: the statistics the normalisation used and the affine map it applied. Everything a
    /// backward pass or a recomputation needs besides the input and the weight.
    struct Affine {
        let mean: Tensor
        let invStd: Tensor
        let scales: Tensor
        let shifts: Tensor

        init(channels c: Int) {
            mean = Tensor(uninitializedShape: [c]); invStd = Tensor(uninitializedShape: [c])
            scales = Tensor(uninitializedShape: [c]); shifts = Tensor(uninitializedShape: [c])
        }
    }

    /// Normalises `x` into `y`: in training with the batch's statistics (biased variance), updating the
    /// running ones in place (`r = (1 - momentum) r + momentum * statistic`, unbiased variance); otherwise
    /// with the running statistics. Each channel's statistics and map run back to back, while its values are
    /// still in cache.
    func forward(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, weight w: UnsafePointer<Float>,
                 bias b: UnsafePointer<Float>, runningMean rm: UnsafeMutablePointer<Float>,
                 runningVariance rv: UnsafeMutablePointer<Float>, training: Bool, momentum: Float, epsilon: Float,
                 join: Join) -> Affine {
        let affine = Affine(channels: c)
        let pm = affine.mean.data, ps = affine.invStd.data, pscale = affine.scales.data, pshift = affine.shifts.data
        let m = self.m
        Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
            for ch in channels {
                let mu: Float, variance: Float
                if training {
                    (mu, variance) = channelStatistics(x, channel: ch)
                    rm[ch] = (1 - momentum) * rm[ch] + momentum * mu
                    rv[ch] = (1 - momentum) * rv[ch] + momentum * variance * Float(m) / Float(m - 1)
                } else {
                    mu = rm[ch]; variance = rv[ch]
                }
                let inv = 1 / (variance + epsilon).squareRoot()
                pm[ch] = mu; ps[ch] = inv
                let scale = w[ch] * inv, shift = b[ch] - mu * scale
                pscale[ch] = scale; pshift[ch] = shift
                applyChannel(ch, x: x, y: y, scale: scale, shift: shift, join: join)
            }
        }
        return affine
    }

    /// Applies `affine`'s map to `x` again, into `y`: the same arithmetic as ``forward``, so the same values
    /// bit for bit.
    func apply(x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, affine: Affine, join: Join) {
        let pscale = affine.scales.data, pshift = affine.shifts.data
        Parallelism.forEachChunk(c, costPerItem: m * 2) { channels in
            for ch in channels { applyChannel(ch, x: x, y: y, scale: pscale[ch], shift: pshift[ch], join: join) }
        }
    }

    private func applyChannel(_ ch: Int, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, scale: Float,
                              shift: Float, join: Join) {
        let first = ch * plane
        let done = switch join {
        case .none: cohort_bn_apply(x + first, nil, y + first, n, c * plane, plane, scale, shift, 0)
        case .relu: cohort_bn_apply(x + first, nil, y + first, n, c * plane, plane, scale, shift, 1)
        case .residualReLU(let r): cohort_bn_apply(x + first, r + first, y + first, n, c * plane, plane, scale, shift, 2)
        }
        if done != 0 { return }
        let vs = Vector.Lanes(repeating: scale), vb = Vector.Lanes(repeating: shift)
        for i in 0..<n {
            let off = (i * c + ch) * plane
            switch join {
            case .none:
                Vector.map(x + off, y + off, plane, { $0 * vs + vb }, { $0 * scale + shift })
            case .relu:
                Vector.map(x + off, y + off, plane, { Vector.relu($0 * vs + vb) }, { Swift.max($0 * scale + shift, 0) })
            case .residualReLU(let r):
                Vector.zip(x + off, r + off, y + off, plane, { Vector.relu(($0 * vs + vb) + $1) },
                           { Swift.max(($0 * scale + shift) + $1, 0) })
            }
        }
    }

    /// The backward pass of the normalisation given the gradient `g` of its output (for the residual join,
    /// the gradient already zeroed where the output is not positive): the weight's and bias's gradients into
    /// `gw` and `gb`, and the input's into `dx` when given. With `reluMask` the gradient is taken as zero
    /// where `x * scale + shift <= 0` — exactly where the forward pass's fused ReLU output zero — a mask
    /// found from the input, already being read, rather than from a stored output. `dx` may be `g` itself
    /// (each value of `g` is read for the sums, then read again just before its place is written).
    func backward(x: UnsafePointer<Float>, gradient gp: UnsafePointer<Float>, affine: Affine, weight pw: UnsafePointer<Float>,
                  reluMask: Bool, training: Bool, dx: UnsafeMutablePointer<Float>?, gw pgw: UnsafeMutablePointer<Float>,
                  gb pgb: UnsafeMutablePointer<Float>) {
        let pm = affine.mean.data, ps = affine.invStd.data, pscale = affine.scales.data, pshift = affine.shifts.data
        let (n, c, plane, m) = (n, c, plane, m)
        Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
            for ch in channels {
                let mu = pm[ch], inv = ps[ch]
                let vm = Vector.Lanes(repeating: mu)
                let scale = pscale[ch], shift = pshift[ch]
                let vs = Vector.Lanes(repeating: scale), vb = Vector.Lanes(repeating: shift)
                @inline(__always) func gradient(_ i: Int, _ xv: Vector.Lanes) -> Vector.Lanes {
                    let v = Vector.load(gp + i)
                    return reluMask ? v.replacing(with: 0, where: (xv * vs + vb) .<= 0) : v
                }
                @inline(__always) func gradient(scalar i: Int) -> Float {
                    reluMask && x[i] * scale + shift <= 0 ? 0 : gp[i]
                }
                var sumG: Float = 0, sumGX: Float = 0
                var sums: (Float, Float) = (0, 0)
                let summed = withUnsafeMutableBytes(of: &sums) { raw in
                    cohort_bn_gradient_sums(x + ch * plane, gp + ch * plane, n, c * plane, plane, mu, scale, shift,
                                            reluMask ? 1 : 0, raw.baseAddress!.assumingMemoryBound(to: Float.self))
                }
                if summed != 0 { (sumG, sumGX) = sums }
                for i in 0..<(summed != 0 ? 0 : n) {
                    let off = (i * c + ch) * plane
                    var accG = Vector.Lanes(repeating: 0), accGX = Vector.Lanes(repeating: 0)
                    var accG2 = Vector.Lanes(repeating: 0), accGX2 = Vector.Lanes(repeating: 0)
                    var j = 0
                    while j + 16 <= plane {
                        let xv = Vector.load(x + off + j), xv2 = Vector.load(x + off + j + 8)
                        let gv = gradient(off + j, xv), gv2 = gradient(off + j + 8, xv2)
                        accG += gv; accGX += gv * (xv - vm); accG2 += gv2; accGX2 += gv2 * (xv2 - vm); j += 16
                    }
                    if j + 8 <= plane {
                        let xv = Vector.load(x + off + j)
                        let gv = gradient(off + j, xv)
                        accG += gv; accGX += gv * (xv - vm); j += 8
                    }
                    accG += accG2; accGX += accGX2
                    sumG += accG.sum(); sumGX += accGX.sum()
                    while j < plane {
                        let gs = gradient(scalar: off + j)
                        sumG += gs; sumGX += gs * (x[off + j] - mu); j += 1
                    }
                }
                pgb[ch] = sumG
                pgw[ch] = sumGX * inv
                guard let dx else { continue }
                let k = pw[ch] * inv
                // Training: dx = w inv (g - mean(g) - (x - mu) inv^2 mean(g (x - mu)));
                // evaluation (fixed statistics): dx = w inv g.
                let meanG = training ? sumG / Float(m) : 0
                let c2 = training ? inv * inv * sumGX / Float(m) : 0
                if cohort_bn_input_gradient(x + ch * plane, gp + ch * plane, dx + ch * plane, n, c * plane, plane, mu,
                                            scale, shift, reluMask ? 1 : 0, k, meanG, c2) != 0 { continue }
                let vk = Vector.Lanes(repeating: k), vmg = Vector.Lanes(repeating: meanG)
                let vc2 = Vector.Lanes(repeating: c2)
                for i in 0..<n {
                    let off = (i * c + ch) * plane
                    var j = 0
                    while j + 8 <= plane {
                        let xv = Vector.load(x + off + j)
                        let v = vk * (gradient(off + j, xv) - vmg - (xv - vm) * vc2)
                        Vector.store(v, dx + off + j); j += 8
                    }
                    while j < plane {
                        dx[off + j] = k * (gradient(scalar: off + j) - meanG - (x[off + j] - mu) * c2); j += 1
                    }
                }
            }
        }
    }

    /// The batch mean and biased variance of one channel: per row, float sums of the values' deviations from
    /// the row's own mean and of their squares; across rows, in double. The order depends only on the shape.
    private func channelStatistics(_ x: UnsafePointer<Float>, channel ch: Int) -> (mean: Float, variance: Float) {
        var mu: Float = 0, variance: Float = 0
        if cohort_bn_statistics(x + ch * plane, n, c * plane, plane, &mu, &variance) != 0 { return (mu, variance) }
        // Row by row (one image's plane, in L1 after its first pass): the row's mean estimated by a first pass,
        // then the sums of the deviations from it and of their squares, so the squares never cancel against
        // a large mean or an outlier. Rows merge in double with Chan's update for equal-sized groups.
        let size = Double(plane)
        var mean = 0.0, m2 = 0.0
        for i in 0..<n {
            let row = x + (i * c + ch) * plane
            let estimate = Float(Double(Vector.sum(row, count: plane)) / size), vo = Vector.Lanes(repeating: estimate)
            // Two pairs of accumulators: one pair alone would wait on its own additions' latency.
            var acc = Vector.Lanes(repeating: 0), accSquares = Vector.Lanes(repeating: 0)
            var acc2 = Vector.Lanes(repeating: 0), accSquares2 = Vector.Lanes(repeating: 0)
            var j = 0
            while j + 16 <= plane {
                let d = Vector.load(row + j) - vo, d2 = Vector.load(row + j + 8) - vo
                acc += d; accSquares += d * d; acc2 += d2; accSquares2 += d2 * d2; j += 16
            }
            if j + 8 <= plane { let d = Vector.load(row + j) - vo; acc += d; accSquares += d * d; j += 8 }
            acc += acc2; accSquares += accSquares2
            var deviations = Double(acc.sum()), squares = Double(accSquares.sum())
            while j < plane { let d = Double(row[j] - estimate); deviations += d; squares += d * d; j += 1 }
            let rowMean = Double(estimate) + deviations / size
            let rowM2 = Swift.max(squares - deviations * deviations / size, 0)
            let delta = rowMean - mean, merged = Double(i + 1)
            mean += delta / merged
            m2 += rowM2 + delta * delta * size * Double(i) / merged
        }
        return (Float(mean), Float(Swift.max(m2 / (Double(n) * size), 0)))
    }
}
