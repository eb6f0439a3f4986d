/// 2-D convolution (cross-correlation, as PyTorch) lowered to BLAS matrix products.
///
/// Samples are processed in groups whose lowered patches sit side by side in one matrix, so that each
/// `sgemm` sees a wide, well-shaped product even when the image is small (8x8 in a ResNet's last stage).
/// The lowered matrix is recomputed in the backward pass instead of being kept, which keeps memory at
/// one group's worth per convolution.
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
        precondition(rank == 4 && weight.rank == 4 && weight.shape[1] == shape[1],
                     "conv2d: input \(shape) and weight \(weight.shape) do not fit (NCHW, [out, in, kh, kw])")
        precondition(stride.0 > 0 && stride.1 > 0 && padding.0 >= 0 && padding.1 >= 0, "conv2d: bad stride/padding")
        if let bias { precondition(bias.shape == [weight.shape[0]], "conv2d: bias \(bias.shape) for \(weight.shape[0]) outputs") }
        let geometry = ConvGeometry(channels: shape[1], height: shape[2], width: shape[3],
                                    kernelHeight: weight.shape[2], kernelWidth: weight.shape[3],
                                    strideHeight: stride.0, strideWidth: stride.1,
                                    paddingHeight: padding.0, paddingWidth: padding.1)
        precondition(geometry.outputHeight > 0 && geometry.outputWidth > 0,
                     "conv2d: kernel \(weight.shape) larger than padded input \(shape)")
        let plan = ConvPlan(batch: shape[0], outputChannels: weight.shape[0], geometry: geometry)
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
            var grads: [Tensor?] = [gx, gw]
            if let bias {
                grads.append(bias.requiresGrad ? plan.biasGradient(g) : nil)
            }
            return grads
        }
    }
}

/// The work plan of one convolution: how the batch is split across threads, and how many samples are
/// lowered side by side into one matrix.
///
/// Each thread takes a contiguous share of the batch and runs single-threaded BLAS on it; weight
/// gradients are summed from per-thread partial sums in a fixed order, so results do not depend on
/// timing.
struct ConvPlan {
    let batch: Int
    let outputChannels: Int
    let geometry: ConvGeometry
    /// The threads' shares of the batch.
    let shares: [Range<Int>]
    /// Samples lowered side by side into one matrix.
    let group: Int

    init(batch: Int, outputChannels: Int, geometry: ConvGeometry) {
        self.batch = batch
        self.outputChannels = outputChannels
        self.geometry = geometry
        let pixels = geometry.columnCols
        let flops = 2 * outputChannels * geometry.columnRows * pixels
        shares = Parallelism.ranges(batch, costPerItem: flops, minimumCost: 4_000_000)
        let largestShare = shares.map(\.count).max() ?? 1
        // Aim for products about 512 columns wide, within ~512 KB of lowered patches (so that the lowered
        // block stays in a core's L2 between im2col and the product; measured on resnet20, 2026-11).
        var g = Swift.max(1, (ConvPlan.targetColumns + pixels - 1) / pixels)
        while g > 1 && geometry.columnRows * g * pixels > ConvPlan.loweredBudget { g -= 1 }
        group = Swift.min(g, Swift.max(largestShare, 1))
    }

    static let targetColumns = 512
    static let loweredBudget = 131_072

    private var inputSize: Int { geometry.channels * geometry.height * geometry.width }
    private var pixels: Int { geometry.columnCols }
    private var outputSize: Int { outputChannels * pixels }

    /// Lowers samples `n0 ..< n0 + g` of `input` into `columns` (row stride `g * pixels`).
    private func lower(_ input: UnsafePointer<Float>, samples n0: Int, count g: Int, into columns: UnsafeMutablePointer<Float>) {
        let p = pixels, ld = g * p
        for s in 0..<g {
            let image = input + (n0 + s) * inputSize
            if geometry.isPointwise {
                for c in 0..<geometry.channels { Vector.copy(image + c * p, to: columns + c * ld + s * p, count: p) }
            } else {
                Im2col.lower(image, geometry, into: columns + s * p, leadingDimension: ld)
            }
        }
    }

    func forward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                 output: UnsafeMutablePointer<Float>) {
        let p = pixels, k = geometry.columnRows, co = outputChannels
        Parallelism.run(shares) { _, share in
            let columns = Storage(count: k * group * p)
            let block = group > 1 ? Storage(count: co * group * p) : nil
            defer { withExtendedLifetime((columns, block)) {} }
            var n0 = share.lowerBound
            while n0 < share.upperBound {
                let g = Swift.min(group, share.upperBound - n0)
                let source: UnsafePointer<Float>
                if g == 1 && geometry.isPointwise {
                    source = input + n0 * inputSize
                } else {
                    lower(input, samples: n0, count: g, into: columns.base)
                    source = UnsafePointer(columns.base)
                }
                if g == 1 {
                    Gemm.multiply(weight, source, into: output + n0 * outputSize, m: co, n: p, k: k)
                } else {
                    let b = block!.base
                    Gemm.multiply(weight, source, into: b, m: co, n: g * p, k: k)
                    for s in 0..<g {
                        for c in 0..<co {
                            Vector.copy(b + c * g * p + s * p, to: output + (n0 + s) * outputSize + c * p, count: p)
                        }
                    }
                }
                if let bias {
                    for s in 0..<g {
                        for c in 0..<co {
                            let row = output + (n0 + s) * outputSize + c * p, v = bias[c]
                            let vv = Vector.Lanes(repeating: v)
                            Vector.map(row, row, p, { $0 + vv }, { $0 + v })
                        }
                    }
                }
                n0 += g
            }
        }
    }

    /// Writes the weight gradient and the input gradient.
    func backward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                  inputGradient: UnsafeMutablePointer<Float>?, weightGradient: UnsafeMutablePointer<Float>?) {
        let p = pixels, k = geometry.columnRows, co = outputChannels
        // Thread 0 accumulates straight into the result; the others into partial sums added at the end.
        let partials = (1..<Swift.max(shares.count, 1)).map { _ in Storage(count: co * k) }
        Parallelism.run(shares) { index, share in
            let dW = index == 0 ? weightGradient : partials[index - 1].base
            dW?.update(repeating: 0, count: co * k)
            let columns = Storage(count: k * group * p)
            let block = group > 1 ? Storage(count: co * group * p) : nil
            defer { withExtendedLifetime((columns, block)) {} }
            var n0 = share.lowerBound
            while n0 < share.upperBound {
                let g = Swift.min(group, share.upperBound - n0)
                // The output gradient of the group as one Cout x (g * pixels) matrix.
                let dy: UnsafePointer<Float>
                if g == 1 {
                    dy = outputGradient + n0 * outputSize
                } else {
                    let b = block!.base
                    for s in 0..<g {
                        for c in 0..<co {
                            Vector.copy(outputGradient + (n0 + s) * outputSize + c * p, to: b + c * g * p + s * p, count: p)
                        }
                    }
                    dy = UnsafePointer(b)
                }
                if let dW {
                    let source: UnsafePointer<Float>
                    if g == 1 && geometry.isPointwise {
                        source = input + n0 * inputSize
                    } else {
                        lower(input, samples: n0, count: g, into: columns.base)
                        source = UnsafePointer(columns.base)
                    }
                    // dW += dY x cols^T
                    Gemm.multiply(dy, source, transposeB: true, into: dW, m: co, n: k, k: g * p, beta: 1)
                }
                if let inputGradient {
                    // dcols = W^T x dY, then fold back into the images.
                    Gemm.multiply(weight, transposeA: true, dy, into: columns.base, m: k, n: g * p, k: co)
                    for s in 0..<g {
                        let image = inputGradient + (n0 + s) * inputSize
                        // Zero each image just before folding into it, while it is in cache.
                        Vector.fill(image, with: 0, count: inputSize)
                        if geometry.isPointwise {
                            for c in 0..<geometry.channels {
                                Vector.add(columns.base + c * g * p + s * p, into: image + c * p, count: p)
                            }
                        } else {
                            Im2col.accumulate(columns.base + s * p, leadingDimension: g * p, geometry, into: image)
                        }
                    }
                }
                n0 += g
            }
        }
        if let weightGradient {
            for partial in partials { Vector.add(partial.base, into: weightGradient, count: co * k) }
        }
        withExtendedLifetime(partials) {}
    }

    func biasGradient(_ g: Tensor) -> Tensor {
        let out = Tensor.zeros([outputChannels])
        for n in 0..<batch {
            for c in 0..<outputChannels {
                out.data[c] += Vector.sum(g.data + n * outputSize + c * pixels, count: pixels)
            }
        }
        return out
    }
}
