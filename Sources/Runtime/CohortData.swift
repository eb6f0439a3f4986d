import Data

/// The data every member of a cohort derives its batches from: the training and test sets (after the
/// configured limits) and the sampler. Built from the configuration alone, so every process of a
/// distributed cohort builds the same batches.
public struct CohortData: Sendable {
    public let trainSet: DataSet
    public let testSet: DataSet
    public let sampler: any BatchSampler
    public let stepsPerEpoch: Int
    let seed: UInt64

    /// Loads both splits.
    /// - Throws: ``DataSetError`` (missing files say how to install the data set).
    public init(configuration: CohortConfiguration) throws {
        let kind = configuration.data.dataSet
        trainSet = try DataSet.load(kind, split: .train, directory: configuration.data.directory).prefix(configuration.data.trainLimit)
        testSet = try DataSet.load(kind, split: .test, directory: configuration.data.directory).prefix(configuration.data.testLimit)
        switch configuration.sampler {
        case .shuffled: sampler = ShuffledSampler(count: trainSet.count, batchSize: configuration.batchSize, seed: configuration.seed)
        case .mPerClass: sampler = MPerClassSampler(labels: trainSet.labels, batchSize: configuration.batchSize, seed: configuration.seed)
        }
        stepsPerEpoch = sampler.batches(epoch: 0).count
        seed = configuration.seed
    }

    /// The augmented training batches of `epoch`, prepared in the background.
    public func loader(epoch: Int, startStep: Int = 0) -> BatchLoader {
        BatchLoader(assembler: BatchAssembler(dataSet: trainSet, augment: true, seed: seed), batches: sampler.batches(epoch: epoch),
                    epoch: epoch, startStep: startStep)
    }
}
