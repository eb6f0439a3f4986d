#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Element-wise functions of one tensor.
extension Tensor {
    private func mapped(_ f: (UnsafePointer<Float>, UnsafeMutablePointer<Float>, Int) -> Void) -> Tensor {
        let out = Tensor(uninitializedShape: shape)
        f(data, out.data, count)
        return out
    }

    /// `e^x`, element-wise.
    public func exp() -> Tensor {
        let out = mapped { Vector.exp($0, $1, count: $2) }
        let saved = out.detached()
        return out.recorded("exp", [self]) { g in [g.multipliedElementwise(saved)] }
    }

    /// The natural logarithm, element-wise.
    public func log() -> Tensor {
        let out = mapped { Vector.log($0, $1, count: $2) }
        return out.recorded("log", [self]) { g in
            let dx = Tensor(uninitializedShape: g.shape)
            Vector.zip(g.data, self.data, dx.data, g.count, { $0 / $1 }, { $0 / $1 })
            return [dx]
        }
    }

    /// `max(x, 0)`, element-wise. The gradient at exactly 0 is 0 (as PyTorch).
    public func relu() -> Tensor {
        let zero = Vector.Lanes(repeating: 0)
        let out = mapped { Vector.map($0, $1, $2, { $0.replacing(with: zero, where: $0 .< zero) }, { Swift.max($0, 0) }) }
        let saved = out.detached()
        return out.recorded("relu", [self]) { g in [g.maskedByPositive(saved)] }
    }

    /// `max(a + b, 0)` for two tensors of one shape, in one pass (a residual connection's join).
    public func addingReLU(_ other: Tensor) -> Tensor {
        precondition(shape == other.shape, "addingReLU: \(shape) vs \(other.shape)")
        let out = Tensor(uninitializedShape: shape)
        Vector.zip(data, other.data, out.data, count, { Vector.relu($0 + $1) }, { Swift.max($0 + $1, 0) })
        let saved = out.detached()
        return out.recorded("addingReLU", [self, other]) { g in
            let masked = g.maskedByPositive(saved)
            return [masked, masked]
        }
    }

    /// The square root, element-wise.
    public func sqrt() -> Tensor {
        let out = mapped { Vector.map($0, $1, $2, { $0.squareRoot() }, { $0.squareRoot() }) }
        let saved = out.detached()
        return out.recorded("sqrt", [self]) { g in
            let dx = Tensor(uninitializedShape: g.shape)
            let half = Vector.Lanes(repeating: 0.5)
            Vector.zip(g.data, saved.data, dx.data, g.count, { half * $0 / $1 }, { 0.5 * $0 / $1 })
            return [dx]
        }
    }

    /// `x * x`, element-wise.
    public func squared() -> Tensor {
        let out = mapped { Vector.map($0, $1, $2, { $0 * $0 }, { $0 * $0 }) }
        return out.recorded("square", [self]) { g in
            let dx = Tensor(uninitializedShape: g.shape)
            let two = Vector.Lanes(repeating: 2)
            Vector.zip(g.data, self.data, dx.data, g.count, { two * $0 * $1 }, { 2 * $0 * $1 })
            return [dx]
        }
    }

    /// Same-shape product without recording.
    func multipliedElementwise(_ other: Tensor) -> Tensor {
        precondition(other.count == count)
        let out = Tensor(uninitializedShape: shape)
        Vector.zip(data, other.data, out.data, count, { $0 * $1 }, { $0 * $1 })
        return out
    }

    /// `self` where `mask > 0`, else 0, without recording (ReLU's backward).
    func maskedByPositive(_ mask: Tensor) -> Tensor {
        precondition(mask.count == count)
        let out = Tensor(uninitializedShape: shape)
        let zero = Vector.Lanes(repeating: 0)
        Vector.zip(data, mask.data, out.data, count,
                   { g, m in g.replacing(with: zero, where: m .<= zero) }, { g, m in m > 0 ? g : 0 })
        return out
    }
}
