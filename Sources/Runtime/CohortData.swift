import Foundation
import Data
import Training

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
        func load(_ split: Split, limit: Int?, key: String) throws -> DataSet {
            let full: DataSet
            do { full = try DataSet.load(kind, split: split, directory: configuration.data.directory) } catch DataSetError.missingFile(let path, let name, let hint) {
                // A configuration names the directory with data.directory, not the command line's --data-dir.
                throw DataSetError.missingFile(path: path.replacingOccurrences(of: "--data-dir", with: "data.directory"), dataSet: name,
                                               hint: hint.replacingOccurrences(of: "pass --data-dir with", with: "set data.directory to")
                                                   .replacingOccurrences(of: "Pass --data-dir with", with: "Set data.directory to")
                                                   .replacingOccurrences(of: "pass --data-dir\nwith", with: "set data.directory to"))
            }
            if let limit, limit > full.count {
                throw ConfigurationError.badValue(path: key, expected: "at most \(full.count) (the \(split) images of \(kind.rawValue))", found: "\(limit)")
            }
            return full.prefix(limit)
        }
        trainSet = try load(.train, limit: configuration.data.trainLimit, key: "data.train_limit")
        testSet = try load(.test, limit: configuration.data.testLimit, key: "data.test_limit")
        switch configuration.sampler {
        case .shuffled: sampler = ShuffledSampler(count: trainSet.count, batchSize: configuration.batchSize, seed: configuration.seed)
        case .mPerClass: sampler = MPerClassSampler(labels: trainSet.labels, batchSize: configuration.batchSize, seed: configuration.seed)
        }
        stepsPerEpoch = sampler.batches(epoch: 0).count
        seed = configuration.seed
    }

    /// Loads both splits like ``init(configuration:)``, then reports what it loaded and how long it took.
    public static func loading(configuration: CohortConfiguration, report: (String) -> Void) throws -> CohortData {
        let kind = configuration.data.dataSet
        let started = Date()
        let data = try CohortData(configuration: configuration)
        report(String(format: "loaded %@: %@ training and %@ test images, %d steps per epoch (%.1f s)", kind.rawValue,
                      PhaseProgress.count(data.trainSet.count), PhaseProgress.count(data.testSet.count), data.stepsPerEpoch,
                      Date().timeIntervalSince(started)))
        return data
    }

    /// The augmented training batches of `epoch`, prepared in the background.
    public func loader(epoch: Int, startStep: Int = 0) -> BatchLoader {
        BatchLoader(assembler: BatchAssembler(dataSet: trainSet, augment: true, seed: seed), batches: sampler.batches(epoch: epoch),
                    epoch: epoch, startStep: startStep)
    }
}
