/// Shape changes: reshape (sharing storage), 2-D transpose, concatenation and slicing.
extension Tensor {
    /// The same elements with another shape of equal count; one dimension may be `-1` (inferred).
    /// Shares storage with `self`.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var target = newShape
        if let hole = target.firstIndex(of: -1) {
            let known = target.enumerated().filter { $0.offset != hole }.map(\.element).reduce(1, *)
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) to \(newShape)")
            target[hole] = count / known
        }
        precondition(Tensor.count(of: target) == count, "cannot reshape \(shape) to \(newShape)")
        let out = Tensor(shape: target, storage: storage)
        let inShape = shape
        return out.recorded("reshape", [self]) { g in [Tensor(shape: inShape, storage: g.storage)] }
    }

    /// Flattens every dimension after the first: `[N, ...] -> [N, rest]`.
    public func flattened() -> Tensor { reshaped([shape[0], -1]) }

    /// The transpose of a 2-D tensor (a copy in the new layout).
    public func transposed() -> Tensor {
        precondition(rank == 2, "transposed() needs a 2-D tensor, got \(shape)")
        let out = Tensor.transposeCopy(self)
        return out.recorded("transpose", [self]) { g in [Tensor.transposeCopy(g)] }
    }

    private static func transposeCopy(_ t: Tensor) -> Tensor {
        let rows = t.shape[0], cols = t.shape[1]
        let out = Tensor(uninitializedShape: [cols, rows])
        let s = t.data, d = out.data
        let block = 32
        for r0 in stride(from: 0, to: rows, by: block) {
            for c0 in stride(from: 0, to: cols, by: block) {
                for r in r0..<Swift.min(r0 + block, rows) {
                    for c in c0..<Swift.min(c0 + block, cols) { d[c * rows + r] = s[r * cols + c] }
                }
            }
        }
        return out
    }

    /// Joins `tensors` along `axis`; all other dimensions must agree.
    public static func concatenate(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concatenate needs at least one tensor")
        let first = tensors[0]
        let axis = axis < 0 ? axis + first.rank : axis
        for t in tensors {
            precondition(t.rank == first.rank && (0..<t.rank).allSatisfy { $0 == axis || t.shape[$0] == first.shape[$0] },
                         "concatenate along \(axis): \(t.shape) does not match \(first.shape)")
        }
        let (outer, _, inner) = first.split(around: axis)
        let lengths = tensors.map { $0.shape[axis] }
        let total = lengths.reduce(0, +)
        var outShape = first.shape
        outShape[axis] = total
        let out = Tensor(uninitializedShape: outShape)
        var offset = 0
        for (t, len) in zip(tensors, lengths) {
            for a in 0..<outer {
                (out.data + (a * total + offset) * inner).update(from: t.data + a * len * inner, count: len * inner)
            }
            offset += len
        }
        let needsGradient = tensors.map(\.requiresGrad)
        return out.recorded("concatenate", tensors) { g in
            var grads: [Tensor?] = []
            var offset = 0
            for (needs, len) in zip(needsGradient, lengths) {
                grads.append(needs ? g.sliceCopy(axis: axis, start: offset, length: len) : nil)
                offset += len
            }
            return grads
        }
    }

    /// `length` entries along `axis` starting at `start`.
    public func slice(axis: Int, start: Int, length: Int) -> Tensor {
        let axis = axis < 0 ? axis + rank : axis
        precondition(start >= 0 && length >= 0 && start + length <= shape[axis],
                     "slice [\(start), \(start + length)) out of range of axis \(axis) in \(shape)")
        let out = sliceCopy(axis: axis, start: start, length: length)
        let inShape = shape
        return out.recorded("slice", [self]) { g in
            let dx = Tensor.zeros(inShape)
            let (outer, full, inner) = dx.split(around: axis)
            for a in 0..<outer {
                (dx.data + (a * full + start) * inner).update(from: g.data + a * length * inner, count: length * inner)
            }
            return [dx]
        }
    }

    func sliceCopy(axis: Int, start: Int, length: Int) -> Tensor {
        let (outer, full, inner) = split(around: axis)
        var outShape = shape
        outShape[axis] = length
        let out = Tensor(uninitializedShape: outShape)
        for a in 0..<outer {
            (out.data + a * length * inner).update(from: data + (a * full + start) * inner, count: length * inner)
        }
        return out
    }
}
