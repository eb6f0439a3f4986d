#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Softmax and log-softmax over the last axis ("rows"), numerically stable (max subtracted).
extension Tensor {
    private var rowsAndColumns: (rows: Int, columns: Int) {
        precondition(rank >= 1, "softmax needs at least one dimension")
        let c = shape[rank - 1]
        return (c == 0 ? 0 : count / c, c)
    }

    /// Writes `x - logsumexp(x)` row by row into `out`.
    private func logSoftmaxRows(into out: Tensor) {
        let (rows, cols) = rowsAndColumns
        let x = data, o = out.data
        Parallelism.forEachChunk(rows, costPerItem: cols * 8) { range in
            for r in range {
                let xr = x + r * cols, orow = o + r * cols
                let m = Vector.max(xr, count: cols)
                let vm = Vector.Lanes(repeating: m)
                Vector.map(xr, orow, cols, { $0 - vm }, { $0 - m })
                Vector.exp(orow, orow, count: cols)
                let s = Vector.sum(orow, count: cols)
                // (x - m) - log s, in that order: exact for the largest entry even at large magnitudes.
                let l = logf(s)
                let vl = Vector.Lanes(repeating: l)
                Vector.map(xr, orow, cols, { ($0 - vm) - vl }, { ($0 - m) - l })
            }
        }
    }

    /// `log softmax` over the last axis.
    public func logSoftmax() -> Tensor {
        let out = Tensor(uninitializedShape: shape)
        logSoftmaxRows(into: out)
        let (rows, cols) = rowsAndColumns
        let saved = out.detached()
        return out.recorded("logSoftmax", [self]) { g in
            // dx = g - softmax * sum(g) per row
            let dx = Tensor(uninitializedShape: g.shape)
            let gp = g.data, op = saved.data, d = dx.data
            Parallelism.forEachChunk(rows, costPerItem: cols * 8) { range in
                for r in range {
                    let s = Vector.sum(gp + r * cols, count: cols), vs = Vector.Lanes(repeating: s)
                    let row = d + r * cols
                    Vector.exp(op + r * cols, row, count: cols)
                    Vector.zip(gp + r * cols, row, row, cols, { $0 - $1 * vs }, { $0 - $1 * s })
                }
            }
            return [dx]
        }
    }

    /// `softmax` over the last axis.
    public func softmax() -> Tensor {
        let out = Tensor(uninitializedShape: shape)
        logSoftmaxRows(into: out)
        Vector.exp(out.data, out.data, count: count)
        let (rows, cols) = rowsAndColumns
        let saved = out.detached()
        return out.recorded("softmax", [self]) { g in
            // dx = s * (g - <g, s>) per row
            let dx = Tensor(uninitializedShape: g.shape)
            let gp = g.data, sp = saved.data, d = dx.data
            for r in 0..<rows {
                let dot = Vector.dot(gp + r * cols, sp + r * cols, count: cols)
                for j in 0..<cols { d[r * cols + j] = sp[r * cols + j] * (gp[r * cols + j] - dot) }
            }
            return [dx]
        }
    }

    /// Each row (last axis) divided by its L2 norm, as `torch.nn.functional.normalize`:
    /// `x / max(||x||, epsilon)`.
    public func normalizedRows(epsilon: Float = 1e-12) -> Tensor {
        let (rows, cols) = rowsAndColumns
        let out = Tensor(uninitializedShape: shape)
        var norms = [Float](repeating: 0, count: rows)
        let x = data, o = out.data
        for r in 0..<rows {
            let n = Vector.dot(x + r * cols, x + r * cols, count: cols).squareRoot()
            norms[r] = n
            let inv = 1 / Swift.max(n, epsilon)
            let vi = Vector.Lanes(repeating: inv)
            Vector.map(x + r * cols, o + r * cols, cols, { $0 * vi }, { $0 * inv })
        }
        let saved = out.detached()
        return out.recorded("normalizedRows", [self]) { g in
            // Above epsilon: dx = (g - y <g, y>) / ||x||; clamped: dx = g / epsilon.
            let dx = Tensor(uninitializedShape: g.shape)
            let gp = g.data, yp = saved.data, d = dx.data
            for r in 0..<rows {
                let gr = gp + r * cols, yr = yp + r * cols, dr = d + r * cols
                if norms[r] > epsilon {
                    let dot = Vector.dot(gr, yr, count: cols), inv = 1 / norms[r]
                    for j in 0..<cols { dr[j] = (gr[j] - yr[j] * dot) * inv }
                } else {
                    for j in 0..<cols { dr[j] = gr[j] / epsilon }
                }
            }
            return [dx]
        }
    }
}
