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
        let kernel = checkedBatchNormKernel(weight: weight, bias: bias, runningMean: runningMean,
                                            runningVariance: runningVariance, training: training)
        let out = Tensor(uninitializedShape: shape)
        let residual: Tensor?
        if case .residualReLU(let r) = join { residual = r } else { residual = nil }
        let kernelJoin: BatchNormKernel.Join = switch join {
        case .none: .none
        case .relu: .relu
        case .residualReLU(let r): .residualReLU(r.data)
        }
        let affine = kernel.forward(x: data, y: out.data, weight: weight.data, bias: bias.data, runningMean: runningMean.data,
                                    runningVariance: runningVariance.data, training: training, momentum: momentum,
                                    epsilon: epsilon, join: kernelJoin)
        let input = self
        let inputs = [input, weight, bias] + (residual.map { [$0] } ?? [])
        let name = switch join { case .none: "batchNorm"; case .relu: "batchNormReLU"; case .residualReLU: "batchNormAddingReLU" }
        let reluMask: Bool = if case .relu = join { true } else { false }
        // The residual join's mask reads the output; the residual itself is not kept.
        let savedOut = residual == nil ? nil : out.detached()
        let residualNeedsGradient = residual?.requiresGrad ?? false
        return out.recorded(name, inputs) { g in
            let gx = input.requiresGrad ? Tensor(uninitializedShape: input.shape) : nil
            let gw = Tensor(uninitializedShape: [kernel.c]), gb = Tensor(uninitializedShape: [kernel.c])
            // With the residual join, the gradient reaching both the normalisation and the residual is g
            // where the output is positive: written once, returned for the residual and read below.
            let masked = savedOut.map { g.maskedByPositive($0) }
            kernel.backward(x: input.data, gradient: masked?.data ?? g.data, affine: affine, weight: weight.data,
                            reluMask: reluMask, training: training, dx: gx?.data, gw: gw.data, gb: gb.data)
            gx?.isExclusiveGradient = true
            masked?.isExclusiveGradient = true
            var gradients: [Tensor?] = [gx, weight.requiresGrad ? gw : nil, bias.requiresGrad ? gb : nil]
            if savedOut != nil { gradients.append(residualNeedsGradient ? masked : nil) }
            return gradients
        }
    }

    /// The kernel for normalising `self` with these per-channel tensors, after checking their shapes.
    func checkedBatchNormKernel(weight: Tensor, bias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                                training: Bool) -> BatchNormKernel {
        precondition(rank >= 2, "batchNorm needs N x C x ..., got \(shape)")
        let kernel = BatchNormKernel(shape: shape)
        for t in [weight, bias, runningMean, runningVariance] {
            precondition(t.shape == [kernel.c], "batchNorm: per-channel tensor \(t.shape) for \(kernel.c) channels")
        }
        precondition(!training || kernel.m > 1, "batchNorm in training needs more than one value per channel, got \(shape)")
        return kernel
    }
}
