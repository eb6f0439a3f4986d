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
}

extension Classifier {
    /// The logits only.
    public func callAsFunction(_ images: Tensor) -> Tensor { forward(images).logits }
}
