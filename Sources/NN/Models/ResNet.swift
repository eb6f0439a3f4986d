import Tensors

/// The basic residual block of the CIFAR ResNets: two 3x3 convolutions with batch norm, and a
/// 1x1 convolution + batch norm shortcut (`downsample`) when the shape changes.
public final class ResNetBasicBlock: Module, Layer {
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let conv2: Conv2d
    public let bn2: BatchNorm2d
    public let downsample: Sequential?

    public init(inputChannels: Int, outputChannels: Int, stride: Int, generator: inout SeededGenerator) {
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 3, stride: stride,
                       padding: 1, bias: false, generator: &generator)
        bn1 = BatchNorm2d(featureCount: outputChannels)
        conv2 = Conv2d(inputChannels: outputChannels, outputChannels: outputChannels, kernelSize: 3, stride: 1,
                       padding: 1, bias: false, generator: &generator)
        bn2 = BatchNorm2d(featureCount: outputChannels)
        if stride != 1 || inputChannels != outputChannels {
            downsample = Sequential([
                Conv2d(inputChannels: inputChannels, outputChannels: outputChannels, kernelSize: 1, stride: stride,
                       padding: 0, bias: false, generator: &generator),
                BatchNorm2d(featureCount: outputChannels),
            ])
        } else {
            downsample = nil
        }
        super.init()
    }

    public override var children: [(String, Module)] {
        var c: [(String, Module)] = [("conv1", conv1), ("bn1", bn1), ("conv2", conv2), ("bn2", bn2)]
        if let downsample { c.append(("downsample", downsample)) }
        return c
    }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        let out = bn1.withReLU(conv1(x), into: conv2)
        let residual = downsample.map { $0(x) } ?? x
        return bn2.withResidualReLU(out, residual: residual)
    }
}

/// The CIFAR ResNet of HobbitLong/RepDistiller `models/resnet.py` (basic blocks; depth 6n+2), with
/// global average pooling so that any input size works, and any number of input channels.
///
/// State-dict keys: `conv1`, `bn1`, `layer1.0.conv1`, ..., `layer3.{n-1}.bn2`, `fc`.
public final class ResNet: Module, Classifier {
    public let conv1: Conv2d
    public let bn1: BatchNorm2d
    public let layer1: Sequential
    public let layer2: Sequential
    public let layer3: Sequential
    public let fc: Linear
    public let featureCount: Int
    public let classCount: Int
    public var classifier: Linear { fc }
    /// The stem and stage widths.
    public let filters: [Int]
    /// Basic blocks per stage, `(depth - 2) / 6`.
    public let blocksPerStage: Int

    /// - Parameters:
    ///   - depth: 6n+2 (8, 14, 20, 32, 44, 56, 110).
    ///   - filters: stem width then the three stage widths, e.g. `[16, 16, 32, 64]`.
    ///   - generator: the source of the initial weights (Kaiming normal, fan-out, for convolutions;
    ///     PyTorch's default for the classifier).
    public init(depth: Int, filters: [Int], inputChannels: Int = 3, classCount: Int = 10,
                generator: inout SeededGenerator) {
        precondition((depth - 2) % 6 == 0 && depth >= 8, "ResNet depth must be 6n+2, got \(depth)")
        precondition(filters.count == 4, "ResNet needs 4 filter counts, got \(filters)")
        let n = (depth - 2) / 6
        conv1 = Conv2d(inputChannels: inputChannels, outputChannels: filters[0], kernelSize: 3, padding: 1,
                       bias: false, generator: &generator)
        bn1 = BatchNorm2d(featureCount: filters[0])
        var inputs = filters[0]
        var stages: [Sequential] = []
        for (stage, width) in filters.dropFirst().enumerated() {
            stages.append(ResNet.stage(inputChannels: inputs, width: width, blocks: n, stride: stage > 0 ? 2 : 1,
                                       generator: &generator))
            inputs = width
        }
        layer1 = stages[0]; layer2 = stages[1]; layer3 = stages[2]
        fc = Linear(inputCount: inputs, outputCount: classCount, generator: &generator)
        featureCount = inputs
        self.classCount = classCount
        self.filters = filters
        blocksPerStage = n
        super.init()
        for (_, module) in allConvolutions() { module.kaimingNormalFanOut(generator: &generator) }
    }

    public override var children: [(String, Module)] {
        [("conv1", conv1), ("bn1", bn1), ("layer1", layer1), ("layer2", layer2), ("layer3", layer3), ("fc", fc)]
    }

    public func forward(_ images: Tensor) -> (feature: Tensor, logits: Tensor) {
        let x = layer3(layer2(layer1(bn1.withReLU(conv1(images)))))
        let feature = x.globalAveragePool()
        return (feature, fc(feature))
    }

    public func forwardWithStages(_ images: Tensor) -> (stages: [Tensor], feature: Tensor, logits: Tensor) {
        let f1 = layer1(bn1.withReLU(conv1(images)))
        let f2 = layer2(f1)
        let feature = layer3(f2).globalAveragePool()
        return ([f1, f2], feature, fc(feature))
    }

    /// L-MCL's branches for this ResNet: `block_extractor1` = stages 2 and 3 again (from stage 1's
    /// output), `block_extractor2` = stage 3 again (from stage 2's output), same widths and depths.
    public func makeAuxiliaryBranches(generator: inout SeededGenerator) -> AuxiliaryBranches {
        AuxiliaryBranches.repeatingStages(widths: filters, norms: false, featureCount: featureCount, classCount: classCount,
                                          generator: &generator) { input, width, generator in
            ResNet.stage(inputChannels: input, width: width, blocks: blocksPerStage, stride: 2, generator: &generator)
        }
    }

    /// One stage: `blocks` basic blocks of `width` channels, the first with `stride`.
    static func stage(inputChannels: Int, width: Int, blocks: Int, stride: Int, generator: inout SeededGenerator) -> Sequential {
        Sequential((0..<blocks).map { b in
            ResNetBasicBlock(inputChannels: b == 0 ? inputChannels : width, outputChannels: width, stride: b == 0 ? stride : 1,
                             generator: &generator)
        })
    }
}

extension Module {
    /// Every convolution in the tree, in state-dict order.
    func allConvolutions() -> [(String, Conv2d)] {
        var result: [(String, Conv2d)] = []
        var stack: [(String, Module)] = [("", self)]
        while let (name, module) = stack.popLast() {
            if let conv = module as? Conv2d { result.append((name, conv)) }
            for (childName, child) in module.children.reversed() {
                stack.append((name.isEmpty ? childName : name + "." + childName, child))
            }
        }
        return result
    }
}
