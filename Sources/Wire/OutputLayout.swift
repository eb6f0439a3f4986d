/// The tensors of a peer's `outputs` message, and how an `others` message names another peer's: one type
/// both sides derive from the configuration, instead of names built and parsed as strings.
public struct OutputLayout: Sendable, Equatable {
    /// One tensor of a peer's outputs.
    public enum Tensor: Sendable, Hashable {
        /// Layer-wise MCL: the embedding of auxiliary branch `branch` (1 after stage 1, 2 after stage 2).
        case auxiliaryEmbedding(branch: Int)
        /// MCL: the final embedding.
        case embedding
        case logits

        /// The name on the wire: `embedding.aux1`, `embedding`, `logits`.
        public var name: String {
            switch self {
            case .auxiliaryEmbedding(let branch): "embedding.aux\(branch)"
            case .embedding: "embedding"
            case .logits: "logits"
            }
        }
    }

    /// The tensors, in the order a peer sends them: the branches' embeddings, the embedding, the logits.
    public let tensors: [Tensor]
    public let embeddingDimension: Int
    public let classCount: Int

    /// - Parameters:
    ///   - auxiliaryBranches: branches whose embeddings are exchanged (layer-wise MCL: 2; else 0).
    ///   - embeddings: whether the final embedding is exchanged (MCL with two or more peers).
    public init(auxiliaryBranches: Int, embeddings: Bool, embeddingDimension: Int, classCount: Int) {
        tensors = (0..<auxiliaryBranches).map { .auxiliaryEmbedding(branch: $0 + 1) } + (embeddings ? [.embedding] : []) + [.logits]
        self.embeddingDimension = embeddingDimension
        self.classCount = classCount
    }

    /// `tensor`'s shape for a batch of `b`.
    public func shape(of tensor: Tensor, batchSize b: Int) -> [Int] {
        switch tensor {
        case .auxiliaryEmbedding, .embedding: [b, embeddingDimension]
        case .logits: [b, classCount]
        }
    }

    /// The names and shapes of a peer's `outputs` for a batch of `b`, in order.
    public func expected(batchSize b: Int) -> [(name: String, shape: [Int])] {
        tensors.map { ($0.name, shape(of: $0, batchSize: b)) }
    }

    /// How `others` names peer `rank`'s `tensor`: `rank<r>.<name>`.
    public static func othersName(rank: Int, _ tensor: Tensor) -> String { "rank\(rank).\(tensor.name)" }

    /// The names and shapes of an `others` message carrying the outputs of `ranks`.
    public func expectedOthers(ranks: [Int], batchSize b: Int) -> [(name: String, shape: [Int])] {
        ranks.flatMap { r in tensors.map { (Self.othersName(rank: r, $0), shape(of: $0, batchSize: b)) } }
    }

    /// Peer `rank`'s outputs (as it sent them, in this layout's order) renamed for an `others` message.
    public func forOthers(rank: Int, _ outputs: [TensorPayload]) -> [TensorPayload] {
        precondition(outputs.count == tensors.count, "\(outputs.count) tensors for a layout of \(tensors.count)")
        return zip(tensors, outputs).map { TensorPayload(name: Self.othersName(rank: rank, $0), shape: $1.shape, values: $1.values) }
    }

    /// The values of peer `rank`'s `tensor` in an `others` message whose tensors are `byName`.
    public static func values(of tensor: Tensor, rank: Int, in byName: [String: TensorPayload]) -> [Float]? {
        byName[othersName(rank: rank, tensor)]?.values
    }
}
