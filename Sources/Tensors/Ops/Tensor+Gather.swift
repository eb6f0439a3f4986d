/// Row selection and row scatter (the first axis is the row axis).
extension Tensor {
    fileprivate var rowLength: Int { rank == 0 ? 1 : (shape[0] == 0 ? 0 : count / shape[0]) }

    /// Rows `indices` of `self`, in that order (repeats allowed): `torch.index_select(self, 0, indices)`.
    /// The gradient adds back into the selected rows.
    public func indexSelect(rows indices: [Int]) -> Tensor {
        precondition(rank >= 1)
        let rows = shape[0], len = rowLength
        var outShape = shape
        outShape[0] = indices.count
        let out = Tensor(uninitializedShape: outShape)
        for (i, r) in indices.enumerated() {
            precondition(r >= 0 && r < rows, "indexSelect: row \(r) out of range 0..<\(rows)")
            (out.data + i * len).update(from: data + r * len, count: len)
        }
        let inShape = shape
        return out.recorded("indexSelect", [self]) { g in
            let dx = Tensor.zeros(inShape)
            for (i, r) in indices.enumerated() { Vector.add(g.data + i * len, into: dx.data + r * len, count: len) }
            return [dx]
        }
    }

    /// A copy of `self` with rows `indices` replaced by the rows of `source`
    /// (`torch.Tensor.index_copy(0, indices, source)`); indices must be distinct.
    ///
    /// The gradient of `self` is zero on the replaced rows; `source` receives the gradient of those rows.
    public func indexCopy(rows indices: [Int], from source: Tensor) -> Tensor {
        precondition(rank >= 1 && source.rank == rank && source.shape[0] == indices.count
                     && Array(source.shape.dropFirst()) == Array(shape.dropFirst()),
                     "indexCopy: source \(source.shape) does not fit \(indices.count) rows of \(shape)")
        precondition(Set(indices).count == indices.count, "indexCopy: indices must be distinct")
        let rows = shape[0], len = rowLength
        let out = copy()
        for (i, r) in indices.enumerated() {
            precondition(r >= 0 && r < rows, "indexCopy: row \(r) out of range 0..<\(rows)")
            (out.data + r * len).update(from: source.data + i * len, count: len)
        }
        // The gradients read neither input: keep their flags and the source's shape only.
        let baseNeedsGrad = requiresGrad, sourceNeedsGrad = source.requiresGrad, sourceShape = source.shape
        return out.recorded("indexCopy", [self, source]) { g in
            var gBase: Tensor?, gSource: Tensor?
            if baseNeedsGrad {
                let d = g.copy()
                for r in indices { (d.data + r * len).update(repeating: 0, count: len) }
                gBase = d
            }
            if sourceNeedsGrad {
                let d = Tensor(uninitializedShape: sourceShape)
                for (i, r) in indices.enumerated() { (d.data + i * len).update(from: g.data + r * len, count: len) }
                gSource = d
            }
            return [gBase, gSource]
        }
    }
}

/// In-place writes outside the graph: buffers that are not learned (memories, queues, small parameter
/// vectors), written without a pointer outside this module.
extension Tensor {
    /// Element `index` of the storage (row-major), read or written in place.
    public subscript(flat index: Int) -> Float {
        get {
            precondition(index >= 0 && index < count, "element \(index) of \(count)")
            return data[index]
        }
        set {
            precondition(index >= 0 && index < count, "element \(index) of \(count)")
            data[index] = newValue
        }
    }

    /// Overwrites row `rows[i]` of `self` with row `i` of `source`, in place and outside the graph (a
    /// queue's or memory's rows); a row named twice takes the later source row.
    public func assignRows(_ rows: [Int], from source: Tensor) {
        precondition(rank >= 1 && source.rank == rank && source.shape[0] == rows.count && Array(source.shape.dropFirst()) == Array(shape.dropFirst()),
                     "assignRows: \(rows.count) rows of \(source.shape) into \(shape)")
        let len = rowLength
        for (i, r) in rows.enumerated() {
            precondition(r >= 0 && r < shape[0], "assignRows: row \(r) out of range 0..<\(shape[0])")
            (data + r * len).update(from: source.data + i * len, count: len)
        }
    }
}
