/// Pooling.
extension Tensor {
    /// The mean over all spatial positions: `N x C x H x W -> N x C`.
    public func globalAveragePool() -> Tensor {
        precondition(rank == 4, "globalAveragePool needs N x C x H x W, got \(shape)")
        let rows = shape[0] * shape[1], plane = shape[2] * shape[3]
        let out = Tensor(uninitializedShape: [shape[0], shape[1]])
        let scale = 1 / Float(plane)
        for r in 0..<rows { out.data[r] = Vector.sum(data + r * plane, count: plane) * scale }
        let inShape = shape
        return out.recorded("globalAveragePool", [self]) { g in
            [Tensor.spread(g, outer: rows, length: plane, inner: 1, shape: inShape, scale: scale)]
        }
    }
}
