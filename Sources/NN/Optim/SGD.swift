import Tensors

/// Stochastic gradient descent with momentum, Nesterov momentum and weight decay, with exactly
/// `torch.optim.SGD`'s semantics:
///
///     d = grad + weightDecay * p
///     buf = d                                  (first step)
///     buf = momentum * buf + (1 - dampening) d (later steps)
///     d = nesterov ? d + momentum * buf : buf  (when momentum != 0)
///     p -= learningRate * d
///
/// Parameters without a gradient are skipped, as in PyTorch. Momentum buffers are keyed by parameter
/// name, the same keys as the model's state dict.
public final class SGD {
    public var learningRate: Float
    public let momentum: Float
    public let dampening: Float
    public let weightDecay: Float
    public let nesterov: Bool
    /// The parameters being optimised, with their state-dict names.
    public let parameters: [(String, Tensor)]
    /// Momentum buffers by parameter name (absent until a parameter's first step).
    public private(set) var momentumBuffers: [String: Tensor] = [:]

    public init(parameters: [(String, Tensor)], learningRate: Float, momentum: Float = 0, dampening: Float = 0,
                weightDecay: Float = 0, nesterov: Bool = false) {
        precondition(!nesterov || (momentum > 0 && dampening == 0), "Nesterov momentum requires momentum > 0 and zero dampening")
        self.parameters = parameters
        self.learningRate = learningRate
        self.momentum = momentum
        self.dampening = dampening
        self.weightDecay = weightDecay
        self.nesterov = nesterov
    }

    /// Applies one update to every parameter that has a gradient.
    public func step() {
        for (name, p) in parameters {
            guard let g = p.grad else { continue }
            precondition(g.shape == p.shape, "gradient of \(name) has shape \(g.shape), parameter \(p.shape)")
            let buffer: Tensor?
            let first: Bool
            if momentum != 0 {
                if let existing = momentumBuffers[name] { buffer = existing; first = false } else {
                    let b = Tensor(uninitializedShape: p.shape)
                    momentumBuffers[name] = b
                    buffer = b; first = true
                }
            } else {
                buffer = nil; first = false
            }
            TrainingKernels.sgdUpdate(p, gradient: g, momentumBuffer: buffer, first: first, learningRate: learningRate, weightDecay: weightDecay,
                                      momentum: momentum, dampening: dampening, nesterov: nesterov)
        }
    }

    /// Whether every gradient is finite (no NaN or infinity): checked before a step, so a diverged batch
    /// cannot poison the weights or the momentum.
    public var gradientsAreFinite: Bool {
        for (_, p) in parameters {
            guard let g = p.grad else { continue }
            if !TrainingKernels.isFinite(g) { return false }
        }
        return true
    }

    /// Clears every parameter's gradient.
    public func zeroGrad() {
        for (_, p) in parameters { p.grad = nil }
    }

    /// Replaces the momentum buffers (when resuming); names must be parameters of this optimizer.
    public func loadMomentumBuffers(_ buffers: [String: Tensor]) throws {
        let shapes = Dictionary(uniqueKeysWithValues: parameters.map { ($0.0, $0.1.shape) })
        for (name, b) in buffers {
            guard let shape = shapes[name] else { throw StateDictError.unexpectedKeys([name]) }
            guard shape == b.shape else { throw StateDictError.shapeMismatch(key: name, expected: shape, found: b.shape) }
        }
        momentumBuffers = buffers.mapValues { $0.copy() }
    }
}
