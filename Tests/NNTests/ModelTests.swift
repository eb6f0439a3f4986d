import Foundation
import Testing
import Tensors
import TestSupport
@testable import NN

/// The state-dict keys and shapes of the reference models, dumped from HobbitLong/RepDistiller's
/// `models/resnet.py` and `models/wrn.py` with PyTorch (see the file's `source`).
struct ReferenceKeys: Decodable {
    let models: [String: [[KeyOrShape]]]

    enum KeyOrShape: Decodable {
        case key(String), shape([Int])
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .key(s) } else { self = .shape(try c.decode([Int].self)) }
        }
    }

    static let shared: ReferenceKeys = {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Resources/state_dict_keys.json")
        return try! JSONDecoder().decode(ReferenceKeys.self, from: Data(contentsOf: url))
    }()

    func entries(_ model: String) -> [(String, [Int])] {
        models[model]!.map { pair in
            guard case .key(let k) = pair[0], case .shape(let s) = pair[1] else { fatalError("bad reference entry") }
            return (k, s)
        }
    }
}

@Suite struct ModelTests {
    @Test(arguments: Architecture.allCases)
    func stateDictMatchesPyTorch(_ architecture: Architecture) {
        let net = architecture.make(inputChannels: 3, classCount: 10, seed: 1)
        let ours = net.stateDict().map { ($0.0, $0.1.shape) }
        let reference = ReferenceKeys.shared.entries(architecture.rawValue)
        #expect(ours.map(\.0) == reference.map(\.0), "keys (and their order) differ from PyTorch's state_dict")
        #expect(ours.map(\.1) == reference.map(\.1), "shapes differ from PyTorch's state_dict")
    }

    @Test(arguments: [(Architecture.resnet20, 3, 32), (.resnet20, 1, 28), (.resnet8x4, 3, 32), (.wrn_16_2, 1, 28)])
    func forwardShapesForAnyInputSize(_ architecture: Architecture, _ channels: Int, _ size: Int) {
        let net = architecture.make(inputChannels: channels, classCount: 7, seed: 2)
        var g = SeededGenerator(seed: 3)
        let (feature, logits) = net.forward(Tensor.randomNormal([2, channels, size, size], using: &g))
        #expect(feature.shape == [2, net.featureCount])
        #expect(logits.shape == [2, 7])
        #expect(logits.scalars.allSatisfy { $0.isFinite })
    }

    /// Layer-wise MCL's auxiliary branches have the keys and shapes of winycg/L-MCL's
    /// `Auxiliary_Classifier` (dumped with PyTorch into the reference file as `auxiliary/<model>`).
    @Test(arguments: [Architecture.resnet8, .resnet20, .resnet8x4, .resnet32x4, .wrn_16_2, .wrn_40_2])
    func auxiliaryBranchesMatchTheReference(_ architecture: Architecture) {
        let net = architecture.make(inputChannels: 3, classCount: 100, seed: 1)
        var g = SeededGenerator(seed: 2)
        let branches = net.makeAuxiliaryBranches(generator: &g)
        let ours = branches.stateDict().map { ($0.0, $0.1.shape) }
        let reference = ReferenceKeys.shared.entries("auxiliary/" + architecture.rawValue)
        #expect(ours.map(\.0) == reference.map(\.0), "keys (and their order) differ from L-MCL's Auxiliary_Classifier")
        #expect(ours.map(\.1) == reference.map(\.1), "shapes differ from L-MCL's Auxiliary_Classifier")
        #expect(branches.classifiers.allSatisfy { $0.bias!.scalars.allSatisfy { $0 == 0 } })
    }

    /// `forwardWithStages` is `forward` plus the first two stages' outputs, which the branches take.
    @Test(arguments: [(Architecture.resnet8, 1, 28), (.resnet14, 3, 32), (.wrn_16_2, 1, 28)])
    func forwardWithStagesFeedsTheAuxiliaryBranches(_ architecture: Architecture, _ channels: Int, _ size: Int) {
        let net = architecture.make(inputChannels: channels, classCount: 10, seed: 3)
        var g = SeededGenerator(seed: 4)
        let branches = net.makeAuxiliaryBranches(generator: &g)
        let x = Tensor.randomNormal([4, channels, size, size], using: &g)
        let (feature, logits) = net.forward(x)
        let (stages, stagedFeature, stagedLogits) = net.forwardWithStages(x)
        #expect(stagedFeature.scalars == feature.scalars && stagedLogits.scalars == logits.scalars)
        let widths = architecture == .wrn_16_2 ? [32, 64] : [16, 32]
        #expect(stages.map(\.shape) == [[4, widths[0], size, size], [4, widths[1], (size + 1) / 2, (size + 1) / 2]])
        let outputs = branches(stages)
        #expect(outputs.count == 2)
        for (f, l) in outputs {
            #expect(f.shape == [4, net.featureCount] && l.shape == [4, 10])
            #expect(l.scalars.allSatisfy { $0.isFinite })
        }
        // The branches never touch the backbone: same logits after they ran.
        #expect(net.forward(x).logits.scalars == logits.scalars)
    }

    @Test func initialisationFollowsRepDistiller() {
        var g4 = SeededGenerator(seed: 4), g4again = SeededGenerator(seed: 4), g5 = SeededGenerator(seed: 5)
        let net = ResNet(depth: 20, filters: [16, 16, 32, 64], generator: &g4)
        // Kaiming normal, fan-out: std sqrt(2 / (out * 3 * 3)) for layer3's 64-channel convolutions.
        let w = net.layer3.layers[1] as! ResNetBasicBlock
        let values = w.conv1.weight.scalars
        let std = (values.map { $0 * $0 }.reduce(0, +) / Float(values.count)).squareRoot()
        #expect(abs(std - (2 / Float(64 * 9)).squareRoot()) < 0.004)
        #expect(w.bn1.weight.scalars.allSatisfy { $0 == 1 } && w.bn1.bias.scalars.allSatisfy { $0 == 0 })
        #expect(w.bn1.runningVar.scalars.allSatisfy { $0 == 1 } && w.bn1.runningMean.scalars.allSatisfy { $0 == 0 })
        // PyTorch's Linear default: uniform in ±1/sqrt(in).
        let bound = 1 / Float(64).squareRoot()
        #expect(net.fc.weight.scalars.allSatisfy { abs($0) <= bound })
        #expect(net.fc.bias!.scalars.allSatisfy { abs($0) <= bound })
        // Same seed, same weights.
        let again = ResNet(depth: 20, filters: [16, 16, 32, 64], generator: &g4again)
        #expect(again.fc.weight.scalars == net.fc.weight.scalars)
        // WRN zeroes the classifier bias.
        let wrn = WideResNet(depth: 16, widenFactor: 2, generator: &g5)
        #expect(wrn.fc.bias!.scalars.allSatisfy { $0 == 0 })
    }

    @Test func evaluationModeUsesRunningStatistics() {
        let net = Architecture.resnet8.make(seed: 6) as! ResNet
        var g = SeededGenerator(seed: 7)
        let x = Tensor.randomNormal([4, 3, 16, 16], using: &g)
        let before = net.stateDict().first { $0.0 == "bn1.running_mean" }!.1.scalars
        let train = net(x)
        let after = net.stateDict().first { $0.0 == "bn1.running_mean" }!.1.scalars
        #expect(before != after, "training mode updates running statistics")
        net.eval()
        #expect(!net.isTraining && !net.layer1.isTraining && !(net.layer1.layers[0] as! ResNetBasicBlock).bn2.isTraining)
        let eval1 = withNoGrad { net(x) }, eval2 = withNoGrad { net(x) }
        #expect(eval1.scalars == eval2.scalars, "evaluation is deterministic and does not update statistics")
        #expect(eval1.scalars != train.scalars)
        #expect(net.stateDict().first { $0.0 == "bn1.running_mean" }!.1.scalars == after)
    }

    @Test func loadStateDictRejectsBadInputWithoutChangingAnything() throws {
        let net = Architecture.resnet8.make(seed: 8) as! ResNet
        let original = net.fc.weight.scalars
        var entries = Dictionary(uniqueKeysWithValues: net.stateDict().map { ($0.0, $0.1.copy()) })
        entries["fc.weight"] = Tensor.zeros([10, 64])
        entries.removeValue(forKey: "bn1.bias")
        #expect(throws: StateDictError.missingKeys(["bn1.bias"])) { try net.loadStateDict(entries) }
        entries["bn1.bias"] = Tensor.zeros([16])
        entries["extra"] = Tensor.zeros([1])
        #expect(throws: StateDictError.unexpectedKeys(["extra"])) { try net.loadStateDict(entries) }
        entries.removeValue(forKey: "extra")
        entries["fc.bias"] = Tensor.zeros([11])
        #expect(throws: StateDictError.shapeMismatch(key: "fc.bias", expected: [10], found: [11])) {
            try net.loadStateDict(entries)
        }
        #expect(net.fc.weight.scalars == original)
        entries["fc.bias"] = Tensor.zeros([10])
        try net.loadStateDict(entries)
        #expect(net.fc.weight.scalars.allSatisfy { $0 == 0 })
    }

    @Test func architectureNames() {
        #expect(Architecture(name: "wrn-40-2") == .wrn_40_2)
        #expect(Architecture(name: "ResNet32x4") == .resnet32x4)
        #expect(Architecture(name: "resnet18") == nil)
    }

    @Test func trainingStepIsIndependentOfThreadCount() {
        func step(threads: Int) -> [Float] { Parallelism.withThreadCount(threads) { stepBody() } }
        func stepBody() -> [Float] {
            let net = Architecture.resnet8.make(inputChannels: 1, classCount: 10, seed: 9)
            var g = SeededGenerator(seed: 10)
            let x = Tensor.randomNormal([16, 1, 28, 28], using: &g)
            let loss = net(x).crossEntropy(labels: (0..<16).map { $0 % 10 })
            loss.backward()
            return net.namedParameters().flatMap { $0.1.grad!.scalars }
        }
        let one = step(threads: 1), two = step(threads: 2)
        let scale = one.map(abs).max()!
        #expect(maxDifference(one, two) <= 1e-5 * scale)
    }

    /// The graph of a basic block (and of a Wide ResNet block) keeps three activations for the backward
    /// pass — the two convolutions' outputs and the block's output — not the first batch norm's output as
    /// well: it is rebuilt from the first convolution's output in the backward pass. (Four before.)
    @Test func blocksKeepThreeActivationsForTheBackwardPass() {
        var g = SeededGenerator(seed: 11)
        let blocks: [any Layer] = [ResNetBasicBlock(inputChannels: 8, outputChannels: 8, stride: 1, generator: &g),
                                   WideBasicBlock(inputChannels: 8, outputChannels: 8, stride: 1, generator: &g)]
        for block in blocks {
            let x = Tensor.randomNormal([4, 8, 12, 12], using: &g)
            x.requiresGrad = true
            let trace = MemoryTrace()
            let y = MemoryTrace.$current.withValue(trace) { block(x) }
            let activation = x.count * MemoryLayout<Float>.stride
            // Besides the activations: a few per-channel tensors (8 floats each).
            #expect(trace.liveBytes >= 3 * activation && trace.liveBytes < 3 * activation + activation / 8,
                    "\(type(of: block)): \(Double(trace.liveBytes) / Double(activation)) activations kept")
            y.backward(Tensor(repeating: 1, shape: y.shape))
            #expect(x.grad!.scalars.allSatisfy { $0.isFinite })
        }
    }

    /// A basic block's backward pass holds at most three activation-sized buffers at a time, the block
    /// input's gradient included: the convolution's weight gradient comes from the normalised input rebuilt
    /// and released before the input gradient is allocated, and gradients meeting at a tensor are added
    /// into a buffer nothing else reads rather than into a new sum (four before, at the normalised input's
    /// rebuild).
    /// (On Cohort's kernels: OpenBLAS's route lowers into scratch buffers as large as activations.)
    @Test func blockBackwardHoldsThreeActivationsAtATime() {
        for path in Gemm.availablePaths where path != .blas { Gemm.withPath(path) { blockBackwardHoldsThreeActivationsAtATime(path) } }
    }

    func blockBackwardHoldsThreeActivationsAtATime(_ path: Gemm.Path) {
        var g = SeededGenerator(seed: 12)
        let block = ResNetBasicBlock(inputChannels: 8, outputChannels: 8, stride: 1, generator: &g)
        let x = Tensor.randomNormal([4, 8, 32, 32], using: &g)
        x.requiresGrad = true
        let y = block(x)
        let seed = Tensor(repeating: 1, shape: y.shape)
        let trace = MemoryTrace()
        MemoryTrace.$current.withValue(trace) { y.backward(seed) }
        let activation = x.count * MemoryLayout<Float>.stride
        // Besides the activations: the parameters' gradients and the kernels' small tables (0.14 here).
        #expect(trace.peakBytes < 3 * activation + activation / 4,
                "\(path): \(Double(trace.peakBytes) / Double(activation)) activations at the backward pass's peak")
        // What stays: the block input's gradient, kept by the leaf itself (no copy), and the parameters'.
        #expect(trace.liveBytes < activation + activation / 8)
    }
}
