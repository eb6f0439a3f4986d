import Tensors

/// Decides which samples form each batch of an epoch. The order depends only on (seed, epoch).
public protocol BatchSampler: Sendable {
    /// The batches of `epoch`, as data-set indices.
    func batches(epoch: Int) -> [[Int]]
}

/// Shuffled epochs: a fresh permutation per epoch, cut into batches. A final batch of one sample is
/// dropped (batch norm cannot train on it); any other final partial batch is kept. With `shuffle` off
/// (evaluation) the order is the data set's and nothing is dropped.
public struct ShuffledSampler: BatchSampler {
    public let count: Int
    public let batchSize: Int
    public let seed: UInt64
    public let shuffle: Bool

    public init(count: Int, batchSize: Int, seed: UInt64, shuffle: Bool = true) {
        precondition(batchSize > 0)
        self.count = count; self.batchSize = batchSize; self.seed = seed; self.shuffle = shuffle
    }

    public func batches(epoch: Int) -> [[Int]] {
        var order = Array(0..<count)
        if shuffle {
            var g = RandomStream.generator(seed: seed, .shuffle, epoch)
            order.shuffle(using: &g)
        }
        var result = stride(from: 0, to: count, by: batchSize).map { Array(order[$0..<min($0 + batchSize, count)]) }
        if shuffle, let last = result.last, last.count == 1, result.count > 1 { result.removeLast() }
        return result
    }
}

/// MCL's sampler: every class present in a batch appears at least `m` times (so every anchor of the
/// contrastive losses has a positive). Each batch takes `min(classes, batchSize / m)` classes in a
/// shuffled rotation, `m` samples of each, and fills the rest from the same classes in turn; samples of
/// a class are drawn without replacement from a per-class shuffle that is renewed when used up. An epoch
/// has `count / batchSize` batches (at least one).
public struct MPerClassSampler: BatchSampler {
    public let labels: [Int]
    public let batchSize: Int
    public let m: Int
    public let seed: UInt64

    public init(labels: [Int], batchSize: Int, m: Int = 2, seed: UInt64) {
        precondition(m >= 1 && batchSize >= m, "m-per-class sampler needs batch size >= m")
        self.labels = labels; self.batchSize = batchSize; self.m = m; self.seed = seed
    }

    public func batches(epoch: Int) -> [[Int]] {
        var byClass: [Int: [Int]] = [:]
        for (i, y) in labels.enumerated() { byClass[y, default: []].append(i) }
        let classes = byClass.keys.sorted()
        guard !classes.isEmpty else { return [] }
        var g = RandomStream.generator(seed: seed, .classSampler, epoch)
        var pools: [Int: [Int]] = [:]
        func draw(_ c: Int) -> Int {
            if pools[c, default: []].isEmpty { pools[c] = byClass[c]!.shuffled(using: &g) }
            return pools[c]!.removeLast()
        }
        var rotation: [Int] = []
        let perBatch = Swift.min(classes.count, Swift.max(1, batchSize / m))
        let batchCount = Swift.max(1, labels.count / batchSize)
        var result: [[Int]] = []
        for _ in 0..<batchCount {
            var chosen: [Int] = []
            while chosen.count < perBatch {
                if rotation.isEmpty { rotation = classes.shuffled(using: &g) }
                let c = rotation.removeLast()
                if !chosen.contains(c) { chosen.append(c) }
            }
            var batch: [Int] = []
            for c in chosen { for _ in 0..<m { batch.append(draw(c)) } }
            var k = 0
            while batch.count < batchSize { batch.append(draw(chosen[k % chosen.count])); k += 1 }
            batch.shuffle(using: &g)
            result.append(batch)
        }
        return result
    }
}
