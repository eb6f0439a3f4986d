import CKernels

/// Stride-2 convolutions without lowering, on Cohort's AVX2 and AVX-512 kernels.
///
/// Split an image into its four phase planes — even and odd rows crossed with even and odd columns, each
/// `h/2 x w/2` — and a stride-2 convolution becomes a stride-1 one over them: output pixel `(y, x)` reads
/// input `(2y + ky - ph, 2x + kx - pw)`, which is pixel `(y + dy, x + dx)` of phase `(py, px)` with
/// `ky - ph = 2 dy + py` (and the same for columns). Every tap is a phase plane shifted by less than one
/// row, the layout `cohort_conv_taps_forward` and `cohort_conv_taps_weight_gradient` gather from. The input
/// gradient splits the same way, phase by phase: phase `P` of `dX` is the stride-1 convolution of `dY` with
/// the taps that land on `P`, shifted the other way.
struct PhaseTaps {
    /// Per tap (row-major over the kernel): its phase (`2 py + px`) and shift.
    let phase: [Int], dy: [Int], dx: [Int]
    /// The phase planes' size.
    let rows: Int, columns: Int

    init(_ g: ConvGeometry) {
        var phase: [Int] = [], dy: [Int] = [], dx: [Int] = []
        for ky in 0..<g.kernelHeight {
            for kx in 0..<g.kernelWidth {
                let ry = ky - g.paddingHeight, rx = kx - g.paddingWidth
                let py = ((ry % 2) + 2) % 2, px = ((rx % 2) + 2) % 2
                phase.append(2 * py + px); dy.append((ry - py) / 2); dx.append((rx - px) / 2)
            }
        }
        (self.phase, self.dy, self.dx) = (phase, dy, dx)
        (rows, columns) = (g.height / 2, g.width / 2)
    }

    var taps: Int { phase.count }
    var planeSize: Int { rows * columns }

    /// The taps whose input pixels lie in phase `p`.
    func taps(inPhase p: Int) -> [Int] { (0..<taps).filter { phase[$0] == p } }
}

extension ConvGeometry {
    /// Stride 2 in both directions over an image of even height and width, with the output half as wide
    /// (a 3x3 kernel padded by 1: ResNet's downsampling convolutions): the phase-plane form applies.
    var isPhaseable: Bool {
        strideHeight == 2 && strideWidth == 2 && height % 2 == 0 && width % 2 == 0 && height >= 2 && width >= 2
            && outputWidth == width / 2 && kernelHeight * kernelWidth > 1
    }
}

enum PhasePlanes {
    /// Splits `image` (`C x H x W`) into `C x 4 x (H/2) x (W/2)`: channel `c`'s phase `2 py + px` holds
    /// pixels `(2y + py, 2x + px)`.
    static func split(_ image: UnsafePointer<Float>, channels: Int, height h: Int, width w: Int,
                      into planes: UnsafeMutablePointer<Float>) {
        let (rows, columns) = (h / 2, w / 2), size = rows * columns
        for c in 0..<channels {
            for py in 0..<2 {
                for y in 0..<rows {
                    let source = image + (c * h + 2 * y + py) * w
                    let even = planes + (4 * c + 2 * py) * size + y * columns, odd = even + size
                    deinterleave(source, even, odd, columns)
                }
            }
        }
    }

    /// Interleaves an input gradient computed phase by phase back into an image: `phases`
    /// (`4 x C x (H/2) x (W/2)`, phase-major) into `image` (`C x H x W`), every pixel overwritten.
    static func merge(_ phases: UnsafePointer<Float>, channels: Int, height h: Int, width w: Int,
                      into image: UnsafeMutablePointer<Float>) {
        let (rows, columns) = (h / 2, w / 2), size = rows * columns, phaseStride = channels * size
        for c in 0..<channels {
            for py in 0..<2 {
                for y in 0..<rows {
                    let even = phases + (2 * py) * phaseStride + c * size + y * columns
                    interleave(even, even + phaseStride, image + (c * h + 2 * y + py) * w, columns)
                }
            }
        }
    }

    /// `even[i] = source[2i]`, `odd[i] = source[2i + 1]` for `i < n`.
    @inline(__always)
    private static func deinterleave(_ source: UnsafePointer<Float>, _ even: UnsafeMutablePointer<Float>,
                                     _ odd: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        let raw = UnsafeRawPointer(source)
        while i + 8 <= n {
            let v = raw.loadUnaligned(fromByteOffset: 8 * i, as: SIMD16<Float>.self)
            UnsafeMutableRawPointer(even + i).storeBytes(of: v.evenHalf, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(odd + i).storeBytes(of: v.oddHalf, as: SIMD8<Float>.self)
            i += 8
        }
        while i < n { even[i] = source[2 * i]; odd[i] = source[2 * i + 1]; i += 1 }
    }

    /// `destination[2i] = even[i]`, `destination[2i + 1] = odd[i]` for `i < n`.
    @inline(__always)
    private static func interleave(_ even: UnsafePointer<Float>, _ odd: UnsafePointer<Float>,
                                   _ destination: UnsafeMutablePointer<Float>, _ n: Int) {
        var i = 0
        while i + 8 <= n {
            var v = SIMD16<Float>()
            v.evenHalf = UnsafeRawPointer(even + i).loadUnaligned(as: SIMD8<Float>.self)
            v.oddHalf = UnsafeRawPointer(odd + i).loadUnaligned(as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(destination + 2 * i).storeBytes(of: v, as: SIMD16<Float>.self)
            i += 8
        }
        while i < n { destination[2 * i] = even[i]; destination[2 * i + 1] = odd[i]; i += 1 }
    }
}

extension ConvPlan {
    /// Whether this convolution runs in phase-plane form (a stride-2 convolution on Cohort's own kernels).
    var usesPhases: Bool { geometry.isPhaseable && Gemm.path != .blas }

    /// The forward pass in phase-plane form: each image split into its phase planes (in L2), then one
    /// shifted-plane product.
    func forwardPhased(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        let g = geometry, taps = PhaseTaps(g), k = g.columnRows, co = outputChannels
        let planes = taps.phase.map { $0 * taps.planeSize }
        let packed = Storage(count: cohort_packed_weights_count(co, k))
        _ = cohort_pack_weights(co, k, weight, packed.base)
        Parallelism.run(shares) { _, share in
            let split = Storage(count: inputSize)
            defer { withExtendedLifetime(split) {} }
            for n in share {
                PhasePlanes.split(input + n * inputSize, channels: g.channels, height: g.height, width: g.width, into: split.base)
                let done = cohort_conv_taps_forward(co, g.channels, 4 * taps.planeSize, taps.rows, taps.columns,
                                                    g.outputHeight, taps.taps, planes, taps.dy, taps.dx, packed.base,
                                                    split.base, inputSize, 1, output + n * outputSize, outputSize)
                precondition(done != 0, "conv2d: out of memory for the phase-plane convolution's tables")
            }
        }
        withExtendedLifetime(packed) {}
    }

    /// The backward pass in phase-plane form. The weight gradient: `dW[o][c, t] += sum_j dY[o][j] row_(c, t)[j]`
    /// over the split input, summed per share (shares fixed by the problem) and the shares added in order.
    /// The input gradient: per phase, the taps landing there as a stride-1 convolution of `dY` (weights
    /// `W[o][c][t]` as a `C x (Cout taps)` matrix, shifts negated), then the phases merged into `dX`.
    func backwardPhased(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                        inputGradient: UnsafeMutablePointer<Float>?, weightGradient: UnsafeMutablePointer<Float>?) {
        let g = geometry, taps = PhaseTaps(g), k = g.columnRows, co = outputChannels, c = g.channels
        let planes = taps.phase.map { $0 * taps.planeSize }
        // Per phase: its taps, their negated shifts, and the weights packed as C x (Cout taps).
        let phaseTaps = (0..<4).map { taps.taps(inPhase: $0) }
        let phaseDy = phaseTaps.map { $0.map { -taps.dy[$0] } }, phaseDx = phaseTaps.map { $0.map { -taps.dx[$0] } }
        let zeros = [Int](repeating: 0, count: taps.taps)
        let packedPhases: [Storage?] = phaseTaps.map { list in
            guard inputGradient != nil, !list.isEmpty else { return nil }
            let width = co * list.count
            let matrix = Storage(count: c * width)
            for ci in 0..<c {
                for o in 0..<co {
                    for (i, t) in list.enumerated() {
                        matrix.base[ci * width + o * list.count + i] = weight[(o * c + ci) * taps.taps + t]
                    }
                }
            }
            let packed = Storage(count: cohort_packed_weights_count(c, width))
            _ = cohort_pack_weights(c, width, matrix.base, packed.base)
            return packed
        }
        let partials = (1..<Swift.max(shares.count, 1)).map { _ in Storage(count: co * k) }
        Parallelism.run(shares) { index, share in
            let dW = weightGradient == nil ? nil : index == 0 ? weightGradient : partials[index - 1].base
            dW?.update(repeating: 0, count: co * k)
            let scratch = Storage(count: inputSize)
            defer { withExtendedLifetime(scratch) {} }
            for n in share {
                let dy = outputGradient + n * outputSize
                if let dW {
                    PhasePlanes.split(input + n * inputSize, channels: c, height: g.height, width: g.width, into: scratch.base)
                    let done = cohort_conv_taps_weight_gradient(co, c, 4 * taps.planeSize, taps.rows, taps.columns,
                                                                g.outputHeight, taps.taps, planes, taps.dy, taps.dx,
                                                                dy, outputSize, scratch.base, inputSize, 1, dW, k)
                    precondition(done != 0, "conv2d: out of memory for the phase-plane weight gradient's tables")
                }
                guard let inputGradient else { continue }
                // Phase-major: phase p of channel ci at scratch[(p C + ci) planeSize].
                for p in 0..<4 {
                    let out = scratch.base + p * c * taps.planeSize
                    guard let packed = packedPhases[p] else {
                        out.update(repeating: 0, count: c * taps.planeSize)
                        continue
                    }
                    let done = cohort_conv_taps_forward(c, co, pixels, g.outputHeight, g.outputWidth, taps.rows,
                                                        phaseTaps[p].count, zeros, phaseDy[p], phaseDx[p],
                                                        packed.base, dy, outputSize, 1, out, c * taps.planeSize)
                    precondition(done != 0, "conv2d: out of memory for the phase-plane input gradient's tables")
                }
                PhasePlanes.merge(scratch.base, channels: c, height: g.height, width: g.width, into: inputGradient + n * inputSize)
            }
        }
        if let weightGradient {
            for partial in partials { Vector.add(partial.base, into: weightGradient, count: co * k) }
        }
        withExtendedLifetime((partials, packedPhases)) {}
    }
}
