import Tensors

/// `max(x, 0)`.
public final class ReLU: Module, Layer {
    public override init() { super.init() }
    public func callAsFunction(_ input: Tensor) -> Tensor { input.relu() }
}

/// Layers applied in order; their keys are their positions (`0`, `1`, ...), as `torch.nn.Sequential`.
public final class Sequential: Module, Layer {
    public let layers: [any Layer]

    public init(_ layers: [any Layer]) {
        self.layers = layers
        super.init()
    }

    public override var children: [(String, Module)] {
        layers.enumerated().map { (String($0.offset), $0.element as Module) }
    }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        layers.reduce(input) { $1($0) }
    }
}
