/// A convolution of a batch-normalised, rectified input — `batchNormReLU(...)` then `conv2d(...)`, the
/// middle of every ResNet basic block and Wide ResNet block — as one op that does not keep the normalised
/// tensor for the backward pass.
///
/// The two ops in sequence keep both the batch norm's input (its backward pass reads it) and its output (the
/// convolution's weight gradient reads it). This op keeps only the input and the per-channel map, and
/// normalises again in its backward pass: one activation fewer per block for one extra pass over memory.
/// The recomputed values are the forward pass's bit for bit (the same arithmetic), so the values,
/// gradients and running statistics are exactly those of the two ops.
extension Tensor {
    /// `self.batchNormReLU(...).conv2d(...)`, without keeping the normalised tensor.
    ///
    /// - Parameters:
    ///   - normWeight, normBias, runningMean, runningVariance, training, momentum, epsilon: as
    ///     ``batchNormReLU(weight:bias:runningMean:runningVariance:training:momentum:epsilon:)``.
    ///   - convWeight, convBias, stride, padding: as ``conv2d(weight:bias:stride:padding:)``.
    public func batchNormReLUConv2d(normWeight: Tensor, normBias: Tensor, runningMean: Tensor, runningVariance: Tensor,
                                    training: Bool, momentum: Float = 0.1, epsilon: Float = 1e-5,
                                    convWeight: Tensor, convBias: Tensor? = nil, stride: (Int, Int) = (1, 1),
                                    padding: (Int, Int) = (0, 0)) -> Tensor {
        let norm = checkedBatchNormKernel(weight: normWeight, bias: normBias, runningMean: runningMean,
                                          runningVariance: runningVariance, training: training)
        let normalizedNeedsGradient = requiresGrad || normWeight.requiresGrad || normBias.requiresGrad
        let plan = Tensor.convolutionPlan(input: shape, weight: convWeight, bias: convBias, stride: stride,
                                          padding: padding, needsInputGradient: normalizedNeedsGradient)
        let out = Tensor(uninitializedShape: [shape[0], convWeight.shape[0], plan.geometry.outputHeight,
                                              plan.geometry.outputWidth])
        // The normalised input lives only while the convolution reads it.
        let affine = { () -> BatchNormKernel.Affine in
            let normalized = Tensor(uninitializedShape: shape)
            let affine = norm.forward(x: data, y: normalized.data, weight: normWeight.data, bias: normBias.data,
                                      runningMean: runningMean.data, runningVariance: runningVariance.data,
                                      training: training, momentum: momentum, epsilon: epsilon, join: .relu)
            plan.forward(input: normalized.data, weight: convWeight.data, bias: convBias?.data, output: out.data)
            return affine
        }()
        let input = self
        var inputs = [input, normWeight, normBias, convWeight]
        if let convBias { inputs.append(convBias) }
        return out.recorded("batchNormReLUConv2d", inputs) { g in
            // The weight gradient first, from the normalised input rebuilt for it and released at once; then the
            // input gradient, which does not read it, and the normalisation's backward pass in the same buffer.
            // At most three activation-sized buffers at a time, the incoming gradient included.
            var gradients: [Tensor?] = [nil, nil, nil, nil]
            if convWeight.requiresGrad {
                let gw = Tensor(uninitializedShape: convWeight.shape)
                let normalized = Tensor(uninitializedShape: input.shape)
                norm.apply(x: input.data, y: normalized.data, affine: affine, join: .relu)
                if normalizedNeedsGradient {
                    plan.weightGradient(input: normalized.data, weight: convWeight.data, outputGradient: g.data, into: gw.data)
                } else {
                    // Nothing upstream needs a gradient: the route `conv2d` takes for a weight gradient alone.
                    plan.backward(input: normalized.data, weight: convWeight.data, outputGradient: g.data, inputGradient: nil,
                                  weightGradient: gw.data)
                }
                gw.isExclusiveGradient = true
                gradients[3] = gw
            }
            if let convBias { gradients.append(convBias.requiresGrad ? plan.biasGradient(g) : nil) }
            guard normalizedNeedsGradient else { return gradients }
            // The normalised input's gradient, then (in place) the input's.
            let gradient = Tensor(uninitializedShape: input.shape)
            plan.inputGradient(weight: convWeight.data, outputGradient: g.data, into: gradient.data)
            let gnw = Tensor(uninitializedShape: [norm.c]), gnb = Tensor(uninitializedShape: [norm.c])
            norm.backward(x: input.data, gradient: gradient.data, affine: affine, weight: normWeight.data, reluMask: true,
                          training: training, dx: input.requiresGrad ? gradient.data : nil, gw: gnw.data, gb: gnb.data)
            if input.requiresGrad {
                gradient.isExclusiveGradient = true
                gradients[0] = gradient
            }
            gradients[1] = normWeight.requiresGrad ? gnw : nil
            gradients[2] = normBias.requiresGrad ? gnb : nil
            return gradients
        }
    }
}
