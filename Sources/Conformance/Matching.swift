/// The fixtures' matching rule: a computed tensor `a` matches the expected `e` when
/// `max_i |a_i - e_i| <= 1e-4 * max(1e-3, max_i |e_i|)`.
public struct Comparison: Sendable {
    /// The tensor compared.
    public let name: String
    /// `max |a - e|`.
    public let error: Double
    /// `1e-4 * max(1e-3, max |e|)`.
    public let bound: Double
    /// Shapes differ (then `error` is infinite).
    public let shapeMismatch: String?

    public var passed: Bool { shapeMismatch == nil && error <= bound }
    /// `error / bound`: below 1 passes.
    public var ratio: Double { bound > 0 ? error / bound : .infinity }

    /// Compares `computed` (with `shape`) against `expected`.
    public init(_ name: String, computed: [Float], shape: [Int], expected: FixtureTensor) {
        self.name = name
        let scale = expected.data.map(abs).max() ?? 0
        bound = 1e-4 * Swift.max(1e-3, scale)
        let sameShape = shape == expected.shape || (shape.reduce(1, *) == 1 && expected.shape.reduce(1, *) == 1)
        guard sameShape, computed.count == expected.data.count else {
            shapeMismatch = "shape \(shape), expected \(expected.shape)"
            error = .infinity
            return
        }
        shapeMismatch = nil
        var worst = 0.0
        for (a, e) in zip(computed, expected.data) {
            let d = abs(Double(a) - e)
            if !(d <= worst) { worst = d }   // also catches NaN
        }
        error = worst
    }
}
