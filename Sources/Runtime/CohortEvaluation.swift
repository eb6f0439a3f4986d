import Tensors
import NN
import Data
import Training

/// Accuracy of each peer and of the ensemble (the mean of the peers' logits).
public struct CohortEvaluation: Sendable {
    public let peers: [EvaluationResult]
    public let ensembleTop1: Double
    public let ensembleTop5: Double

    public init(peers: [EvaluationResult], ensembleTop1: Double, ensembleTop5: Double) {
        self.peers = peers; self.ensembleTop1 = ensembleTop1; self.ensembleTop5 = ensembleTop5
    }
}

/// `model`'s logits for every sample of `dataSet`, in order ([count, classes], row-major), computed in
/// evaluation mode without gradients, `batchSize` samples at a time. `progress` is told the images done
/// after each batch.
public func testLogits(_ model: any Classifier, on dataSet: DataSet, batchSize: Int, progress: PhaseProgress? = nil) -> [Float] {
    let wasTraining = model.isTraining
    model.eval()
    defer { model.train(wasTraining) }
    let batches = ShuffledSampler(count: dataSet.count, batchSize: batchSize, seed: 0, shuffle: false).batches(epoch: 0)
    let loader = BatchLoader(assembler: BatchAssembler(dataSet: dataSet, augment: false, seed: 0), batches: batches, epoch: 0)
    var result: [Float] = []
    result.reserveCapacity(dataSet.count * model.classCount)
    while let batch = loader.next() {
        withNoGrad { result += model(batch.imageTensor()).scalars }
        progress?.update(done: result.count / model.classCount)
    }
    return result
}

/// Top-1, top-5 and mean cross-entropy of `logits` ([labels.count, classCount]) against `labels`.
public func score(logits: [Float], labels: [Int], classCount: Int) -> EvaluationResult {
    guard !labels.isEmpty else { return EvaluationResult(top1: 0, top5: 0, loss: 0, count: 0) }
    precondition(logits.count == labels.count * classCount, "\(logits.count) logits for \(labels.count) labels of \(classCount) classes")
    let tensor = Tensor(logits, shape: [labels.count, classCount])
    let counts = topKCorrect(logits: tensor, labels: labels)
    let loss = withNoGrad { Double(tensor.crossEntropy(labels: labels).item) }
    let n = Double(labels.count)
    return EvaluationResult(top1: Double(counts.top1) / n, top5: Double(counts.top5) / n, loss: loss, count: labels.count)
}

/// Scores every peer's test logits and their ensemble (the sum of the logits, in rank order).
public func evaluateCohort(logits: [[Float]], labels: [Int], classCount: Int) -> CohortEvaluation {
    var sum = [Float](repeating: 0, count: labels.count * classCount)
    for l in logits {
        precondition(l.count == sum.count, "every peer's logits cover the same samples")
        for i in sum.indices { sum[i] += l[i] }
    }
    let ensemble = score(logits: sum, labels: labels, classCount: classCount)
    return CohortEvaluation(peers: logits.map { score(logits: $0, labels: labels, classCount: classCount) },
                            ensembleTop1: ensemble.top1, ensembleTop5: ensemble.top5)
}

/// Evaluates the models on `dataSet` (evaluation mode, no gradients) and their ensemble; `progress` counts
/// the images of every model (`models.count` times the set's size in all).
public func evaluateCohort(_ models: [any Classifier], on dataSet: DataSet, batchSize: Int, progress: PhaseProgress? = nil) -> CohortEvaluation {
    var logits: [[Float]] = []
    for model in models {
        progress?.offset = logits.count * dataSet.count
        logits.append(testLogits(model, on: dataSet, batchSize: batchSize, progress: progress))
    }
    return evaluateCohort(logits: logits, labels: dataSet.labels, classCount: dataSet.kind.classCount)
}
