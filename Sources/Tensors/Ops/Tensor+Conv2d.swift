/// 2-D convolution (cross-correlation, as PyTorch), planned by ``ConvPlan``.
///
/// With Cohort's kernels (AVX-512, or AVX2 + FMA) the stride-1 "same" convolutions read shifted input planes
/// in place, and on AVX2 the stride-2 ones read their phase planes. The others (and every convolution on
/// OpenBLAS) are lowered: samples in groups whose patches sit side by side in one matrix, so that each
/// `sgemm` sees a wide, well-shaped product even when the image is small (8x8 in a ResNet's last stage);
/// the lowered matrix is recomputed in the backward pass instead of being kept, one group's worth per
/// convolution at a time.
/// See docs/engine.md, "Convolution".
extension Tensor {
    /// Convolves `self` (`N x C x H x W`) with `weight` (`Cout x C x kh x kw`), adding `bias` (`Cout`)
    /// when given.
    ///
    /// - Parameters:
    ///   - stride: (vertical, horizontal) step.
    ///   - padding: zeros added on (top and bottom, left and right).
    /// - Returns: `N x Cout x Hout x Wout`, `Hout = (H + 2 ph - kh) / sh + 1`.
    public func conv2d(weight: Tensor, bias: Tensor? = nil, stride: (Int, Int) = (1, 1),
                       padding: (Int, Int) = (0, 0)) -> Tensor {
        let plan = Tensor.convolutionPlan(input: shape, weight: weight, bias: bias, stride: stride, padding: padding,
                                          needsInputGradient: requiresGrad)
        let geometry = plan.geometry
        let out = Tensor(uninitializedShape: [shape[0], weight.shape[0], geometry.outputHeight, geometry.outputWidth])
        plan.forward(input: data, weight: weight.data, bias: bias?.data, output: out.data)
        let x = self
        var inputs = [x, weight]
        if let bias { inputs.append(bias) }
        return out.recorded("conv2d", inputs) { g in
            let gx = x.requiresGrad ? Tensor(uninitializedShape: x.shape) : nil
            let gw = weight.requiresGrad ? Tensor(uninitializedShape: weight.shape) : nil
            plan.backward(input: x.data, weight: weight.data, outputGradient: g.data,
                          inputGradient: gx?.data, weightGradient: gw?.data)
            gx?.isExclusiveGradient = true
            gw?.isExclusiveGradient = true
            var grads: [Tensor?] = [gx, gw]
            if let bias {
                grads.append(bias.requiresGrad ? plan.biasGradient(g) : nil)
            }
            return grads
        }
    }

    /// The plan of a convolution of an input of `shape` by `weight`, after checking that they fit; the
    /// convolution is recorded in ``ConvolutionTrace/current``, when one is set.
    static func convolutionPlan(input shape: [Int], weight: Tensor, bias: Tensor?, stride: (Int, Int), padding: (Int, Int),
                                needsInputGradient: Bool) -> ConvPlan {
        precondition(shape.count == 4 && weight.rank == 4 && weight.shape[1] == shape[1],
                     "conv2d: input \(shape) and weight \(weight.shape) do not fit (NCHW, [out, in, kh, kw])")
        precondition(stride.0 > 0 && stride.1 > 0 && padding.0 >= 0 && padding.1 >= 0, "conv2d: bad stride/padding")
        if let bias { precondition(bias.shape == [weight.shape[0]], "conv2d: bias \(bias.shape) for \(weight.shape[0]) outputs") }
        let geometry = ConvGeometry(channels: shape[1], height: shape[2], width: shape[3],
                                    kernelHeight: weight.shape[2], kernelWidth: weight.shape[3],
                                    strideHeight: stride.0, strideWidth: stride.1,
                                    paddingHeight: padding.0, paddingWidth: padding.1)
        precondition(geometry.outputHeight > 0 && geometry.outputWidth > 0,
                     "conv2d: kernel \(weight.shape) larger than padded input \(shape)")
        ConvolutionTrace.current?.record(ConvolutionKernel(batch: shape[0], outputChannels: weight.shape[0], geometry: geometry,
                                                           needsInputGradient: needsInputGradient))
        return ConvPlan(batch: shape[0], outputChannels: weight.shape[0], geometry: geometry)
    }
}
