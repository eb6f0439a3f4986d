import Tensors
import NN
import Data

/// Accuracy of a classifier on a data set.
public struct EvaluationResult: Sendable, Codable, Equatable {
    public let top1: Double
    public let top5: Double
    public let loss: Double
    public let count: Int

    public init(top1: Double, top5: Double, loss: Double, count: Int) {
        self.top1 = top1; self.top5 = top5; self.loss = loss; self.count = count
    }
}

/// Counts, for one batch of logits, how many labels are the top-1 and among the top-5 predictions.
/// Ties are broken towards the lower class index.
public func topKCorrect(logits: Tensor, labels: [Int]) -> (top1: Int, top5: Int) {
    TrainingKernels.topKCorrect(logits: logits, labels: labels)
}

/// Evaluates `model` in evaluation mode (running statistics, no gradients) on `dataSet`, unaugmented, and
/// restores the module's previous mode. `progress` is told the images done after each batch.
public func evaluate(_ model: any Classifier, on dataSet: DataSet, batchSize: Int = 500,
                     progress: PhaseProgress? = nil) -> EvaluationResult {
    let wasTraining = model.isTraining
    model.eval()
    defer { model.train(wasTraining) }
    let assembler = BatchAssembler(dataSet: dataSet, augment: false, seed: 0)
    let batches = ShuffledSampler(count: dataSet.count, batchSize: batchSize, seed: 0, shuffle: false).batches(epoch: 0)
    let loader = BatchLoader(assembler: assembler, batches: batches, epoch: 0)
    var top1 = 0, top5 = 0
    var loss = 0.0
    var done = 0
    while let batch = loader.next() {
        withNoGrad {
            let logits = model(batch.imageTensor())
            let counts = topKCorrect(logits: logits, labels: batch.labels)
            top1 += counts.top1
            top5 += counts.top5
            loss += Double(logits.crossEntropy(labels: batch.labels).item) * Double(batch.size)
        }
        done += batch.size
        progress?.update(done: done)
    }
    let n = Double(Swift.max(dataSet.count, 1))
    return EvaluationResult(top1: Double(top1) / n, top5: Double(top5) / n, loss: loss / n, count: dataSet.count)
}
