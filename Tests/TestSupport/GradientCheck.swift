import Testing
import Tensors

/// Finite-difference gradient checking: the one helper every op's test uses.
///
/// For a function `f` of some tensors, it projects the output onto a fixed random tensor `R`
/// (`L = sum(f(x) * R)`), takes the analytic gradient of `L` by `backward()`, and compares it, element
/// by element on a sample of positions, with the central difference `(L(x + h) - L(x - h)) / 2h`
/// evaluated in double precision.
public struct GradientCheck {
    public var step: Float = 1e-2
    public var relativeTolerance: Float = 1e-2
    public var absoluteTolerance: Float = 1e-3
    public var samplesPerInput = 40
    public var seed: UInt64 = 7

    public init(step: Float = 1e-2, relativeTolerance: Float = 1e-2, absoluteTolerance: Float = 1e-3,
                samplesPerInput: Int = 40, seed: UInt64 = 7) {
        self.step = step; self.relativeTolerance = relativeTolerance; self.absoluteTolerance = absoluteTolerance
        self.samplesPerInput = samplesPerInput; self.seed = seed
    }

    /// Returns the worst mismatch description, or `nil` when all sampled gradients agree.
    public func run(_ inputs: [Tensor], _ f: ([Tensor]) -> Tensor) -> String? {
        for x in inputs { x.requiresGrad = true; x.grad = nil }
        var generator = SeededGenerator(seed: seed)
        let probe = f(inputs)
        let weights = Tensor.randomNormal(probe.shape, using: &generator)
        let loss = (probe * weights).sum()
        loss.backward()

        func projected() -> Double {
            let out = withNoGrad { f(inputs) }
            let o = out.scalars, w = weights.scalars
            var s = 0.0
            for i in 0..<o.count { s += Double(o[i]) * Double(w[i]) }
            return s
        }

        for (which, x) in inputs.enumerated() {
            guard let analytic = x.grad else { return "input \(which) received no gradient" }
            guard analytic.shape == x.shape else { return "input \(which) gradient shape \(analytic.shape) != \(x.shape)" }
            let scale = analytic.scalars.map(abs).max() ?? 0
            var positions = Array(0..<x.count)
            if positions.count > samplesPerInput {
                positions.shuffle(using: &generator)
                positions = Array(positions.prefix(samplesPerInput))
            }
            for i in positions {
                let saved = x.data[i]
                x.data[i] = saved + step
                let plus = projected()
                x.data[i] = saved - step
                let minus = projected()
                x.data[i] = saved
                let numeric = Float((plus - minus) / Double(2 * step))
                let a = analytic.data[i]
                let bound = absoluteTolerance * Swift.max(1, scale) + relativeTolerance * abs(numeric)
                if abs(numeric - a) > bound {
                    return "input \(which) element \(i): analytic \(a), numeric \(numeric) (bound \(bound))"
                }
            }
        }
        return nil
    }
}

/// A tensor of normal samples.
public func randn(_ shape: [Int], seed: UInt64, std: Float = 1) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor.randomNormal(shape, std: std, using: &g)
}

/// A tensor of uniform samples.
public func uniform(_ shape: [Int], _ low: Float, _ high: Float, seed: UInt64) -> Tensor {
    var g = SeededGenerator(seed: seed)
    return Tensor.randomUniform(shape, low: low, high: high, using: &g)
}

/// Asserts that the gradient check passes.
public func expectGradients(_ inputs: [Tensor], check: GradientCheck = GradientCheck(),
                     sourceLocation: SourceLocation = #_sourceLocation, _ f: @escaping ([Tensor]) -> Tensor) {
    let failure = check.run(inputs, f)
    #expect(failure == nil, "\(failure ?? "")", sourceLocation: sourceLocation)
}

/// Largest absolute difference between two equally long arrays.
public func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count)")
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}
