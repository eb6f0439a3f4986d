/// Element-wise binary arithmetic with broadcasting, and arithmetic with scalars.
extension Tensor {
    /// Sums `self` down to `shape` over the broadcast dimensions (the adjoint of broadcasting).
    public func sum(toShape target: [Int]) -> Tensor {
        if target == shape { return self }
        guard let plan = BroadcastPlan(target, shape), plan.outputShape == shape else {
            preconditionFailure("sum(toShape:): \(shape) does not broadcast from \(target)")
        }
        let out = Tensor.zeros(target)
        let x = data, o = out.data
        let n = plan.innerCount, so = plan.innerStrideA
        plan.forEachRun { offX, offO, _ in
            if so == 0 {
                o[offO] += Vector.sum(x + offX, count: n)
            } else {
                Vector.add(x + offX, into: o + offO, count: n)
            }
        }
        return out
    }

    private enum BinaryKind { case add, sub, mul, div }

    private static func binary(_ a: Tensor, _ b: Tensor, _ kind: BinaryKind) -> Tensor {
        guard let plan = BroadcastPlan(a.shape, b.shape) else {
            preconditionFailure("shapes \(a.shape) and \(b.shape) do not broadcast")
        }
        let out = Tensor(uninitializedShape: plan.outputShape)
        let pa = a.data, pb = b.data, po = out.data
        let n = plan.innerCount, sa = plan.innerStrideA, sb = plan.innerStrideB
        plan.forEachRun { o, ia, ib in
            let x = pa + ia, y = pb + ib, z = po + o
            switch (sa, sb) {
            case (1, 1):
                switch kind {
                case .add: Vector.zip(x, y, z, n, { $0 + $1 }, { $0 + $1 })
                case .sub: Vector.zip(x, y, z, n, { $0 - $1 }, { $0 - $1 })
                case .mul: Vector.zip(x, y, z, n, { $0 * $1 }, { $0 * $1 })
                case .div: Vector.zip(x, y, z, n, { $0 / $1 }, { $0 / $1 })
                }
            case (1, 0):
                let s = y[0], v = Vector.Lanes(repeating: s)
                switch kind {
                case .add: Vector.map(x, z, n, { $0 + v }, { $0 + s })
                case .sub: Vector.map(x, z, n, { $0 - v }, { $0 - s })
                case .mul: Vector.map(x, z, n, { $0 * v }, { $0 * s })
                case .div: Vector.map(x, z, n, { $0 / v }, { $0 / s })
                }
            case (0, 1):
                let s = x[0], v = Vector.Lanes(repeating: s)
                switch kind {
                case .add: Vector.map(y, z, n, { v + $0 }, { s + $0 })
                case .sub: Vector.map(y, z, n, { v - $0 }, { s - $0 })
                case .mul: Vector.map(y, z, n, { v * $0 }, { s * $0 })
                case .div: Vector.map(y, z, n, { v / $0 }, { s / $0 })
                }
            default:
                let r: Float
                switch kind {
                case .add: r = x[0] + y[0]
                case .sub: r = x[0] - y[0]
                case .mul: r = x[0] * y[0]
                case .div: r = x[0] / y[0]
                }
                z.update(repeating: r, count: n)
            }
        }
        return out
    }

    /// Element-wise sum with broadcasting.
    public static func + (a: Tensor, b: Tensor) -> Tensor {
        let (needsA, needsB, shapeA, shapeB) = (a.requiresGrad, b.requiresGrad, a.shape, b.shape)
        return binary(a, b, .add).recorded("add", [a, b]) { g in
            [needsA ? g.sum(toShape: shapeA) : nil, needsB ? g.sum(toShape: shapeB) : nil]
        }
    }

    /// Element-wise difference with broadcasting.
    public static func - (a: Tensor, b: Tensor) -> Tensor {
        let (needsA, needsB, shapeA, shapeB) = (a.requiresGrad, b.requiresGrad, a.shape, b.shape)
        return binary(a, b, .sub).recorded("sub", [a, b]) { g in
            [needsA ? g.sum(toShape: shapeA) : nil,
             needsB ? g.sum(toShape: shapeB).scaled(by: -1, shift: 0) : nil]
        }
    }

    /// Element-wise product with broadcasting.
    public static func * (a: Tensor, b: Tensor) -> Tensor {
        // Each operand is kept only when the other one's gradient reads it.
        let (shapeA, shapeB) = (a.shape, b.shape)
        let savedA = b.requiresGrad ? a.detached() : nil, savedB = a.requiresGrad ? b.detached() : nil
        return binary(a, b, .mul).recorded("mul", [a, b]) { g in
            [savedB.map { binary(g, $0, .mul).sum(toShape: shapeA) },
             savedA.map { binary(g, $0, .mul).sum(toShape: shapeB) }]
        }
    }

    /// Element-wise quotient with broadcasting.
    public static func / (a: Tensor, b: Tensor) -> Tensor {
        let out = binary(a, b, .div)
        let (needsA, shapeA, shapeB) = (a.requiresGrad, a.shape, b.shape)
        let savedB = b.detached(), savedOut: Tensor? = b.requiresGrad ? out.detached() : nil
        return out.recorded("div", [a, b]) { g in
            // d/da = g / b;  d/db = -g * a / b^2 = -(g / b) * out
            let gOverB = binary(g, savedB, .div)
            return [needsA ? gOverB.sum(toShape: shapeA) : nil,
                    savedOut.map { binary(gOverB, $0, .mul).sum(toShape: shapeB).scaled(by: -1, shift: 0) }]
        }
    }

    /// `scale * self + shift`, element-wise, without recording (a kernel for other ops' backwards).
    func scaled(by scale: Float, shift: Float) -> Tensor {
        let out = Tensor(uninitializedShape: shape)
        let vs = Vector.Lanes(repeating: scale), vb = Vector.Lanes(repeating: shift)
        Vector.map(data, out.data, count, { $0 * vs + vb }, { $0 * scale + shift })
        return out
    }

    /// `scale * self + shift`, element-wise (the primitive under the scalar operators).
    public func affine(scale: Float, shift: Float) -> Tensor {
        scaled(by: scale, shift: shift).recorded("affine", [self]) { g in [g.scaled(by: scale, shift: 0)] }
    }

    public static func + (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: s) }
    public static func + (s: Float, a: Tensor) -> Tensor { a.affine(scale: 1, shift: s) }
    public static func - (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1, shift: -s) }
    public static func - (s: Float, a: Tensor) -> Tensor { a.affine(scale: -1, shift: s) }
    public static func * (a: Tensor, s: Float) -> Tensor { a.affine(scale: s, shift: 0) }
    public static func * (s: Float, a: Tensor) -> Tensor { a.affine(scale: s, shift: 0) }
    public static func / (a: Tensor, s: Float) -> Tensor { a.affine(scale: 1 / s, shift: 0) }
    public static prefix func - (a: Tensor) -> Tensor { a.affine(scale: -1, shift: 0) }
}
