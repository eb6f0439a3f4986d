import Tensors

/// The pre-activation block of HobbitLong/RepDistiller `models/wrn.py`: BN-ReLU-conv twice, with a 1x1
/// convolution shortcut (`convShortcut`) from the pre-activated input when the width changes.
public final class WideBasicBlock: Module, Layer {
    public let bn1: BatchNorm2d
    public let conv1: Conv2d
    public let bn2: BatchNorm2d
    public let conv2: Conv2d
    public let convShortcut: Conv2d?

    public init(inputChannels: Int, outputChannels: Int, stride: Int, generator: inout SeededGenerator) {
        bn1 = BatchNorm2d(featureCount: inputChannels)
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 3, stride: stride,
                       padding: 1, bias: false, generator: &generator)
        bn2 = BatchNorm2d(featureCount: outputChannels)
        conv2 = Conv2d(inputChannels: outputChannels, outputChannels: outputChannels, kernelSize: 3, stride: 1,
                       padding: 1, bias: false, generator: &generator)
        convShortcut = inputChannels == outputChannels ? nil
            : Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 1, stride: stride,
                     padding: 0, bias: false, generator: &generator)
        super.init()
    }

    public override var children: [(String, Module)] {
        var c: [(String, Module)] = [("bn1", bn1), ("conv1", conv1), ("bn2", bn2), ("conv2", conv2)]
        if let convShortcut { c.append(("convShortcut", convShortcut)) }
        return c
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let activated = bn1.withReLU(x)
        let out = bn2.withReLU(conv1(activated), into: conv2)
        // As the reference: with equal widths the shortcut is the raw input, otherwise the 1x1
        // convolution of the pre-activated input.
        let shortcut = convShortcut.map { $0(activated) } ?? x
        return shortcut + out
    }
}

/// The Wide ResNet of HobbitLong/RepDistiller `models/wrn.py` (depth 6n+4, widen factor k), with global
/// average pooling and any number of input channels.
///
/// State-dict keys: `conv1`, `block1.layer.0.bn1`, ..., `bn1`, `fc`.
public final class WideResNet: Module, Classifier {
    /// `torch.nn.Module` wrapper `NetworkBlock` whose only child is `layer`.
    public final class NetworkBlock: Module, Layer {
        public let layer: Sequential
        init(_ layer: Sequential) { self.layer = layer; super.init() }
        public override var children: [(String, Module)] { [("layer", layer)] }
        public func callAsFunction(_ input: Tensor) -> Tensor { layer(input) }
    }

    public let conv1: Conv2d
    public let block1: NetworkBlock
    public let block2: NetworkBlock
    public let block3: NetworkBlock
    public let bn1: BatchNorm2d
    public let fc: Linear
    public let featureCount: Int
    public let classCount: Int
    public var classifier: Linear { fc }
    /// The stem and stage widths (16, 16k, 32k, 64k).
    public let widths: [Int]
    /// Blocks per stage, `(depth - 4) / 6`.
    public let blocksPerStage: Int

    /// - Parameters:
    ///   - depth: 6n+4 (16, 40).
    ///   - widenFactor: k; stage widths are 16k, 32k, 64k.
    ///   - generator: the source of the initial weights (normal with std `sqrt(2 / (kh kw out))` for
    ///     convolutions, PyTorch's default weight and a zero bias for the classifier).
    public init(depth: Int, widenFactor: Int, inputChannels: Int = 3, classCount: Int = 10,
                generator: inout SeededGenerator) {
        precondition((depth - 4) % 6 == 0 && depth >= 10, "WideResNet depth must be 6n+4, got \(depth)")
        let n = (depth - 4) / 6
        let widths = [16, 16 * widenFactor, 32 * widenFactor, 64 * widenFactor]
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: widths[0], kernelSize: 3, padding: 1, bias: false,
                       generator: &generator)
        var blocks: [NetworkBlock] = []
        for stage in 0..<3 {
            blocks.append(WideResNet.networkBlock(inputChannels: widths[stage], width: widths[stage + 1], blocks: n,
                                                  stride: stage > 0 ? 2 : 1, generator: &generator))
        }
        block1 = blocks[0]; block2 = blocks[1]; block3 = blocks[2]
        bn1 = BatchNorm2d(featureCount: widths[3])
        fc = Linear(inputCount: widths[3], outputCount: classCount, generator: &generator)
        featureCount = widths[3]
        self.classCount = classCount
        self.widths = widths
        blocksPerStage = n
        super.init()
        for (_, conv) in allConvolutions() { conv.kaimingNormalFanOut(generator: &generator) }
        fc.bias?.assign(Tensor.zeros([classCount]))
    }

    public override var children: [(String, Module)] {
        [("conv1", conv1), ("block1", block1), ("block2", block2), ("block3", block3), ("bn1", bn1), ("fc", fc)]
    }

    public func forward(_ images: Tensor) -> (feature: Tensor, logits: Tensor) {
        let x = block3(block2(block1(conv1(images))))
        let feature = bn1.withReLU(x).globalAveragePool()
        return (feature, fc(feature))
    }

    public func forwardWithStages(_ images: Tensor) -> (stages: [Tensor], feature: Tensor, logits: Tensor) {
        let f1 = block1(conv1(images))
        let f2 = block2(f1)
        let feature = bn1.withReLU(block3(f2)).globalAveragePool()
        return ([f1, f2], feature, fc(feature))
    }

    /// L-MCL's branches for this Wide ResNet: `block_extractor1` = blocks 2 and 3 again (from block 1's
    /// output), `block_extractor2` = block 3 again, each followed by its own batch norm and ReLU (`bn1`,
    /// `bn2`) before pooling, as the backbone.
    public func makeAuxiliaryBranches(generator: inout SeededGenerator) -> AuxiliaryBranches {
        AuxiliaryBranches.repeatingStages(widths: widths, norms: true, featureCount: featureCount, classCount: classCount,
                                          generator: &generator) { input, width, generator in
            WideResNet.networkBlock(inputChannels: input, width: width, blocks: blocksPerStage, stride: 2, generator: &generator)
        }
    }

    /// One `NetworkBlock`: `blocks` wide blocks of `width` channels, the first with `stride`.
    static func networkBlock(inputChannels: Int, width: Int, blocks: Int, stride: Int, generator: inout SeededGenerator) -> NetworkBlock {
        NetworkBlock(Sequential((0..<blocks).map { b in
            WideBasicBlock(inputChannels: b == 0 ? inputChannels : width, outputChannels: width, stride: b == 0 ? stride : 1,
                           generator: &generator)
        }))
    }
}
