import Tensors

/// The auxiliary branches of layer-wise MCL (winycg/L-MCL's `Auxiliary_Classifier`): training-time heads
/// that give a network two more pooled features and classifiers from its intermediate stages.
///
/// Branch 1 takes the output of stage 1 and repeats stages 2 and 3 at the backbone's widths; branch 2
/// takes the output of stage 2 and repeats stage 3. Each branch is pooled (the Wide ResNet's after a
/// batch norm and ReLU, as its backbone) and has its own linear classifier. The branches never feed the
/// backbone: evaluation and exported checkpoints use the backbone alone.
///
/// State-dict keys as the reference's: `block_extractor1.0.*`, `block_extractor1.1.*`,
/// `block_extractor2.0.*`, (Wide ResNet: `bn1`, `bn2`), `fc1`, `fc2`.
public final class AuxiliaryBranches: Module {
    /// `block_extractor1` (stages 2 and 3 again) and `block_extractor2` (stage 3 again).
    public let extractors: [Sequential]
    /// The Wide ResNet's final batch norms (`bn1`, `bn2`), applied with a ReLU before pooling.
    public let norms: [BatchNorm2d]
    /// `fc1`, `fc2`.
    public let classifiers: [Linear]
    /// The length of each branch's pooled feature (the backbone's last width).
    public let featureCount: Int

    /// - Parameters:
    ///   - extractors: the two branches' stage stacks, each a `Sequential` of stages.
    ///   - norms: empty, or one batch norm per branch applied (with a ReLU) before pooling.
    ///   - classCount: logits per branch.
    ///   - generator: the classifiers' initial weights (PyTorch's default, zero bias); the convolutions
    ///     are drawn again as normal with std `sqrt(2 / (kh kw out))`, as the reference does.
    public init(extractors: [Sequential], norms: [BatchNorm2d], featureCount: Int, classCount: Int,
                generator: inout SeededGenerator) {
        precondition(extractors.count == 2 && (norms.isEmpty || norms.count == 2))
        self.extractors = extractors
        self.norms = norms
        self.featureCount = featureCount
        classifiers = (0..<2).map { _ in Linear(inputCount: featureCount, outputCount: classCount, generator: &generator) }
        super.init()
        for (_, conv) in allConvolutions() { conv.kaimingNormalFanOut(generator: &generator) }
        for fc in classifiers { fc.bias?.assign(Tensor.zeros([classCount])) }
    }

    /// L-MCL's two branches for a network whose stage `i` maps `widths[i]` to `widths[i + 1]` channels:
    /// branch 1 = stages 2 and 3 again (from stage 1's output), branch 2 = stage 3 again (from stage 2's),
    /// each built by `stage(input channels, width, stride 2, generator)` in that order.
    /// - Parameter norms: whether each branch ends with its own batch norm and ReLU (the Wide ResNets).
    static func repeatingStages(widths: [Int], norms: Bool, featureCount: Int, classCount: Int, generator: inout SeededGenerator,
                                stage: (Int, Int, inout SeededGenerator) -> any Layer) -> AuxiliaryBranches {
        let first = Sequential([stage(widths[1], widths[2], &generator), stage(widths[2], widths[3], &generator)])
        let second = Sequential([stage(widths[2], widths[3], &generator)])
        let batchNorms = norms ? [BatchNorm2d(featureCount: widths[3]), BatchNorm2d(featureCount: widths[3])] : []
        return AuxiliaryBranches(extractors: [first, second], norms: batchNorms, featureCount: featureCount, classCount: classCount,
                                 generator: &generator)
    }

    /// The number of branches (2).
    public var count: Int { extractors.count }

    public override var children: [(String, Module)] {
        var c: [(String, Module)] = extractors.enumerated().map { ("block_extractor\($0.offset + 1)", $0.element) }
        c += norms.enumerated().map { ("bn\($0.offset + 1)", $0.element) }
        c += classifiers.enumerated().map { ("fc\($0.offset + 1)", $0.element) }
        return c
    }

    /// Runs the branches on the backbone's stage outputs (`stages[0]` after stage 1, `stages[1]` after
    /// stage 2).
    /// - Returns: per branch, its pooled feature (`N x featureCount`) and its logits.
    public func callAsFunction(_ stages: [Tensor]) -> [(feature: Tensor, logits: Tensor)] {
        precondition(stages.count == extractors.count, "the auxiliary branches take \(extractors.count) stage outputs")
        return (0..<extractors.count).map { i in
            var x = extractors[i](stages[i])
            if !norms.isEmpty { x = norms[i].withReLU(x) }
            let feature = x.globalAveragePool()
            return (feature, classifiers[i](feature))
        }
    }
}
