import Tensors

/// A fully connected layer, `x W^T + b`, as `torch.nn.Linear`.
public final class Linear: Module, Layer {
    /// `outputCount x inputCount`.
    public let weight: Tensor
    /// `outputCount`, or `nil`.
    public let bias: Tensor?

    /// PyTorch's default initialisation: weight and bias uniform in `±1/sqrt(inputCount)`.
    public init(inputCount: Int, outputCount: Int, bias: Bool = true, generator: inout SeededGenerator) {
        let bound = 1 / Float(inputCount).squareRoot()
        weight = Tensor.randomUniform([outputCount, inputCount], low: -bound, high: bound, using: &generator,
                                      requiresGrad: true)
        self.bias = bias ? Tensor.randomUniform([outputCount], low: -bound, high: bound, using: &generator,
                                                requiresGrad: true) : nil
        super.init()
    }

    public override var ownParameters: [(String, Tensor)] {
        var p = [("weight", weight)]
        if let bias { p.append(("bias", bias)) }
        return p
    }

    public func callAsFunction(_ input: Tensor) -> Tensor { input.linear(weight: weight, bias: bias) }
}
