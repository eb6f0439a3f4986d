import Synchronization

/// One convolution's kernels outside the autograd graph: what `Tensor.conv2d` runs, for a given batch,
/// output width and geometry. Benchmarks time layers by shape through it.
public struct ConvolutionKernel: Sendable, Hashable {
    public let batch: Int
    public let outputChannels: Int
    public let geometry: ConvGeometry
    /// Whether the layer's input needs a gradient in training (not for the first layer, on images).
    public let needsInputGradient: Bool

    public init(batch: Int, outputChannels: Int, geometry: ConvGeometry, needsInputGradient: Bool = true) {
        self.batch = batch; self.outputChannels = outputChannels; self.geometry = geometry
        self.needsInputGradient = needsInputGradient
    }

    /// Multiply-adds times two of the forward pass; the backward pass does this once for the weight
    /// gradient and once more for the input gradient.
    public var forwardFlops: Int { 2 * batch * outputChannels * geometry.columnRows * geometry.columnCols }
    public var backwardFlops: Int { forwardFlops * (needsInputGradient ? 2 : 1) }

    public var inputCount: Int { batch * geometry.channels * geometry.height * geometry.width }
    public var weightCount: Int { outputChannels * geometry.columnRows }
    public var outputCount: Int { batch * outputChannels * geometry.columnCols }

    /// `output = conv(input, weight)`.
    public func forward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>) {
        ConvPlan(batch: batch, outputChannels: outputChannels, geometry: geometry)
            .forward(input: input, weight: weight, bias: nil, output: output)
    }

    /// The weight gradient, and the input gradient when ``needsInputGradient``.
    public func backward(input: UnsafePointer<Float>, weight: UnsafePointer<Float>, outputGradient: UnsafePointer<Float>,
                         inputGradient: UnsafeMutablePointer<Float>, weightGradient: UnsafeMutablePointer<Float>) {
        ConvPlan(batch: batch, outputChannels: outputChannels, geometry: geometry)
            .backward(input: input, weight: weight, outputGradient: outputGradient,
                      inputGradient: needsInputGradient ? inputGradient : nil, weightGradient: weightGradient)
    }
}

/// Records the convolutions `Tensor.conv2d` runs while it is the task's ``current`` trace (a model's
/// layer shapes, for benchmarks).
public final class ConvolutionTrace: Sendable {
    @TaskLocal public static var current: ConvolutionTrace?

    private let kernels = Mutex<[ConvolutionKernel]>([])

    public init() {}

    /// Every convolution run so far, in order.
    public var recorded: [ConvolutionKernel] { kernels.withLock { $0 } }

    func record(_ kernel: ConvolutionKernel) { kernels.withLock { $0.append(kernel) } }
}
