/// Reductions: sums, means and maxima over one axis or over everything.
extension Tensor {
    /// Splits the shape around `axis` into (outer, axis length, inner).
    func split(around axis: Int) -> (outer: Int, length: Int, inner: Int) {
        precondition(axis >= 0 && axis < rank, "axis \(axis) out of range for shape \(shape)")
        let outer = shape[..<axis].reduce(1, *)
        let inner = shape[(axis + 1)...].reduce(1, *)
        return (outer, shape[axis], inner)
    }

    private func normalizedAxis(_ axis: Int) -> Int { axis < 0 ? axis + rank : axis }

    private func reducedShape(_ axis: Int, keepingDimension: Bool) -> [Int] {
        var s = shape
        if keepingDimension { s[axis] = 1 } else { s.remove(at: axis) }
        return s
    }

    /// The sum of all elements, as a scalar (shape `[]`).
    public func sum() -> Tensor {
        let out = Tensor(scalar: Vector.sum(data, count: count))
        let inShape = shape
        return out.recorded("sum", [self]) { g in [Tensor(repeating: g.item, shape: inShape)] }
    }

    /// The mean of all elements, as a scalar.
    public func mean() -> Tensor {
        sum() * (1 / Float(Swift.max(count, 1)))
    }

    /// The sum over `axis` (negative counts from the end); the axis is dropped unless `keepingDimension`.
    public func sum(axis: Int, keepingDimension: Bool = false) -> Tensor {
        let axis = normalizedAxis(axis)
        let (outer, length, inner) = split(around: axis)
        let out = Tensor.zeros(reducedShape(axis, keepingDimension: keepingDimension))
        let x = data, o = out.data
        for a in 0..<outer {
            if inner == 1 {
                o[a] = Vector.sum(x + a * length, count: length)
            } else {
                for d in 0..<length { Vector.add(x + (a * length + d) * inner, into: o + a * inner, count: inner) }
            }
        }
        let inShape = shape
        return out.recorded("sum(axis)", [self]) { g in
            [Tensor.spread(g, outer: outer, length: length, inner: inner, shape: inShape, scale: 1)]
        }
    }

    /// The mean over `axis`; the axis is dropped unless `keepingDimension`.
    public func mean(axis: Int, keepingDimension: Bool = false) -> Tensor {
        let axis = normalizedAxis(axis)
        return sum(axis: axis, keepingDimension: keepingDimension) * (1 / Float(Swift.max(shape[axis], 1)))
    }

    /// Repeats `g` (outer x inner) along a middle axis of `length`, times `scale`.
    static func spread(_ g: Tensor, outer: Int, length: Int, inner: Int, shape: [Int], scale: Float) -> Tensor {
        let dx = Tensor(uninitializedShape: shape)
        let gp = g.data, d = dx.data
        for a in 0..<outer {
            for l in 0..<length {
                let dst = d + (a * length + l) * inner, src = gp + a * inner
                if scale == 1 { dst.update(from: src, count: inner) } else {
                    for i in 0..<inner { dst[i] = src[i] * scale }
                }
            }
        }
        return dx
    }

    /// The maximum over `axis` and, for each, the index of its first occurrence.
    ///
    /// The gradient flows only to that first maximal element (ties go to the lowest index).
    public func max(axis: Int, keepingDimension: Bool = false) -> (values: Tensor, indices: [Int]) {
        let axis = normalizedAxis(axis)
        let (outer, length, inner) = split(around: axis)
        precondition(length > 0, "max over an empty axis of \(shape)")
        let out = Tensor(uninitializedShape: reducedShape(axis, keepingDimension: keepingDimension))
        var indices = [Int](repeating: 0, count: outer * inner)
        let x = data, o = out.data
        for a in 0..<outer {
            for i in 0..<inner {
                var best = x[a * length * inner + i], bestIndex = 0
                for l in 1..<length {
                    let v = x[(a * length + l) * inner + i]
                    if v > best { best = v; bestIndex = l }
                }
                o[a * inner + i] = best
                indices[a * inner + i] = bestIndex
            }
        }
        let inShape = shape
        out.recorded("max(axis)", [self]) { g in
            let dx = Tensor.zeros(inShape)
            for a in 0..<outer {
                for i in 0..<inner {
                    dx.data[(a * length + indices[a * inner + i]) * inner + i] = g.data[a * inner + i]
                }
            }
            return [dx]
        }
        return (out, indices)
    }
}
