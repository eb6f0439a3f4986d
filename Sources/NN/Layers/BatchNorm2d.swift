import Tensors

/// Batch normalisation over channels, as `torch.nn.BatchNorm2d` (affine, tracking running statistics).
public final class BatchNorm2d: Module, Layer {
    public let weight: Tensor
    public let bias: Tensor
    public let runningMean: Tensor
    public let runningVar: Tensor
    /// Training steps seen (PyTorch's `num_batches_tracked`, an integer buffer).
    public let numBatchesTracked = Counter()
    public let epsilon: Float
    public let momentum: Float

    /// Weight 1, bias 0, running mean 0, running variance 1.
    public init(featureCount: Int, epsilon: Float = 1e-5, momentum: Float = 0.1) {
        weight = Tensor(repeating: 1, shape: [featureCount], requiresGrad: true)
        bias = Tensor.zeros([featureCount], requiresGrad: true)
        runningMean = Tensor.zeros([featureCount])
        runningVar = Tensor(repeating: 1, shape: [featureCount])
        self.epsilon = epsilon
        self.momentum = momentum
        super.init()
    }

    public override var ownParameters: [(String, Tensor)] { [("weight", weight), ("bias", bias)] }
    public override var ownBuffers: [(String, Tensor)] { [("running_mean", runningMean), ("running_var", runningVar)] }
    public override var ownCounters: [(String, Counter)] { [("num_batches_tracked", numBatchesTracked)] }

    public func callAsFunction(_ input: Tensor) -> Tensor {
        if isTraining { numBatchesTracked.value += 1 }
        return input.batchNorm(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVar,
                               training: isTraining, momentum: momentum, epsilon: epsilon)
    }

    /// `relu(self(input))`, fused into one pass.
    public func withReLU(_ input: Tensor) -> Tensor {
        if isTraining { numBatchesTracked.value += 1 }
        return input.batchNormReLU(weight: weight, bias: bias, runningMean: runningMean, runningVariance: runningVar,
                                   training: isTraining, momentum: momentum, epsilon: epsilon)
    }

    /// `conv(relu(self(input)))` without keeping the normalised tensor for the backward pass: it is
    /// normalised again there (``Tensor/batchNormReLUConv2d(normWeight:normBias:runningMean:runningVariance:training:momentum:epsilon:convWeight:convBias:stride:padding:)``).
    /// The same values, gradients and running statistics as `conv(withReLU(input))`, one activation fewer
    /// kept per call.
    public func withReLU(_ input: Tensor, into conv: Conv2d) -> Tensor {
        if isTraining { numBatchesTracked.value += 1 }
        return input.batchNormReLUConv2d(normWeight: weight, normBias: bias, runningMean: runningMean,
                                         runningVariance: runningVar, training: isTraining, momentum: momentum,
                                         epsilon: epsilon, convWeight: conv.weight, convBias: conv.bias,
                                         stride: (conv.stride, conv.stride), padding: (conv.padding, conv.padding))
    }

    /// `relu(self(input) + residual)`, the join of a residual block, fused into one op: the normalised
    /// values are never stored.
    public func withResidualReLU(_ input: Tensor, residual: Tensor) -> Tensor {
        if isTraining { numBatchesTracked.value += 1 }
        return input.batchNormAddingReLU(residual, weight: weight, bias: bias, runningMean: runningMean,
                                         runningVariance: runningVar, training: isTraining, momentum: momentum,
                                         epsilon: epsilon)
    }
}
