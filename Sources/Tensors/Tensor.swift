/// A dense, contiguous, row-major tensor of `Float32` values that can take part in automatic
/// differentiation.
///
/// Images are NCHW. A tensor is a reference: ops return new tensors and never mutate their inputs,
/// except the few documented in-place methods that optimizers and running statistics use (which are
/// never recorded for differentiation). Tensors are not `Sendable`: they stay on the thread that made
/// them; copy values out with ``scalars`` to move them elsewhere.
public final class Tensor {
    /// The extent of each dimension; `[]` for a scalar.
    public let shape: [Int]
    /// The element buffer, shared with reshaped views of this tensor.
    public let storage: Storage
    /// Whether gradients flow into this tensor. Leaves (parameters) set it; op results inherit it.
    public var requiresGrad: Bool
    /// The accumulated gradient of a leaf after ``backward()``; `nil` until then.
    public var grad: Tensor?
    /// The op that produced this tensor, when it was recorded for differentiation.
    var node: Node?
    /// Set on a gradient nothing else refers to — one an op's backward closure allocated and returns for one
    /// input only, or a sum the autograd allocated — so that the autograd may add other gradients into it,
    /// or make it a leaf's ``grad``, instead of allocating a sum or a copy. Cleared when the tensor is handed
    /// to a closure.
    var isExclusiveGradient = false

    /// Wraps an existing storage with a shape whose element count matches it.
    public init(shape: [Int], storage: Storage, requiresGrad: Bool = false) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in shape \(shape)")
        precondition(Tensor.count(of: shape) == storage.count,
                     "shape \(shape) needs \(Tensor.count(of: shape)) elements, storage has \(storage.count)")
        self.shape = shape
        self.storage = storage
        self.requiresGrad = requiresGrad
    }

    /// An uninitialised tensor; every element must be written before it is read.
    public convenience init(uninitializedShape shape: [Int]) {
        self.init(shape: shape, storage: Storage(count: Tensor.count(of: shape)))
    }

    /// A tensor filled with `value`.
    public convenience init(repeating value: Float, shape: [Int], requiresGrad: Bool = false) {
        self.init(uninitializedShape: shape)
        self.requiresGrad = requiresGrad
        storage.buffer.initialize(repeating: value)
    }

    /// A tensor of zeros.
    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        Tensor(repeating: 0, shape: shape, requiresGrad: requiresGrad)
    }

    /// A tensor holding `scalars` in row-major order.
    public convenience init(_ scalars: [Float], shape: [Int], requiresGrad: Bool = false) {
        precondition(scalars.count == Tensor.count(of: shape),
                     "\(scalars.count) scalars do not fill shape \(shape)")
        self.init(uninitializedShape: shape)
        self.requiresGrad = requiresGrad
        _ = scalars.withUnsafeBufferPointer { storage.buffer.initialize(fromContentsOf: $0) }
    }

    /// A scalar tensor (shape `[]`).
    public convenience init(scalar: Float) { self.init([scalar], shape: []) }

    /// Standard-normal samples times `std`, from `generator`.
    public static func randomNormal(_ shape: [Int], std: Float = 1, using generator: inout SeededGenerator,
                                    requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        let p = t.storage.base
        for i in 0..<t.count { p[i] = generator.nextNormal() * std }
        t.requiresGrad = requiresGrad
        return t
    }

    /// Uniform samples in `[low, high)`, from `generator`.
    public static func randomUniform(_ shape: [Int], low: Float, high: Float, using generator: inout SeededGenerator,
                                     requiresGrad: Bool = false) -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        let p = t.storage.base
        for i in 0..<t.count { p[i] = generator.nextUniform(low, high) }
        t.requiresGrad = requiresGrad
        return t
    }

    /// The number of elements.
    @inlinable public var count: Int { storage.count }
    /// The number of dimensions.
    @inlinable public var rank: Int { shape.count }
    /// Row-major strides, in elements.
    public var strides: [Int] { Tensor.strides(of: shape) }
    /// Pointer to the first element.
    @inlinable public var data: UnsafeMutablePointer<Float> { storage.base }

    /// The elements, copied into an array (for tests, I/O and messages; not for hot loops).
    public var scalars: [Float] { Array(UnsafeBufferPointer(start: storage.base, count: count)) }

    /// The single element of a one-element tensor.
    public var item: Float {
        precondition(count == 1, "item needs a one-element tensor, shape is \(shape)")
        return storage.base[0]
    }

    /// The element count of `shape`.
    public static func count(of shape: [Int]) -> Int { shape.reduce(1, *) }

    /// Row-major strides of `shape`.
    public static func strides(of shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var running = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = running
            running *= shape[axis]
        }
        return strides
    }

    /// A copy of the values in a new storage, outside the graph.
    public func copy() -> Tensor {
        let t = Tensor(uninitializedShape: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// The same values, cut from the graph: no gradient flows back through the result.
    /// Shares storage with `self`.
    public func detached() -> Tensor {
        Tensor(shape: shape, storage: storage)
    }

    /// Overwrites the values with `source`'s (same element count), outside the graph.
    public func assign(_ source: Tensor) {
        precondition(source.count == count, "assign: \(source.shape) into \(shape)")
        data.update(from: source.data, count: count)
    }

    /// Overwrites the values with `scalars`, outside the graph.
    public func assign(_ scalars: [Float]) {
        precondition(scalars.count == count, "assign: \(scalars.count) scalars into \(shape)")
        scalars.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let shown = scalars.prefix(8).map { "\($0)" }.joined(separator: ", ")
        return "Tensor(shape: \(shape), [\(shown)\(count > 8 ? ", ..." : "")])"
    }
}
