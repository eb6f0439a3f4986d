import CKernels

/// The work plan of one convolution: how the batch is split across threads, and the tiles each thread
/// lowers and multiplies.
///
/// A tile is either several whole samples lowered side by side (small images: a 7x7 or 8x8 stage still
/// gives BLAS a wide product) or a band of output rows of one sample (large images: the lowered band stays
/// in a core's L2 between lowering and multiplying, and the product writes straight into the output).
/// The batch is split into shares fixed by the problem (``Parallelism/fixedRanges(_:costPerItem:minimumCost:parts:)``),
/// never by the thread count; the threads take the shares and run single-threaded BLAS on them, and weight
/// gradients are summed from per-share partial sums in share order. So the tiles, every product and every
/// sum are the same at any thread count, and so are the results.
struct ConvPlan {
    let batch: Int
    let outputChannels: Int
    let geometry: ConvGeometry
    /// The shares of the batch (the same at any thread count).
    let shares: [Range<Int>]
    /// Samples lowered side by side into one matrix (1 when samples are split into bands).
    let group: Int
    /// Output rows per band when `group == 1`.
    let bandRows: Int

    /// Floats of lowered patches per tile (512 KB), and the width a product should reach; measured on
    /// resnet20 at 32x32 and 28x28 (2026-11).
    static let defaultBudget = 131_072
    static let targetColumns = 512

    init(batch: Int, outputChannels: Int, geometry: ConvGeometry, budget: Int = ConvPlan.defaultBudget) {
        self.batch = batch
        self.outputChannels = outputChannels
        self.geometry = geometry
        let pixels = geometry.columnCols, k = geometry.columnRows
        let flops = 2 * outputChannels * k * pixels
        shares = Parallelism.fixedRanges(batch, costPerItem: flops, minimumCost: 4_000_000)
        let largestShare = Swift.max(shares.map(\.count).max() ?? 1, 1)
        if k * pixels * 2 <= budget {
            var g = Swift.max(1, (ConvPlan.targetColumns + pixels - 1) / pixels)
            while g > 1 && k * g * pixels > budget { g -= 1 }
            group = Swift.min(g, largestShare)
            bandRows = geometry.outputHeight
        } else {
            group = 1
            bandRows = Swift.min(geometry.outputHeight, Swift.max(1, budget / (k * geometry.outputWidth)))
        }
    }

    var inputSize: Int { geometry.channels * geometry.height * geometry.width }
    var pixels: Int { geometry.columnCols }
    var outputSize: Int { outputChannels * pixels }
    private var scratchColumns: Int { group > 1 ? group * pixels : bandRows * geometry.outputWidth }

    /// The row length of a lowered matrix `width` columns wide: an odd number of 64-byte lines, so that a
    /// product reading 32 columns of successive rows spreads them over all of L1's sets (see `Gemm`).
    static func leadingDimension(_ width: Int) -> Int {
        let r = width % 32
        return width - r + (r <= 16 ? 16 : 48)
    }

    /// The tiles of a share: (first sample, samples, output rows).
    private func tiles(of share: Range<Int>) -> [(Int, Int, Range<Int>)] {
        var result: [(Int, Int, Range<Int>)] = []
        var n = share.lowerBound
        while n < share.upperBound {
            if group > 1 || bandRows >= geometry.outputHeight {
                let g = Swift.min(group, share.upperBound - n)
                result.append((n, g, 0..<geometry.outputHeight))
                n += g
            } else {
                var r = 0
                while r < geometry.outputHeight {
                    let end = Swift.min(r + bandRows, geometry.outputHeight)
                    result.append((n, 1, r..<end))
                    r = end
                }
                n += 1
            }
        }
        return result
    }

    /// Lowers a tile into `columns` and returns the matrix to multiply with its leading dimension.
    /// Pointwise single-sample tiles need no lowering: the image rows are the matrix.
    private func lowered(_ input: UnsafePointer<Float>, _ n0: Int, _ g: Int, _ rows: Range<Int>,
                         _ columns: UnsafeMutablePointer<Float>) -> (UnsafePointer<Float>, Int) {
        let ow = geometry.outputWidth
        if g == 1 && geometry.isPointwise {
            return (input + n0 * inputSize + rows.lowerBound * ow, pixels)
        }
        let width = g * rows.count * ow, ld = ConvPlan.leadingDimension(width)
        for s in 0..<g {
            let image = input + (n0 + s) * inputSize
            let destination = columns + s * rows.count * ow
            if geometry.isPointwise {
                for c in 0..<geometry.channels {
                    Vector.copy(image + c * pixels + rows.lowerBound * ow, to: destination + c * ld, count: rows.count * ow)
                }
            } else {
                Im2col.lower(image, geometry, rows: rows, into: destination, leadingDimension: ld)
            }
        }
        return (UnsafePointer(columns), ld)
    }

    func forward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                 output: UnsafeMutablePointer<Float>) {
        let k = geometry.columnRows, co = outputChannels, ow = geometry.outputWidth, p = pixels
        if geometry.isShiftable && !geometry.isPointwise && Gemm.usesShiftedConvolutions {
            forwardShifted(input: input, weight: weight, output: output)
            addBias(bias, to: output)
            return
        }
        if usesPhases {
            forwardPhased(input: input, weight: weight, output: output)
            addBias(bias, to: output)
            return
        }
        Parallelism.run(shares) { _, share in
            let columns = Storage(count: k * ConvPlan.leadingDimension(scratchColumns))
            let block = group > 1 ? Storage(count: co * scratchColumns) : nil
            defer { withExtendedLifetime((columns, block)) {} }
            for (n0, g, rows) in tiles(of: share) {
                let (source, ld) = lowered(input, n0, g, rows, columns.base)
                let width = g * rows.count * ow
                if g == 1 {
                    Gemm.multiply(weight, source, into: output + n0 * outputSize + rows.lowerBound * ow,
                                  m: co, n: width, k: k, ldb: ld, ldc: p)
                } else {
                    let b = block!.base
                    Gemm.multiply(weight, source, into: b, m: co, n: width, k: k, ldb: ld)
                    for s in 0..<g {
                        for c in 0..<co {
                            Vector.copy(b + c * width + s * p, to: output + (n0 + s) * outputSize + c * p, count: p)
                        }
                    }
                }
            }
        }
        addBias(bias, to: output)
    }

    /// The forward pass of a stride-1 convolution with output rows as wide as the input's, without
    /// lowering: Cohort's kernel reads each tap's shifted input plane in place (`cohort_conv_shifted_forward`).
    private func forwardShifted(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        let k = geometry.columnRows, co = outputChannels, g = geometry
        let packed = Storage(count: cohort_packed_weights_count(co, k))
        _ = cohort_pack_weights(co, k, weight, packed.base)
        Parallelism.run(shares) { _, share in
            let done = cohort_conv_shifted_forward(co, g.channels, g.height, g.width, g.kernelHeight, g.kernelWidth,
                                                   g.paddingHeight, g.paddingWidth, packed.base,
                                                   input + share.lowerBound * inputSize, inputSize, share.count,
                                                   output + share.lowerBound * outputSize, outputSize)
            precondition(done != 0, "conv2d: out of memory for the shifted convolution's tables")
        }
        withExtendedLifetime(packed) {}
    }

    private func addBias(_ bias: UnsafePointer<Float>?, to output: UnsafeMutablePointer<Float>) {
        guard let bias else { return }
        let p = pixels
        for n in 0..<batch {
            for c in 0..<outputChannels {
                let row = output + n * outputSize + c * p, v = bias[c]
                let vv = Vector.Lanes(repeating: v)
                Vector.map(row, row, p, { $0 + vv }, { $0 + v })
            }
        }
    }

    /// Writes the weight gradient and the input gradient.
    func backward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                  inputGradient: UnsafeMutablePointer<Float>?, weightGradient: UnsafeMutablePointer<Float>?) {
        if usesPhases {
            backwardPhased(input: input, weight: weight, outputGradient: outputGradient, inputGradient: inputGradient,
                           weightGradient: weightGradient)
            return
        }
        if let inputGradient, geometry.isSame, !geometry.isPointwise {
            backwardSame(input: input, weight: weight, outputGradient: outputGradient, inputGradient: inputGradient,
                         weightGradient: weightGradient)
            return
        }
        let k = geometry.columnRows, co = outputChannels, ow = geometry.outputWidth, p = pixels
        // Share 0 accumulates straight into the result; the others into partial sums added in order at the end.
        let partials = weightGradient == nil ? [] : (1..<Swift.max(shares.count, 1)).map { _ in Storage(count: co * k) }
        Parallelism.run(shares) { index, share in
            let dW = weightGradient == nil ? nil : index == 0 ? weightGradient : partials[index - 1].base
            dW?.update(repeating: 0, count: co * k)
            let columns = Storage(count: k * ConvPlan.leadingDimension(scratchColumns))
            let block = group > 1 ? Storage(count: co * scratchColumns) : nil
            defer { withExtendedLifetime((columns, block)) {} }
            for (n0, g, rows) in tiles(of: share) {
                let width = g * rows.count * ow
                // The output gradient of the tile as a Cout x width matrix (in place for one sample).
                let dy: UnsafePointer<Float>, ldy: Int
                if g == 1 {
                    dy = outputGradient + n0 * outputSize + rows.lowerBound * ow
                    ldy = p
                } else {
                    let b = block!.base
                    for s in 0..<g {
                        for c in 0..<co {
                            Vector.copy(outputGradient + (n0 + s) * outputSize + c * p, to: b + c * width + s * p, count: p)
                        }
                    }
                    dy = UnsafePointer(b)
                    ldy = width
                }
                if let dW {
                    // dW += dY x cols^T
                    let (source, ld) = lowered(input, n0, g, rows, columns.base)
                    Gemm.multiply(dy, source, transposeB: true, into: dW, m: co, n: k, k: width, beta: 1,
                                  lda: ldy, ldb: ld)
                }
                guard let inputGradient else { continue }
                if g == 1 && geometry.isPointwise {
                    // No overlap between pixels: dX rows = W^T dY, written in place.
                    Gemm.multiply(weight, transposeA: true, dy, into: inputGradient + n0 * inputSize + rows.lowerBound * ow,
                                  m: k, n: width, k: co, ldb: ldy, ldc: p)
                    continue
                }
                // dcols = W^T x dY, then fold back into the images (zeroed before their first tile).
                Gemm.multiply(weight, transposeA: true, dy, into: columns.base, m: k, n: width, k: co, ldb: ldy)
                for s in 0..<g {
                    let image = inputGradient + (n0 + s) * inputSize
                    if rows.lowerBound == 0 { Vector.fill(image, with: 0, count: inputSize) }
                    let scratch = columns.base + s * rows.count * ow
                    if geometry.isPointwise {
                        for c in 0..<geometry.channels {
                            Vector.add(scratch + c * width, into: image + c * p + rows.lowerBound * ow, count: rows.count * ow)
                        }
                    } else {
                        Im2col.accumulate(scratch, leadingDimension: width, geometry, rows: rows, into: image)
                    }
                }
            }
        }
        if let weightGradient {
            for partial in partials { Vector.add(partial.base, into: weightGradient, count: co * k) }
        }
        withExtendedLifetime(partials) {}
    }

    /// The weight gradient alone, by the route ``backward(input:weight:outputGradient:inputGradient:weightGradient:)``
    /// takes for both gradients: the same sums in the same order, so the same values.
    func weightGradient(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                        into weightGradient: UnsafeMutablePointer<Float>) {
        if !usesPhases && geometry.isSame && !geometry.isPointwise {
            backwardSame(input: input, weight: weight, outputGradient: outputGradient, inputGradient: nil,
                         weightGradient: weightGradient)
        } else {
            backward(input: input, weight: weight, outputGradient: outputGradient, inputGradient: nil,
                     weightGradient: weightGradient)
        }
    }

    /// The input gradient alone, which does not read the input: the same values as
    /// ``backward(input:weight:outputGradient:inputGradient:weightGradient:)`` writes.
    func inputGradient(weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                       into inputGradient: UnsafeMutablePointer<Float>) {
        // Every route reads the input only for the weight gradient; any valid pointer stands in for it.
        backward(input: outputGradient, weight: weight, outputGradient: outputGradient, inputGradient: inputGradient,
                 weightGradient: nil)
    }

    /// The backward pass of a "same" convolution (stride 1, odd kernel, size-preserving padding) by
    /// lowering the *output gradient* once:
    ///
    ///     L = im2col(dY)                     (Cout kh kw x pixels, the forward lowering applied to dY)
    ///     dX = W' L,  W'[c, (o,i,j)] = W[o, c, kh-1-i, kw-1-j]   (the flipped, transposed kernel)
    ///     dW'[c, (o,i,j)] += X L^T,  dW[o, c, i, j] = dW'[c, (o, kh-1-i, kw-1-j)]
    ///
    /// One lowering serves both gradients, the input is used in place, and no col2im is needed.
    private func backwardSame(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                              inputGradient: UnsafeMutablePointer<Float>?, weightGradient: UnsafeMutablePointer<Float>?) {
        let c = geometry.channels, co = outputChannels, kh = geometry.kernelHeight, kw = geometry.kernelWidth
        let taps = kh * kw, lk = co * taps, ow = geometry.outputWidth, p = pixels
        let gradientGeometry = ConvGeometry(channels: co, height: geometry.height, width: geometry.width,
                                            kernelHeight: kh, kernelWidth: kw, strideHeight: 1, strideWidth: 1,
                                            paddingHeight: geometry.paddingHeight, paddingWidth: geometry.paddingWidth)
        // W'[c, (o, i, j)] = W[o, c, kh-1-i, kw-1-j]
        let flipped = Storage(count: c * lk)
        for o in 0..<co {
            for ci in 0..<c {
                for t in 0..<taps {
                    flipped.base[ci * lk + o * taps + t] = weight[(o * c + ci) * taps + (taps - 1 - t)]
                }
            }
        }
        // Per-share dW' (c x lk: the channels, few, are the product's rows), summed in order at the end.
        let partials = (0..<Swift.max(shares.count, 1)).map { _ in Storage(count: weightGradient == nil ? 1 : lk * c) }
        let lowerRows = lk, scratch = scratchColumns
        // With Cohort's kernel, dX is the shifted convolution of dY with W' (no lowering); the lowering below
        // then serves dW' alone.
        let shifted = Gemm.usesShiftedConvolutions && gradientGeometry.isShiftable
        let packed = Storage(count: shifted ? cohort_packed_weights_count(c, lk) : 1)
        if shifted { _ = cohort_pack_weights(c, lk, flipped.base, packed.base) }
        Parallelism.run(shares) { index, share in
            let dWPrime = weightGradient == nil ? nil : partials[index].base
            dWPrime?.update(repeating: 0, count: lk * c)
            if shifted {
                let g = gradientGeometry
                if let inputGradient {
                    let done = cohort_conv_shifted_forward(c, co, g.height, g.width, kh, kw, g.paddingHeight, g.paddingWidth,
                                                           packed.base, outputGradient + share.lowerBound * outputSize, outputSize,
                                                           share.count, inputGradient + share.lowerBound * inputSize, inputSize)
                    precondition(done != 0, "conv2d: out of memory for the shifted convolution's tables")
                }
                guard let dWPrime else { return }
                let weightDone = cohort_conv_shifted_weight_gradient(
                    c, co, g.height, g.width, kh, kw, g.paddingHeight, g.paddingWidth,
                    input + share.lowerBound * inputSize, inputSize, outputGradient + share.lowerBound * outputSize, outputSize,
                    share.count, dWPrime, lk)
                if weightDone != 0 { return }
            }
            let columns = Storage(count: lowerRows * ConvPlan.leadingDimension(scratch))
            let inputBlock = group > 1 ? Storage(count: c * scratch) : nil
            let outputBlock = group > 1 ? Storage(count: c * scratch) : nil
            defer { withExtendedLifetime((columns, inputBlock, outputBlock)) {} }
            for (n0, g, rows) in tiles(of: share) {
                let width = g * rows.count * ow, ld = ConvPlan.leadingDimension(width)
                for s in 0..<g {
                    Im2col.lower(outputGradient + (n0 + s) * outputSize, gradientGeometry, rows: rows,
                                 into: columns.base + s * rows.count * ow, leadingDimension: ld)
                }
                if g == 1 {
                    let offset = n0 * inputSize + rows.lowerBound * ow
                    if !shifted, let inputGradient {
                        Gemm.multiply(flipped.base, columns.base, into: inputGradient + offset, m: c, n: width, k: lk, ldb: ld, ldc: p)
                    }
                    if let dWPrime {
                        Gemm.multiply(input + offset, columns.base, transposeB: true, into: dWPrime,
                                      m: c, n: lk, k: width, beta: 1, lda: p, ldb: ld)
                    }
                } else {
                    if !shifted, let inputGradient {
                        let dx = outputBlock!.base
                        Gemm.multiply(flipped.base, columns.base, into: dx, m: c, n: width, k: lk, ldb: ld)
                        for s in 0..<g {
                            for ci in 0..<c {
                                Vector.copy(dx + ci * width + s * p, to: inputGradient + (n0 + s) * inputSize + ci * p, count: p)
                            }
                        }
                    }
                    if let dWPrime {
                        let xb = inputBlock!.base
                        for s in 0..<g {
                            for ci in 0..<c {
                                Vector.copy(input + (n0 + s) * inputSize + ci * p, to: xb + ci * width + s * p, count: p)
                            }
                        }
                        Gemm.multiply(xb, columns.base, transposeB: true, into: dWPrime, m: c, n: lk, k: width, beta: 1, ldb: ld)
                    }
                }
            }
        }
        if let weightGradient {
            let total = partials[0].base
            for partial in partials.dropFirst() { Vector.add(partial.base, into: total, count: lk * c) }
            for o in 0..<co {
                for ci in 0..<c {
                    for t in 0..<taps {
                        weightGradient[(o * c + ci) * taps + t] = total[ci * lk + o * taps + (taps - 1 - t)]
                    }
                }
            }
        }
        withExtendedLifetime((flipped, partials, packed)) {}
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
