import Testing
@testable import Data

@Suite struct SamplerTests {
    @Test func shuffledEpochsAreDeterministicPermutations() {
        let s = ShuffledSampler(count: 1000, batchSize: 128, seed: 5)
        let a = s.batches(epoch: 0), b = s.batches(epoch: 0), c = s.batches(epoch: 1)
        #expect(a == b)
        #expect(a != c)
        #expect(a.flatMap { $0 }.sorted() == Array(0..<1000))
        #expect(a.count == 8 && a.last!.count == 1000 - 7 * 128)
        #expect(ShuffledSampler(count: 1000, batchSize: 128, seed: 6).batches(epoch: 0) != a)
        // A final batch of one is dropped; evaluation order keeps everything in order.
        #expect(ShuffledSampler(count: 257, batchSize: 128, seed: 1).batches(epoch: 0).map(\.count) == [128, 128])
        #expect(ShuffledSampler(count: 5, batchSize: 2, seed: 1, shuffle: false).batches(epoch: 0) == [[0, 1], [2, 3], [4]])
    }

    @Test(arguments: [(10, 128, 2), (100, 128, 2), (3, 16, 4), (10, 7, 2)])
    func mPerClassGivesEveryPresentClassAtLeastMSamples(_ classes: Int, _ batch: Int, _ m: Int) {
        let labels = (0..<2000).map { ($0 * 7919) % classes }
        let s = MPerClassSampler(labels: labels, batchSize: batch, m: m, seed: 3)
        let batches = s.batches(epoch: 2)
        #expect(batches.count == 2000 / batch)
        for b in batches {
            #expect(b.count == batch)
            var counts: [Int: Int] = [:]
            for i in b { counts[labels[i], default: 0] += 1 }
            #expect(counts.values.allSatisfy { $0 >= m }, "class counts \(counts)")
        }
        #expect(s.batches(epoch: 2) == batches)
        #expect(s.batches(epoch: 3) != batches)
    }
}

@Suite struct BatchTests {
    func tinySet() -> DataSet {
        // 4 Fashion-MNIST-shaped images whose pixel value encodes its position.
        let pixels = (0..<4).flatMap { n in (0..<784).map { p in UInt8((n * 50 + p) % 256) } }
        return DataSet(kind: .fashionMNIST, split: .train, pixels: pixels, labels: [3, 1, 4, 1])
    }

    @Test func normalisesWithoutAugmentation() {
        let set = tinySet()
        let batch = BatchAssembler(dataSet: set, augment: false, seed: 0).assemble(indices: [2, 0], epoch: 0, step: 0)
        #expect(batch.shape == [2, 1, 28, 28] && batch.labels == [4, 3] && batch.indices == [2, 0])
        for p in [0, 17, 783] {
            let v = Float(set.pixels[2 * 784 + p])
            #expect(abs(batch.images[p] - (v / 255 - 0.2860) / 0.3530) < 1e-6)
        }
    }

    @Test func augmentationIsAShiftedCopyAndDeterministic() {
        let set = tinySet()
        let assembler = BatchAssembler(dataSet: set, augment: true, seed: 9)
        let plain = BatchAssembler(dataSet: set, augment: false, seed: 9).assemble(indices: [1], epoch: 0, step: 0).images
        let zero = (0 - 0.2860) / Float(0.3530)
        var shifts = Set<[Int]>()
        for step in 0..<30 {
            let a = assembler.assemble(indices: [1], epoch: 4, step: step).images
            #expect(a == assembler.assemble(indices: [1], epoch: 4, step: step).images)
            // Find the shift (dy, dx) in [-2, 2]^2 that explains the crop.
            var found: [Int]?
            for dy in -2...2 { for dx in -2...2 where found == nil {
                var ok = true
                for y in 0..<28 where ok { for x in 0..<28 where ok {
                    let sy = y + dy, sx = x + dx
                    let expected = (sy >= 0 && sy < 28 && sx >= 0 && sx < 28) ? plain[sy * 28 + sx] : zero
                    ok = a[y * 28 + x] == expected
                } }
                if ok { found = [dy, dx] }
            } }
            #expect(found != nil)
            if let found { shifts.insert(found) }
        }
        #expect(shifts.count > 5, "crops should vary from step to step")
    }

    @Test func cifarAugmentationFlips() {
        let pixels = (0..<3072).map { UInt8($0 % 32) }   // each row 0...31
        let set = DataSet(kind: .cifar10, split: .train, pixels: pixels, labels: [0])
        let assembler = BatchAssembler(dataSet: set, augment: true, seed: 1)
        var sawFlip = false, sawPlain = false
        for step in 0..<40 {
            let row = Array(assembler.assemble(indices: [0], epoch: 0, step: step).images[(16 * 32)..<(17 * 32)])
            // Inside the crop, a row rises (plain) or falls (flipped).
            let middle = row[12...20]
            if zip(middle, middle.dropFirst()).allSatisfy({ $0 < $1 }) { sawPlain = true }
            if zip(middle, middle.dropFirst()).allSatisfy({ $0 > $1 }) { sawFlip = true }
        }
        #expect(sawFlip && sawPlain)
    }

    @Test func loaderDeliversEveryBatchInOrderThenEnds() {
        let set = tinySet()
        let batches = [[0, 1], [2, 3], [1, 2]]
        let loader = BatchLoader(assembler: BatchAssembler(dataSet: set, augment: false, seed: 0), batches: batches, epoch: 3,
                                 startStep: 1)
        #expect(loader.batchCount == 3)
        #expect(loader.next()?.indices == [2, 3])
        #expect(loader.next()?.step == 2)
        #expect(loader.next() == nil)
        #expect(loader.next() == nil)
        // Dropping a loader that has not been drained stops its thread without blocking.
        _ = BatchLoader(assembler: BatchAssembler(dataSet: set, augment: false, seed: 0),
                        batches: Array(repeating: [0, 1], count: 100), epoch: 0)
    }
}
