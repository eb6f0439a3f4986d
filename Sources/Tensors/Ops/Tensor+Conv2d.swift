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
            let gx = x.requiresGrad ? Tensor.zeros(x.shape) : nil
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

/// The work plan of one convolution: group size and the products it runs.
struct ConvPlan {
    let batch: Int
    let outputChannels: Int
    let geometry: ConvGeometry
    /// Samples lowered side by side into one matrix.
    let group: Int

    init(batch: Int, outputChannels: Int, geometry: ConvGeometry) {
        self.batch = batch
        self.outputChannels = outputChannels
        self.geometry = geometry
        let pixels = geometry.columnCols
        // Aim for products at least ~4096 columns wide, within ~16 MB of lowered patches.
        var g = Swift.max(1, (4096 + pixels - 1) / pixels)
        while g > 1 && geometry.columnRows * g * pixels > (4 << 20) { g -= 1 }
        group = Swift.min(g, Swift.max(batch, 1))
    }

    private var inputSize: Int { geometry.channels * geometry.height * geometry.width }
    private var pixels: Int { geometry.columnCols }
    private var outputSize: Int { outputChannels * pixels }

    /// Lowers samples `n0 ..< n0 + g` of `input` into `columns` (row stride `g * pixels`).
    private func lower(_ input: UnsafePointer<Float>, samples n0: Int, count g: Int, into columns: UnsafeMutablePointer<Float>) {
        let p = pixels, ld = g * p, geometry = self.geometry, inputSize = self.inputSize
        Parallelism.forEachChunk(g, costPerItem: geometry.columnRows * p) { range in
            for s in range {
                let image = input + (n0 + s) * inputSize
                if geometry.isPointwise {
                    for c in 0..<geometry.channels { (columns + c * ld + s * p).update(from: image + c * p, count: p) }
                } else {
                    Im2col.lower(image, geometry, into: columns + s * p, leadingDimension: ld)
                }
            }
        }
    }

    func forward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                 output: UnsafeMutablePointer<Float>) {
        let p = pixels, k = geometry.columnRows, co = outputChannels
        let columns = Storage(count: k * group * p)
        let block = group > 1 ? Storage(count: co * group * p) : nil
        var n0 = 0
        while n0 < batch {
            let g = Swift.min(group, batch - n0)
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
                let outputSize = self.outputSize
                Parallelism.forEachChunk(g, costPerItem: outputSize) { range in
                    for s in range {
                        for c in 0..<co {
                            (output + (n0 + s) * outputSize + c * p).update(from: b + c * g * p + s * p, count: p)
                        }
                    }
                }
            }
            n0 += g
        }
        if let bias {
            for n in 0..<batch {
                for c in 0..<co {
                    let row = output + n * outputSize + c * p, v = bias[c]
                    let vv = Vector.Lanes(repeating: v)
                    Vector.map(row, row, p, { $0 + vv }, { $0 + v })
                }
            }
        }
    }

    /// Writes the weight gradient and adds the input gradient (which must start zeroed).
    func backward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                  inputGradient: UnsafeMutablePointer<Float>?, weightGradient: UnsafeMutablePointer<Float>?) {
        let p = pixels, k = geometry.columnRows, co = outputChannels
        let columns = Storage(count: k * group * p)
        let block = group > 1 ? Storage(count: co * group * p) : nil
        if let weightGradient { weightGradient.update(repeating: 0, count: co * k) }
        var n0 = 0
        while n0 < batch {
            let g = Swift.min(group, batch - n0)
            // The output gradient of the group as one Cout x (g * pixels) matrix.
            let dy: UnsafePointer<Float>
            if g == 1 {
                dy = outputGradient + n0 * outputSize
            } else {
                let b = block!.base, outputSize = self.outputSize
                Parallelism.forEachChunk(g, costPerItem: outputSize) { range in
                    for s in range {
                        for c in 0..<co {
                            (b + c * g * p + s * p).update(from: outputGradient + (n0 + s) * outputSize + c * p, count: p)
                        }
                    }
                }
                dy = UnsafePointer(b)
            }
            if let weightGradient {
                let source: UnsafePointer<Float>
                if g == 1 && geometry.isPointwise {
                    source = input + n0 * inputSize
                } else {
                    lower(input, samples: n0, count: g, into: columns.base)
                    source = UnsafePointer(columns.base)
                }
                // dW += dY x cols^T
                Gemm.multiply(dy, source, transposeB: true, into: weightGradient, m: co, n: k, k: g * p, beta: 1)
            }
            if let inputGradient {
                // dcols = W^T x dY, then fold back into the images.
                Gemm.multiply(weight, transposeA: true, dy, into: columns.base, m: k, n: g * p, k: co)
                let cols = UnsafePointer(columns.base), geometry = self.geometry, inputSize = self.inputSize
                Parallelism.forEachChunk(g, costPerItem: k * p) { range in
                    for s in range {
                        let image = inputGradient + (n0 + s) * inputSize
                        if geometry.isPointwise {
                            for c in 0..<geometry.channels {
                                Vector.add(cols + c * g * p + s * p, into: image + c * p, count: p)
                            }
                        } else {
                            Im2col.accumulate(cols + s * p, leadingDimension: g * p, geometry, into: image)
                        }
                    }
                }
            }
            n0 += g
        }
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
