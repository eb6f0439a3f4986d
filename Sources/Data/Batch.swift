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
        let augmentation = kind.augmentation
        let placements = indices.enumerated().map { position, index in
            guard augment else { return TrainingKernels.ImagePlacement(index: index, dy: 0, dx: 0, flip: false) }
            var g = RandomStream.generator(seed: seed, .augment, epoch, step, position, index)
            let span = 2 * augmentation.padding + 1
            let dy = Int(g.next() % UInt64(span)) - augmentation.padding
            let dx = Int(g.next() % UInt64(span)) - augmentation.padding
            let flip = augmentation.horizontalFlip && g.next() & 1 == 1
            return TrainingKernels.ImagePlacement(index: index, dy: dy, dx: dx, flip: flip)
        }
        let images = TrainingKernels.assembleImages(pixels: dataSet.pixels, placements: placements, channels: c, height: h, width: w, table: table)
        return Batch(epoch: epoch, step: step, indices: indices, labels: indices.map { dataSet.labels[$0] },
                     images: images, shape: [indices.count, c, h, w])
    }
}
