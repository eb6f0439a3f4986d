/// Embedding collapse: the unit embeddings of a batch all pointing the same way. MCL's contrastive terms
/// then see equal similarities everywhere — VCL sits at `log(B - 1)`, the soft terms agree trivially — and
/// stop teaching anything (docs/results.md, "Embedding collapse").
public enum EmbeddingCollapse {
    /// The mean cosine between the distinct rows of `B x d` unit embeddings (row-major): the mean of the
    /// off-diagonal entries of their Gram matrix, `(|sum_a e_a|^2 - sum_a |e_a|^2) / (B (B - 1))`. 1 when
    /// every row is the same direction; about 0 for rows spread at random; at least `-1/(B-1)`.
    /// - Precondition: `values.count == rows * dimension`, `rows >= 2`.
    public static func meanPairwiseCosine(_ values: [Float], rows: Int, dimension: Int) -> Double {
        precondition(rows >= 2 && values.count == rows * dimension, "need at least two rows of \(dimension)")
        var sum = [Double](repeating: 0, count: dimension)
        var squares = 0.0
        for a in 0..<rows {
            for k in 0..<dimension {
                let x = Double(values[a * dimension + k])
                sum[k] += x
                squares += x * x
            }
        }
        let total = sum.reduce(0) { $0 + $1 * $1 }
        return (total - squares) / Double(rows * (rows - 1))
    }

    /// Watches one embedding's mean cosine step by step and raises a warning once, when it has stayed
    /// above ``threshold`` for ``patience`` steps in a row.
    public struct Watch: Sendable, Equatable {
        /// Mean cosine above which a batch's embeddings count as collapsed.
        public static let threshold = 0.99
        /// Collapsed steps in a row before the warning.
        public static let patience = 50

        /// What is watched, for the message ("the embedding", "auxiliary branch 1's embedding").
        public let name: String
        public private(set) var collapsedSteps = 0
        public private(set) var warned = false

        public init(name: String) { self.name = name }

        /// Takes in a step's mean cosine; returns the warning the first time the collapse has lasted
        /// ``patience`` steps, `nil` otherwise.
        public mutating func observe(_ meanCosine: Double) -> String? {
            collapsedSteps = meanCosine > Self.threshold ? collapsedSteps + 1 : 0
            guard !warned, collapsedSteps >= Self.patience else { return nil }
            warned = true
            return "\(name) has collapsed: the mean cosine between a batch's embeddings has been above \(Self.threshold) for "
                + "\(Self.patience) steps (now \(String(format: "%.4f", meanCosine))), so MCL's contrastive terms are not learning. "
                + "Lower mcl.weights.soft_vcl and soft_icl, or ramp them in with mcl.soft_ramp_epochs (docs/configuration.md)"
        }
    }
}
