import Tensors

/// One batch of normalised (and, for training, augmented) images with their labels and data-set indices.
/// A plain value: it is made on the loader's thread and handed to the training thread.
public struct Batch: Sendable {
    public let epoch: Int
    /// The step within the epoch (0-based).
    public let step: Int
    /// Data-set indices of the samples, in batch order.
    public let indices: [Int]
    public let labels: [Int]
    /// `size x C x H x W`, normalised.
    public let images: [Float]
    public let shape: [Int]

    public var size: Int { labels.count }

    /// The images as a tensor (`size x C x H x W`).
    public func imageTensor() -> Tensor { Tensor(images, shape: shape) }
}

/// Turns data-set indices into a batch: crop, flip, scale to [0, 1] and normalise per channel.
///
/// The crop offsets and flips of sample `i` at position `p` of step `s` in epoch `e` come from the stream
/// (seed, augment, e, s, p, i), so they are the same on every run and every thread.
public struct BatchAssembler: Sendable {
    public let dataSet: DataSet
    public let augment: Bool
    public let seed: UInt64
    /// `table[c][v]` = (v / 255 - mean[c]) / std[c].
    private let table: [[Float]]

    public init(dataSet: DataSet, augment: Bool, seed: UInt64) {
        self.dataSet = dataSet
        self.augment = augment
        self.seed = seed
        let kind = dataSet.kind
        table = (0..<kind.channels).map { c in
            (0..<256).map { v in (Float(v) / 255 - kind.mean[c]) / kind.std[c] }
        }
    }

    public func assemble(indices: [Int], epoch: Int, step: Int) -> Batch {
        let kind = dataSet.kind
        let (c, h, w) = (kind.channels, kind.height, kind.width)
        let size = c * h * w
        var images = [Float](repeating: 0, count: indices.count * size)
        let augmentation = kind.augmentation
        images.withUnsafeMutableBufferPointer { out in
            dataSet.pixels.withUnsafeBufferPointer { pixels in
                for (position, index) in indices.enumerated() {
                    var dy = 0, dx = 0, flip = false
                    if augment {
                        var g = RandomStream.generator(seed: seed, .augment, epoch, step, position, index)
                        let span = 2 * augmentation.padding + 1
                        dy = Int(g.next() % UInt64(span)) - augmentation.padding
                        dx = Int(g.next() % UInt64(span)) - augmentation.padding
                        flip = augmentation.horizontalFlip && g.next() & 1 == 1
                    }
                    let source = pixels.baseAddress! + index * size
                    let destination = out.baseAddress! + position * size
                    for ch in 0..<c {
                        let lut = table[ch]
                        let zero = lut[0]
                        for y in 0..<h {
                            let sy = y + dy
                            let row = destination + (ch * h + y) * w
                            guard sy >= 0 && sy < h else {
                                for x in 0..<w { row[x] = zero }
                                continue
                            }
                            let src = source + (ch * h + sy) * w
                            for x in 0..<w {
                                let sx = (flip ? w - 1 - x : x) + dx
                                row[x] = (sx >= 0 && sx < w) ? lut[Int(src[sx])] : zero
                            }
                        }
                    }
                }
            }
        }
        return Batch(epoch: epoch, step: step, indices: indices, labels: indices.map { dataSet.labels[$0] },
                     images: images, shape: [indices.count, c, h, w])
    }
}
