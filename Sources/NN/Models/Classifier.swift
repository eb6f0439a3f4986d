import Tensors

/// An image classifier that exposes its pooled penultimate feature as well as its logits.
public protocol Classifier: Module {
    /// The length of the pooled penultimate feature.
    var featureCount: Int { get }
    /// The number of classes (logits per sample).
    var classCount: Int { get }
    /// The final linear layer (`fc`), whose weights define CRCD's gradient element.
    var classifier: Linear { get }
    /// Runs the network on `N x C x H x W` images.
    /// - Returns: the pooled feature (`N x featureCount`) and the logits (`N x classCount`).
    func forward(_ images: Tensor) -> (feature: Tensor, logits: Tensor)
    /// Runs the network and also returns the outputs of its first two stages, which the auxiliary
    /// branches of layer-wise MCL take.
    func forwardWithStages(_ images: Tensor) -> (stages: [Tensor], feature: Tensor, logits: Tensor)
    /// New auxiliary branches for this network's widths and depth (``AuxiliaryBranches``).
    func makeAuxiliaryBranches(generator: inout SeededGenerator) -> AuxiliaryBranches
}

extension Classifier {
    /// The logits only.
    public func callAsFunction(_ images: Tensor) -> Tensor { forward(images).logits }
}
