import Tensors

/// The named architectures Cohort can build, with RepDistiller's names.
public enum Architecture: String, CaseIterable, Sendable {
    case resnet8, resnet14, resnet20, resnet32, resnet44, resnet56, resnet110
    case resnet8x4, resnet32x4
    case wrn_16_2, wrn_40_2

    /// Parses a name; `wrn-16-2` is accepted for `wrn_16_2`.
    public init?(name: String) {
        self.init(rawValue: String(name.lowercased().map { $0 == "-" ? "_" : $0 }))
    }

    /// All names, for error messages and help.
    public static var allNames: String { allCases.map(\.rawValue).joined(separator: ", ") }

    /// Builds the network with weights drawn from `seed`.
    public func make(inputChannels: Int = 3, classCount: Int = 10, seed: UInt64) -> any Classifier {
        var generator = SeededGenerator(seed: seed)
        switch self {
        case .resnet8, .resnet14, .resnet20, .resnet32, .resnet44, .resnet56, .resnet110:
            let depth = Int(rawValue.dropFirst("resnet".count))!
            return ResNet(depth: depth, filters: [16, 16, 32, 64], inputChannels: inputChannels, classCount: classCount,
                          generator: &generator)
        case .resnet8x4:
            return ResNet(depth: 8, filters: [32, 64, 128, 256], inputChannels: inputChannels, classCount: classCount,
                          generator: &generator)
        case .resnet32x4:
            return ResNet(depth: 32, filters: [32, 64, 128, 256], inputChannels: inputChannels, classCount: classCount,
                          generator: &generator)
        case .wrn_16_2:
            return WideResNet(depth: 16, widenFactor: 2, inputChannels: inputChannels, classCount: classCount,
                              generator: &generator)
        case .wrn_40_2:
            return WideResNet(depth: 40, widenFactor: 2, inputChannels: inputChannels, classCount: classCount,
                              generator: &generator)
        }
    }
}
