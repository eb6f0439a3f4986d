import Foundation

/// The data sets Cohort reads, with their shapes, class counts, normalisation and augmentation.
public enum DataSetKind: String, CaseIterable, Sendable, Codable {
    case fashionMNIST = "fashion-mnist"
    case mnist
    case cifar10
    case cifar100

    /// Parses a name (case-insensitive; `fashion_mnist` and `cifar-10` are accepted).
    public init(name: String) throws {
        let key = name.lowercased().replacingOccurrences(of: "_", with: "-")
        switch key {
        case "fashion-mnist", "fashionmnist": self = .fashionMNIST
        case "mnist": self = .mnist
        case "cifar10", "cifar-10": self = .cifar10
        case "cifar100", "cifar-100": self = .cifar100
        default: throw DataSetError.unknownDataSet(name)
        }
    }

    public var channels: Int { self == .cifar10 || self == .cifar100 ? 3 : 1 }
    public var height: Int { self == .cifar10 || self == .cifar100 ? 32 : 28 }
    public var width: Int { height }
    public var classCount: Int { self == .cifar100 ? 100 : 10 }
    /// `CxHxW`, as the CLI writes input shapes.
    public var shapeDescription: String { "\(channels)x\(height)x\(width)" }

    /// Per-channel mean of the training images (pixels scaled to [0, 1]).
    public var mean: [Float] {
        switch self {
        case .fashionMNIST: [0.2860]
        case .mnist: [0.1307]
        case .cifar10: [0.4914, 0.4822, 0.4465]
        case .cifar100: [0.5071, 0.4867, 0.4408]
        }
    }

    /// Per-channel standard deviation of the training images.
    public var std: [Float] {
        switch self {
        case .fashionMNIST: [0.3530]
        case .mnist: [0.3081]
        case .cifar10: [0.2470, 0.2435, 0.2616]
        case .cifar100: [0.2675, 0.2565, 0.2761]
        }
    }

    /// Training augmentation: random crop with zero padding 4 and horizontal flip for CIFAR; random crop
    /// with padding 2 (no flip) for the 28x28 sets.
    public var augmentation: Augmentation {
        switch self {
        case .cifar10, .cifar100: Augmentation(padding: 4, horizontalFlip: true)
        case .fashionMNIST, .mnist: Augmentation(padding: 2, horizontalFlip: false)
        }
    }

    /// Where the data set is read from when no directory is given (`nil`: a directory is required).
    public var defaultDirectory: String? {
        self == .fashionMNIST ? "/usr/share/datasets/fashion-mnist" : nil
    }

    /// How to get the files, for error messages.
    public var installHint: String {
        switch self {
        case .fashionMNIST:
            "Install Debian's package with `sudo apt-get install dataset-fashion-mnist` (it puts the files in "
                + "/usr/share/datasets/fashion-mnist), or pass --data-dir with a directory holding "
                + "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
                + "t10k-labels-idx1-ubyte (each optionally .gz)."
        case .mnist:
            "Pass --data-dir with a directory holding the four MNIST IDX files (train-images-idx3-ubyte, "
                + "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz)."
        case .cifar10:
            "Download the CIFAR-10 binary version (cifar-10-binary.tar.gz), extract it and pass --data-dir "
                + "with the cifar-10-batches-bin directory (data_batch_1.bin ... data_batch_5.bin, test_batch.bin)."
        case .cifar100:
            "Download the CIFAR-100 binary version (cifar-100-binary.tar.gz), extract it and pass --data-dir "
                + "with the cifar-100-binary directory (train.bin, test.bin)."
        }
    }
}

/// Which part of a data set.
public enum Split: String, Sendable {
    case train, test
}

/// Training-time augmentation of one data set.
public struct Augmentation: Sendable, Equatable {
    /// Zero padding around the image before a random crop back to its size (0: no crop).
    public let padding: Int
    /// Flip horizontally with probability 1/2.
    public let horizontalFlip: Bool
}

/// Images and labels of one split, kept as bytes (`N x C x H x W`) and normalised when batched.
public struct DataSet: Sendable {
    public let kind: DataSetKind
    public let split: Split
    /// Pixels, `count x C x H x W`, row-major.
    public let pixels: [UInt8]
    public let labels: [Int]

    public var count: Int { labels.count }
    public var imageSize: Int { kind.channels * kind.height * kind.width }

    public init(kind: DataSetKind, split: Split, pixels: [UInt8], labels: [Int]) {
        precondition(pixels.count == labels.count * kind.channels * kind.height * kind.width,
                     "\(pixels.count) pixels for \(labels.count) images of \(kind.shapeDescription)")
        self.kind = kind; self.split = split; self.pixels = pixels; self.labels = labels
    }

    /// The first `n` samples (all of them when `n` is `nil` or larger).
    public func prefix(_ n: Int?) -> DataSet {
        guard let n, n < count else { return self }
        return DataSet(kind: kind, split: split, pixels: Array(pixels[0..<(n * imageSize)]), labels: Array(labels[0..<n]))
    }

    /// Loads `split` of `kind` from `directory` (or the kind's default directory).
    /// - Throws: ``DataSetError`` naming the missing or malformed file and how to get the data.
    public static func load(_ kind: DataSetKind, split: Split, directory: String? = nil) throws -> DataSet {
        guard let directory = directory ?? kind.defaultDirectory else {
            throw DataSetError.missingFile(path: "(no --data-dir given)", dataSet: kind.rawValue, hint: kind.installHint)
        }
        switch kind {
        case .fashionMNIST, .mnist: return try loadIDX(kind, split: split, directory: directory)
        case .cifar10, .cifar100: return try loadCIFAR(kind, split: split, directory: directory)
        }
    }

    private static func locate(_ name: String, in directory: String, kind: DataSetKind) throws -> String {
        for candidate in [name, name + ".gz"] {
            let path = (directory as NSString).appendingPathComponent(candidate)
            if FileManager.default.fileExists(atPath: path) { return path }
        }
        throw DataSetError.missingFile(path: (directory as NSString).appendingPathComponent(name) + "[.gz]",
                                       dataSet: kind.rawValue, hint: kind.installHint)
    }

    private static func loadIDX(_ kind: DataSetKind, split: Split, directory: String) throws -> DataSet {
        let prefix = split == .train ? "train" : "t10k"
        let imagesPath = try locate("\(prefix)-images-idx3-ubyte", in: directory, kind: kind)
        let labelsPath = try locate("\(prefix)-labels-idx1-ubyte", in: directory, kind: kind)
        let images = try IDX.read(imagesPath), labels = try IDX.read(labelsPath)
        guard images.dimensions.count == 3, images.dimensions[1] == kind.height, images.dimensions[2] == kind.width else {
            throw DataSetError.malformed(file: imagesPath, reason: "images are \(images.dimensions), expected N x \(kind.height) x \(kind.width)")
        }
        guard labels.dimensions.count == 1, labels.dimensions[0] == images.dimensions[0] else {
            throw DataSetError.malformed(file: labelsPath, reason: "\(labels.dimensions) labels for \(images.dimensions[0]) images")
        }
        if let bad = labels.bytes.first(where: { Int($0) >= kind.classCount }) {
            throw DataSetError.malformed(file: labelsPath, reason: "label \(bad) outside 0..<\(kind.classCount)")
        }
        return DataSet(kind: kind, split: split, pixels: images.bytes, labels: labels.bytes.map(Int.init))
    }

    private static func loadCIFAR(_ kind: DataSetKind, split: Split, directory: String) throws -> DataSet {
        let files: [String]
        let labelBytes: Int
        if kind == .cifar10 {
            files = split == .train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]
            labelBytes = 1
        } else {
            files = [split == .train ? "train.bin" : "test.bin"]
            labelBytes = 2   // coarse, fine; the fine label is used
        }
        let record = labelBytes + 3072
        var pixels: [UInt8] = [], labels: [Int] = []
        for name in files {
            let path = (directory as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: path) else {
                throw DataSetError.missingFile(path: path, dataSet: kind.rawValue, hint: kind.installHint)
            }
            let bytes: [UInt8]
            do { bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) } catch {
                throw DataSetError.malformed(file: path, reason: "cannot read: \(error.localizedDescription)")
            }
            guard !bytes.isEmpty, bytes.count % record == 0 else {
                throw DataSetError.malformed(file: path, reason: "\(bytes.count) bytes is not a whole number of \(record)-byte records")
            }
            pixels.reserveCapacity(pixels.count + bytes.count / record * 3072)
            for r in 0..<(bytes.count / record) {
                let o = r * record
                let label = Int(bytes[o + labelBytes - 1])
                guard label < kind.classCount else {
                    throw DataSetError.malformed(file: path, reason: "record \(r) has label \(label), outside 0..<\(kind.classCount)")
                }
                labels.append(label)
                pixels.append(contentsOf: bytes[(o + labelBytes)..<(o + record)])
            }
        }
        return DataSet(kind: kind, split: split, pixels: pixels, labels: labels)
    }
}
