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
                  training: training, momentum: momentum, epsilon: epsilon, relu: false)
    }

    /// `batchNorm(...).relu()` in one pass over memory forward and one backward (the pattern of every
    /// ResNet stem and block). Same parameters and results as the two ops in sequence.
    public func batchNormReLU(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                              training: Bool, momentum: Float = 0.1, epsilon: Float = 1e-5) -> Tensor {
        batchNorm(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVariance,
                  training: training, momentum: momentum, epsilon: epsilon, relu: true)
    }

    private func batchNorm(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                           training: Bool, momentum: Float, epsilon: Float, relu: Bool) -> Tensor {
        precondition(rank >= 2, "batchNorm needs N x C x ..., got \(shape)")
        let n = shape[0], c = shape[1], plane = count / Swift.max(n * c, 1)
        for t in [weight, bias, runningMean, runningVariance] {
            precondition(t.shape == [c], "batchNorm: per-channel tensor \(t.shape) for \(c) channels")
        }
        let m = n * plane
        precondition(!training || m > 1, "batchNorm in training needs more than one value per channel, got \(shape)")
        let out = Tensor(uninitializedShape: shape)
        let mean = Tensor(uninitializedShape: [c]), invStd = Tensor(uninitializedShape: [c])
        let x = data, y = out.data, w = weight.data, b = bias.data
        let rm = runningMean.data, rv = runningVariance.data
        let pm = mean.data, ps = invStd.data
        Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
            for ch in channels {
                let mu: Float, variance: Float
                if training {
                    var s: Float = 0
                    for i in 0..<n { s += Vector.sum(x + (i * c + ch) * plane, count: plane) }
                    mu = s / Float(m)
                    var q: Float = 0
                    let vm = Vector.Lanes(repeating: mu)
                    for i in 0..<n {
                        let row = x + (i * c + ch) * plane
                        var acc = Vector.Lanes(repeating: 0)
                        var j = 0
                        while j + 8 <= plane { let d = Vector.load(row + j) - vm; acc += d * d; j += 8 }
                        q += acc.sum()
                        while j < plane { let d = row[j] - mu; q += d * d; j += 1 }
                    }
                    variance = q / Float(m)
                    rm[ch] = (1 - momentum) * rm[ch] + momentum * mu
                    rv[ch] = (1 - momentum) * rv[ch] + momentum * variance * Float(m) / Float(m - 1)
                } else {
                    mu = rm[ch]; variance = rv[ch]
                }
                let inv = 1 / (variance + epsilon).squareRoot()
                pm[ch] = mu; ps[ch] = inv
                let scale = w[ch] * inv, shift = b[ch] - mu * scale
                let vs = Vector.Lanes(repeating: scale), vb = Vector.Lanes(repeating: shift)
                for i in 0..<n {
                    let off = (i * c + ch) * plane
                    if relu {
                        Vector.map(x + off, y + off, plane, { Vector.relu($0 * vs + vb) },
                                   { Swift.max($0 * scale + shift, 0) })
                    } else {
                        Vector.map(x + off, y + off, plane, { $0 * vs + vb }, { $0 * scale + shift })
                    }
                }
            }
        }
        withExtendedLifetime((mean, invStd)) {}
        let input = self
        return out.recorded(relu ? "batchNormReLU" : "batchNorm", [input, weight, bias]) { [unowned out] g in
            let gx = input.requiresGrad ? Tensor(uninitializedShape: input.shape) : nil
            let gw = Tensor(uninitializedShape: [c]), gb = Tensor(uninitializedShape: [c])
            let gp = g.data, x = input.data, dx = gx?.data, yp = out.data
            let pw = weight.data, pm = mean.data, ps = invStd.data
            let pgw = gw.data, pgb = gb.data
            // With the fused ReLU, the gradient reaching the normalisation is zero where the output is;
            // the mask is applied as the gradient is read, without a masked copy.
            @inline(__always) func gradient(_ i: Int) -> Vector.Lanes {
                let v = Vector.load(gp + i)
                return relu ? v.replacing(with: 0, where: Vector.load(yp + i) .<= 0) : v
            }
            @inline(__always) func gradient(scalar i: Int) -> Float {
                relu && yp[i] <= 0 ? 0 : gp[i]
            }
            Parallelism.forEachChunk(c, costPerItem: m * 3) { channels in
                for ch in channels {
                    let mu = pm[ch], inv = ps[ch]
                    var sumG: Float = 0, sumGX: Float = 0
                    let vm = Vector.Lanes(repeating: mu)
                    for i in 0..<n {
                        let off = (i * c + ch) * plane
                        var accG = Vector.Lanes(repeating: 0), accGX = Vector.Lanes(repeating: 0)
                        var j = 0
                        while j + 8 <= plane {
                            let gv = gradient(off + j)
                            accG += gv; accGX += gv * (Vector.load(x + off + j) - vm); j += 8
                        }
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
                            let v = vk * (gradient(off + j) - vmg - (Vector.load(x + off + j) - vm) * vc2)
                            Vector.store(v, dx + off + j); j += 8
                        }
                        while j < plane {
                            dx[off + j] = k * (gradient(scalar: off + j) - meanG - (x[off + j] - mu) * c2); j += 1
                        }
                    }
                }
            }
            return [gx, weight.requiresGrad ? gw : nil, bias.requiresGrad ? gb : nil]
        }
    }
}
