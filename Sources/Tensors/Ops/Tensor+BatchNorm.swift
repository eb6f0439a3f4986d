/// Batch normalisation over the channel axis (axis 1) of `N x C x ...` tensors, as
/// `torch.nn.functional.batch_norm`.
extension Tensor {
    /// Normalises each channel and applies the affine `weight * x_hat + bias`.
    ///
    /// - Parameters:
    ///   - weight, bias: per-channel scale and shift (`C`).
    ///   - runningMean, runningVariance: per-channel running statistics (`C`). In training they are
    ///     updated in place — `r = (1 - momentum) r + momentum * batch statistic`, with the unbiased
    ///     variance — and in evaluation they normalise.
    ///   - training: use the batch's statistics (biased variance) rather than the running ones.
    ///   - momentum: weight of the new batch statistic in the running average.
    ///   - epsilon: added to the variance.
    public func batchNorm(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                          training: Bool, momentum: Float = 0.1, epsilon: Float = 1e-5) -> Tensor {
        batchNorm(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVariance,
                  training: training, momentum: momentum, epsilon: epsilon, join: .none)
    }

    /// `batchNorm(...).relu()` in one pass over memory forward (the pattern of every ResNet stem and
    /// block). Same parameters and results as the two ops in sequence; the backward pass finds the ReLU's
    /// mask from the input again rather than reading the output.
    public func batchNormReLU(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                              training: Bool, momentum: Float = 0.1, epsilon: Float = 1e-5) -> Tensor {
        batchNorm(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVariance,
                  training: training, momentum: momentum, epsilon: epsilon, join: .relu)
    }

    /// `batchNorm(...).addingReLU(residual)` — the join of a residual block, `max(bn(self) + residual, 0)`
    /// — in one op: the normalised values are never stored (one activation fewer kept per block for the
    /// backward pass, and one pass over memory fewer each way). Same results as the two ops in sequence.
    public func batchNormAddingReLU(_ residual: Tensor, weight: Tensor, bias: Tensor, runningMean: Tensor,
                                    runningVariance: Tensor, training: Bool, momentum: Float = 0.1,
                                    epsilon: Float = 1e-5) -> Tensor {
        precondition(residual.shape == shape, "batchNormAddingReLU: residual \(residual.shape) for \(shape)")
        return batchNorm(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVariance,
                         training: training, momentum: momentum, epsilon: epsilon, join: .residualReLU(residual))
    }

    /// What follows the affine normalisation inside the op.
    private enum Join {
        case none
        case relu
        case residualReLU(Tensor)
    }

    private func batchNorm(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                           training: Bool, momentum: Float, epsilon: Float, join: Join) -> Tensor {
        precondition(rank >= 2, "batchNorm needs N x C x ..., got \(shape)")
        let n = shape[0], c = shape[1], plane = count / Swift.max(n * c, 1)
        for t in [weight, bias, runningMean, runningVariance] {
            precondition(t.shape == [c], "batchNorm: per-channel tensor \(t.shape) for \(c) channels")
        }
        let m = n * plane
        precondition(!training || m > 1, "batchNorm in training needs more than one value per channel, got \(shape)")
        let out = Tensor(uninitializedShape: shape)
        // Per channel: the mean and 1/std (for the backward pass), and the affine map x * scale + shift.
        let mean = Tensor(uninitializedShape: [c]), invStd = Tensor(uninitializedShape: [c])
        let scales = Tensor(uninitializedShape: [c]), shifts = Tensor(uninitializedShape: [c])
        let x = data, y = out.data, w = weight.data, b = bias.data
        let rm = runningMean.data, rv = runningVariance.data
        let pm = mean.data, ps = invStd.data, pscale = scales.data, pshift = shifts.data
        let residual: Tensor?
        if case .residualReLU(let r) = join { residual = r } else { residual = nil }
        let r = residual?.data
        Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
            for ch in channels {
                let mu: Float, variance: Float
                if training {
                    (mu, variance) = Self.channelStatistics(x, channel: ch, channels: c, count: n, plane: plane)
                    rm[ch] = (1 - momentum) * rm[ch] + momentum * mu
                    rv[ch] = (1 - momentum) * rv[ch] + momentum * variance * Float(m) / Float(m - 1)
                } else {
                    mu = rm[ch]; variance = rv[ch]
                }
                let inv = 1 / (variance + epsilon).squareRoot()
                pm[ch] = mu; ps[ch] = inv
                let scale = w[ch] * inv, shift = b[ch] - mu * scale
                pscale[ch] = scale; pshift[ch] = shift
                let vs = Vector.Lanes(repeating: scale), vb = Vector.Lanes(repeating: shift)
                for i in 0..<n {
                    let off = (i * c + ch) * plane
                    switch join {
                    case .none:
                        Vector.map(x + off, y + off, plane, { $0 * vs + vb }, { $0 * scale + shift })
                    case .relu:
                        Vector.map(x + off, y + off, plane, { Vector.relu($0 * vs + vb) }, { Swift.max($0 * scale + shift, 0) })
                    case .residualReLU:
                        Vector.zip(x + off, r! + off, y + off, plane, { Vector.relu(($0 * vs + vb) + $1) },
                                   { Swift.max(($0 * scale + shift) + $1, 0) })
                    }
                }
            }
        }
        let input = self
        let inputs = [input, weight, bias] + (residual.map { [$0] } ?? [])
        let name = switch join { case .none: "batchNorm"; case .relu: "batchNormReLU"; case .residualReLU: "batchNormAddingReLU" }
        return out.recorded(name, inputs) { [unowned out] g in
            let gx = input.requiresGrad ? Tensor(uninitializedShape: input.shape) : nil
            let gw = Tensor(uninitializedShape: [c]), gb = Tensor(uninitializedShape: [c])
            // With the residual join, the gradient reaching both the normalisation and the residual is g
            // where the output is positive: written once, returned for the residual and read below.
            let masked = residual == nil ? nil : g.maskedByPositive(out)
            let gp = masked?.data ?? g.data, x = input.data, dx = gx?.data
            let pw = weight.data, pm = mean.data, ps = invStd.data, pscale = scales.data, pshift = shifts.data
            let pgw = gw.data, pgb = gb.data
            let reluMask: Bool = if case .relu = join { true } else { false }
            Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
                for ch in channels {
                    let mu = pm[ch], inv = ps[ch]
                    let vm = Vector.Lanes(repeating: mu)
                    // With the fused ReLU the gradient is zero where the output is: the output is positive
                    // exactly where x * scale + shift is (the forward pass's own arithmetic), so the mask
                    // comes from the input, already being read, instead of a read of the output.
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
                    for i in 0..<n {
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
            var gradients: [Tensor?] = [gx, weight.requiresGrad ? gw : nil, bias.requiresGrad ? gb : nil]
            if let residual { gradients.append(residual.requiresGrad ? masked : nil) }
            return gradients
        }
    }

    /// The batch mean and biased variance of one channel: per row, float sums of the values' deviations from
    /// the row's own mean and of their squares; across rows, in double. The order depends only on the shape.
    private static func channelStatistics(_ x: UnsafePointer<Float>, channel ch: Int, channels c: Int, count n: Int,
                                          plane: Int) -> (mean: Float, variance: Float) {
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
