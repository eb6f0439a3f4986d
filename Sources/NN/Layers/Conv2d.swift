import Tensors

/// A 2-D convolution layer, as `torch.nn.Conv2d` (square kernel, stride and padding).
public final class Conv2d: Module, Layer {
    /// `outputChannels x inputChannels x kernelSize x kernelSize`.
    public let weight: Tensor
    /// `outputChannels`, or `nil` for a convolution without bias.
    public let bias: Tensor?
    public let stride: Int
    public let padding: Int

    /// Creates the layer with PyTorch's default initialisation (uniform in `±1/sqrt(fan_in)` for weight
    /// and bias), drawn from `generator`.
    public init(inputChannels: Int, outputChannels: Int, kernelSize: Int, stride: Int = 1, padding: Int = 0,
                bias: Bool = true, generator: inout SeededGenerator) {
        let fanIn = inputChannels * kernelSize * kernelSize
        let bound = 1 / Float(fanIn).squareRoot()
        weight = Tensor.randomUniform([outputChannels, inputChannels, kernelSize, kernelSize], low: -bound, high: bound,
                                      using: &generator, requiresGrad: true)
        self.bias = bias ? Tensor.randomUniform([outputChannels], low: -bound, high: bound, using: &generator,
                                                requiresGrad: true) : nil
        self.stride = stride
        self.padding = padding
        super.init()
    }

    public override var ownParameters: [(String, Tensor)] {
        var p = [("weight", weight)]
        if let bias { p.append(("bias", bias)) }
        return p
    }

    public var outputChannels: Int { weight.shape[0] }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        input.conv2d(weight: weight, bias: bias, stride: (stride, stride), padding: (padding, padding))
    }

    /// Re-initialises the weight as `torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu")`:
    /// normal with standard deviation `sqrt(2 / (outputChannels * kh * kw))`.
    public func kaimingNormalFanOut(generator: inout SeededGenerator) {
        let fanOut = weight.shape[0] * weight.shape[2] * weight.shape[3]
        weight.assign(Tensor.randomNormal(weight.shape, std: (2 / Float(fanOut)).squareRoot(), using: &generator))
    }
}
