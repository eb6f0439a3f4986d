/// The element loops of training that are not tensor ops: the optimizer's update, counting correct
/// predictions, and turning stored images into a batch. Kept here, with the other kernels, so that the
/// modules above touch no pointer.
public enum TrainingKernels {
    /// One SGD update of `parameter` from `gradient` (PyTorch's `torch.optim.SGD`): with weight decay
    /// `wd`, `d = g + wd p`; with momentum `m` the buffer becomes `d` on the first step (`first`) and
    /// `m b + (1 - dampening) d` after, and the step is `b` (or `d + m b` with Nesterov).
    public static func sgdUpdate(_ parameter: Tensor, gradient: Tensor, momentumBuffer: Tensor?, first: Bool, learningRate lr: Float,
                                 weightDecay wd: Float, momentum m: Float, dampening: Float, nesterov: Bool) {
        precondition(gradient.count == parameter.count && (momentumBuffer?.count ?? parameter.count) == parameter.count)
        let p = parameter.data, g = gradient.data, n = parameter.count, keep = 1 - dampening
        guard let buf = momentumBuffer?.data else {
            for i in 0..<n { p[i] -= lr * (g[i] + wd * p[i]) }
            return
        }
        for i in 0..<n {
            let d = g[i] + wd * p[i]
            let b = first ? d : m * buf[i] + keep * d
            buf[i] = b
            p[i] -= lr * (nesterov ? d + m * b : b)
        }
    }

    /// Whether every element of `tensor` is finite: the sum of a finite vector times zero is zero; any
    /// NaN or infinity makes it NaN.
    public static func isFinite(_ tensor: Tensor) -> Bool {
        var acc: Float = 0
        let d = tensor.data
        for i in 0..<tensor.count { acc += d[i] * 0 }
        return !(acc != 0 || acc.isNaN)
    }

    /// For `logits` (`rows x classes`), how many `labels` are the top-1 and among the top-5 predictions.
    /// Ties are broken towards the lower class index.
    public static func topKCorrect(logits: Tensor, labels: [Int]) -> (top1: Int, top5: Int) {
        let classes = logits.shape[1]
        precondition(logits.shape[0] >= labels.count)
        var top1 = 0, top5 = 0
        for (row, label) in labels.enumerated() {
            let p = logits.data + row * classes
            let target = p[label]
            // Rank of the label: classes scoring higher, or equal with a lower index.
            var rank = 0
            for j in 0..<classes where p[j] > target || (p[j] == target && j < label) { rank += 1 }
            if rank == 0 { top1 += 1 }
            if rank < 5 { top5 += 1 }
        }
        return (top1, top5)
    }

    /// Where one stored image goes in a batch, and how: its index in the store, its shift and flip.
    public struct ImagePlacement: Sendable {
        public var index: Int
        public var dy: Int
        public var dx: Int
        public var flip: Bool
        public init(index: Int, dy: Int, dx: Int, flip: Bool) { self.index = index; self.dy = dy; self.dx = dx; self.flip = flip }
    }

    /// A batch of `C x H x W` images from 8-bit `pixels` (image after image): each shifted by (`dy`,
    /// `dx`) with zero padding (the padded value is `table[c][0]`), flipped horizontally when asked, and
    /// mapped through `table[c]` (a value per byte and channel).
    public static func assembleImages(pixels: [UInt8], placements: [ImagePlacement], channels c: Int, height h: Int, width w: Int,
                                      table: [[Float]]) -> [Float] {
        let size = c * h * w
        var images = [Float](repeating: 0, count: placements.count * size)
        images.withUnsafeMutableBufferPointer { out in
            pixels.withUnsafeBufferPointer { store in
                for (position, placement) in placements.enumerated() {
                    let source = store.baseAddress! + placement.index * size
                    let destination = out.baseAddress! + position * size
                    for ch in 0..<c {
                        let lut = table[ch]
                        let zero = lut[0]
                        for y in 0..<h {
                            let sy = y + placement.dy
                            let row = destination + (ch * h + y) * w
                            guard sy >= 0 && sy < h else {
                                for x in 0..<w { row[x] = zero }
                                continue
                            }
                            let src = source + (ch * h + sy) * w
                            for x in 0..<w {
                                let sx = (placement.flip ? w - 1 - x : x) + placement.dx
                                row[x] = (sx >= 0 && sx < w) ? lut[Int(src[sx])] : zero
                            }
                        }
                    }
                }
            }
        }
        return images
    }
}
