/// A named Float32 tensor travelling as one raw little-endian frame; its name, dtype and shape travel
/// in the header.
public struct TensorPayload: Sendable, Equatable {
    public let name: String
    public let shape: [Int]
    public let values: [Float]

    public init(name: String, shape: [Int], values: [Float]) {
        precondition(shape.reduce(1, *) == values.count, "tensor \(name): \(values.count) values for shape \(shape)")
        self.name = name; self.shape = shape; self.values = values
    }

    /// The header's description of this tensor.
    var descriptor: TensorDescriptor { TensorDescriptor(name: name, dtype: "F32", shape: shape) }

    /// Little-endian bytes (the host is little-endian on every platform Cohort builds for).
    var bytes: [UInt8] { values.withUnsafeBytes { Array($0) } }
}

/// A tensor's entry in a message header.
struct TensorDescriptor: Codable, Equatable {
    let name: String
    let dtype: String
    let shape: [Int]
}
