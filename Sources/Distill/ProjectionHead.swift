import Tensors
import NN

/// MCL's projection head: `Linear(inputCount, dimension) -> ReLU -> Linear(dimension, dimension)`, then
/// each row divided by its L2 norm. State-dict keys `proj_head.0.*`, `proj_head.2.*`, as winycg/MCL's
/// `Embed`.
public final class ProjectionHead: Module, Layer {
    public let first: Linear
    public let second: Linear

    public init(inputCount: Int, dimension: Int = 128, generator: inout SeededGenerator) {
        first = Linear(inputCount: inputCount, outputCount: dimension, generator: &generator)
        second = Linear(inputCount: dimension, outputCount: dimension, generator: &generator)
        super.init()
    }

    public override var children: [(String, Module)] {
        [("proj_head", ProjectionHeadLayers(first: first, second: second))]
    }

    /// Unit embeddings of `features` (`B x inputCount` -> `B x dimension`).
    public func callAsFunction(_ features: Tensor) -> Tensor {
        second(first(features).relu()).normalizedRows()
    }
}

/// The `proj_head` Sequential's key layout: `0` is the first linear, `1` the ReLU, `2` the second linear.
final class ProjectionHeadLayers: Module {
    let first: Linear, second: Linear
    init(first: Linear, second: Linear) { self.first = first; self.second = second; super.init() }
    override var children: [(String, Module)] { [("0", first), ("2", second)] }
}
