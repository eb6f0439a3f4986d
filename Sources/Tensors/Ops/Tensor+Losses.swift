#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Linear maps and the classification losses.
extension Tensor {
    /// `x W^T + b` for `x` (`B x in`), `weight` (`out x in`) and `bias` (`out`), as `torch.nn.functional.linear`.
    public func linear(weight: Tensor, bias: Tensor?) -> Tensor {
        let y = matmul(weight, transposeOther: true)
        guard let bias else { return y }
        return y + bias
    }

    /// The mean cross-entropy of `self` (logits, `B x C`) against integer `labels`, as
    /// `torch.nn.functional.cross_entropy(logits, labels)`.
    public func crossEntropy(labels: [Int]) -> Tensor {
        precondition(rank == 2 && shape[0] == labels.count,
                     "crossEntropy: logits \(shape) for \(labels.count) labels")
        let rows = shape[0], cols = shape[1]
        let probabilities = Tensor(uninitializedShape: shape)
        var total: Double = 0
        for r in 0..<rows {
            let label = labels[r]
            precondition(label >= 0 && label < cols, "crossEntropy: label \(label) out of range 0..<\(cols)")
            let x = data + r * cols, p = probabilities.data + r * cols
            let m = Vector.max(x, count: cols)
            var s: Float = 0
            for j in 0..<cols { let e = expf(x[j] - m); p[j] = e; s += e }
            let inv = 1 / s
            for j in 0..<cols { p[j] *= inv }
            total += Double(m + logf(s) - x[label])
        }
        let out = Tensor(scalar: Float(total / Double(Swift.max(rows, 1))))
        return out.recorded("crossEntropy", [self]) { g in
            // d/dx = (softmax - onehot) * g / B
            let scale = g.item / Float(rows)
            let dx = probabilities.scaled(by: scale, shift: 0)
            for r in 0..<rows { dx.data[r * cols + labels[r]] -= scale }
            return [dx]
        }
    }

    /// Hinton's distillation loss: `T^2 / B * sum p (log p - log q)` with `p = softmax(target / T)` (no
    /// gradient) and `q = softmax(self / T)`: `KLDivLoss(reduction: batchmean) * T^2`.
    public func klDivergence(target: Tensor, temperature: Float) -> Tensor {
        precondition(shape == target.shape && rank == 2, "klDivergence: \(shape) vs \(target.shape)")
        let logP = withNoGrad { (target.detached() * (1 / temperature)).logSoftmax() }
        let p = logP.exp()
        let logQ = (self * (1 / temperature)).logSoftmax()
        let perElement = p * (logP - logQ)
        return perElement.sum() * (temperature * temperature / Float(shape[0]))
    }
}
