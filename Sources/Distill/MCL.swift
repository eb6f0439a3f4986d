import Tensors

/// Mutual Contrastive Learning (winycg/MCL, the supervised CIFAR version) over the unit embeddings of a
/// cohort's networks. See `../shared/docs/methods.md`.
///
/// For a `B x B` similarity matrix `L`, with `pos[a,b] = 1` when `y_a = y_b` and `a != b`:
///
///     logp[a,b] = L[a,b] - log sum_{c != a} exp(L[a,c])
///     term(L)   = - mean_a ( sum_b pos[a,b] logp[a,b] / sum_b pos[a,b] )
///
/// VCL contrasts a network's embeddings with its own, ICL with another network's; the soft forms match
/// the networks' similarity distributions with a temperature-scaled KL divergence.
public enum MCL {
    /// Weights and temperatures; the defaults are the paper's CIFAR settings.
    public struct Settings: Sendable, Equatable, Codable {
        public var tau: Float = 0.07
        public var temperature: Float = 3
        public var vcl: Float = 0.1
        public var softVCL: Float = 1.0
        public var icl: Float = 0.1
        public var softICL: Float = 1.0
        /// Weight of the logit distillation towards the ensemble mean (0: off).
        public var logitDistillation: Float = 1.0
        public init() {}
    }

    /// The four losses of one computation.
    public struct Terms {
        public let vcl: Tensor
        public let softVCL: Tensor
        public let icl: Tensor
        public let softICL: Tensor

        /// `vcl * w.vcl + softVCL * w.softVCL + icl * w.icl + softICL * w.softICL`.
        public func weighted(_ s: Settings) -> Tensor {
            vcl * s.vcl + softVCL * s.softVCL + icl * s.icl + softICL * s.softICL
        }
    }

    /// The normalised positive weights `pos[a,b] / sum_b pos[a,b]` (rows without a positive are zero;
    /// the m-per-class sampler guarantees there are none).
    public static func positiveWeights(labels: [Int]) -> Tensor {
        let n = labels.count
        var w = [Float](repeating: 0, count: n * n)
        for a in 0..<n {
            let positives = (0..<n).filter { $0 != a && labels[$0] == labels[a] }
            for b in positives { w[a * n + b] = 1 / Float(positives.count) }
        }
        return Tensor(w, shape: [n, n])
    }

    /// A matrix with a large negative on the diagonal: added to logits, it removes `c = a` from the
    /// log-sum-exp exactly (its exponential underflows to 0) while keeping every entry finite.
    static func diagonalExclusion(_ n: Int) -> Tensor {
        var m = [Float](repeating: 0, count: n * n)
        for a in 0..<n { m[a * n + a] = -1e30 }
        return Tensor(m, shape: [n, n])
    }

    /// `term(L)` for similarity logits `L` (`B x B`) and positive weights from ``positiveWeights(labels:)``.
    public static func contrastiveTerm(_ logits: Tensor, positiveWeights: Tensor) -> Tensor {
        let n = logits.shape[0]
        let logProbability = (logits + diagonalExclusion(n)).logSoftmax()
        return (logProbability * positiveWeights).sum() * (-1 / Float(n))
    }

    /// `e_a e_b^T / tau`.
    static func similarity(_ a: Tensor, _ b: Tensor, tau: Float) -> Tensor {
        a.matmul(b, transposeOther: true) * (1 / tau)
    }

    /// The four losses of the whole cohort in one graph, each pair counted as the reference does
    /// (VCL over networks; soft VCL over ordered pairs; ICL and soft ICL over unordered pairs, both
    /// directions). Used to check the per-peer form and for a joint figure in the logs.
    public static func jointTerms(embeddings: [Tensor], labels: [Int], settings: Settings = Settings()) -> Terms {
        let weights = positiveWeights(labels: labels)
        let n = embeddings.count
        let intra = embeddings.map { similarity($0, $0, tau: settings.tau) }
        var vcl = Tensor(scalar: 0), softVCL = Tensor(scalar: 0), icl = Tensor(scalar: 0), softICL = Tensor(scalar: 0)
        for i in 0..<n { vcl = vcl + contrastiveTerm(intra[i], positiveWeights: weights) }
        for i in 0..<n { for j in 0..<n where i != j {
            softVCL = softVCL + intra[i].klDivergence(target: intra[j], temperature: settings.temperature)
        } }
        for i in 0..<n { for j in (i + 1)..<n {
            let ij = similarity(embeddings[i], embeddings[j], tau: settings.tau)
            let ji = similarity(embeddings[j], embeddings[i], tau: settings.tau)
            icl = icl + contrastiveTerm(ij, positiveWeights: weights) + contrastiveTerm(ji, positiveWeights: weights)
            softICL = softICL + ij.klDivergence(target: ji, temperature: settings.temperature)
                + ji.klDivergence(target: ij, temperature: settings.temperature)
        } }
        return Terms(vcl: vcl, softVCL: softVCL, icl: icl, softICL: softICL)
    }

    /// The losses of one peer given the other members' embeddings as constants: every term of the
    /// joint loss that involves this peer's embedding, so that its gradient equals the joint loss's
    /// gradient with respect to this peer's parameters (methods.md, "Distributed form").
    ///
    /// - Parameters:
    ///   - own: this peer's unit embeddings (`B x d`), in the graph.
    ///   - others: the other members' unit embeddings for the same batch (treated as constants).
    public static func peerTerms(own: Tensor, others: [Tensor], labels: [Int], settings: Settings = Settings()) -> Terms {
        let weights = positiveWeights(labels: labels)
        let intra = similarity(own, own, tau: settings.tau)
        let vcl = contrastiveTerm(intra, positiveWeights: weights)
        var softVCL = Tensor(scalar: 0), icl = Tensor(scalar: 0), softICL = Tensor(scalar: 0)
        for other in others {
            let e = other.detached()
            softVCL = softVCL + intra.klDivergence(target: similarity(e, e, tau: settings.tau), temperature: settings.temperature)
            let ij = similarity(own, e, tau: settings.tau), ji = similarity(e, own, tau: settings.tau)
            icl = icl + contrastiveTerm(ij, positiveWeights: weights) + contrastiveTerm(ji, positiveWeights: weights)
            softICL = softICL + ij.klDivergence(target: ji, temperature: settings.temperature)
                + ji.klDivergence(target: ij, temperature: settings.temperature)
        }
        return Terms(vcl: vcl, softVCL: softVCL, icl: icl, softICL: softICL)
    }

    /// Logit distillation towards the ensemble: `KL_T(logits_i, mean_j logits_j)` with the mean (over all
    /// members, this one included) detached, as winycg/MCL's `DistillKL` on the mean of the logits.
    public static func ensembleDistillation(logits: Tensor, ensembleMean: Tensor, temperature: Float = 3) -> Tensor {
        logits.klDivergence(target: ensembleMean.detached(), temperature: temperature)
    }

    /// The mean of the members' logits, outside the graph.
    public static func ensembleMean(_ logits: [Tensor]) -> Tensor {
        withNoGrad {
            var sum = logits[0].detached()
            for l in logits.dropFirst() { sum = sum + l.detached() }
            return sum * (1 / Float(logits.count))
        }
    }
}

/// Hinton's knowledge distillation: `KL_T(student, teacher)` with the teacher detached, batch mean, times
/// T² (T = 4 by default).
public func knowledgeDistillation(student: Tensor, teacher: Tensor, temperature: Float = 4) -> Tensor {
    student.klDivergence(target: teacher.detached(), temperature: temperature)
}
