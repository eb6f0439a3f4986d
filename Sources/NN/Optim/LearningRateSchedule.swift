#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The learning rate as a function of progress (steps or epochs, as the caller counts them).
public protocol LearningRateSchedule: Sendable {
    /// The learning rate to use at step `t` (0-based).
    func learningRate(at t: Int) -> Float
}

/// A fixed learning rate.
public struct ConstantSchedule: LearningRateSchedule {
    public let base: Float
    public init(base: Float) { self.base = base }
    public func learningRate(at t: Int) -> Float { base }
}

/// `base * gamma^k` where `k` counts the milestones at or before `t`, as `torch.optim.lr_scheduler.MultiStepLR`.
public struct MultiStepSchedule: LearningRateSchedule {
    public let base: Float
    public let milestones: [Int]
    public let gamma: Float
    public init(base: Float, milestones: [Int], gamma: Float = 0.1) {
        self.base = base; self.milestones = milestones.sorted(); self.gamma = gamma
    }
    public func learningRate(at t: Int) -> Float {
        let passed = milestones.filter { $0 <= t }.count
        return base * Float(pow(Double(gamma), Double(passed)))
    }
}

/// `minimum + (base - minimum) (1 + cos(pi t / total)) / 2`, the closed form of
/// `torch.optim.lr_scheduler.CosineAnnealingLR` with `T_max = total`.
public struct CosineSchedule: LearningRateSchedule {
    public let base: Float
    public let total: Int
    public let minimum: Float
    public init(base: Float, total: Int, minimum: Float = 0) {
        precondition(total > 0, "cosine schedule needs a positive length")
        self.base = base; self.total = total; self.minimum = minimum
    }
    public func learningRate(at t: Int) -> Float {
        let progress = Double(Swift.min(Swift.max(t, 0), total)) / Double(total)
        return minimum + (base - minimum) * Float((1 + cos(Double.pi * progress)) / 2)
    }
}

/// Linear warm-up in front of another schedule: during the first `steps`, the inner rate is multiplied
/// by a factor rising linearly from `startFactor` at `t = 0` towards 1 (as `torch.optim.lr_scheduler.LinearLR`
/// chained with the inner schedule); afterwards the inner schedule alone.
public struct LinearWarmup: LearningRateSchedule {
    public let inner: any LearningRateSchedule
    public let steps: Int
    public let startFactor: Float
    public init(_ inner: any LearningRateSchedule, steps: Int, startFactor: Float = 0.1) {
        precondition(steps >= 0 && startFactor > 0 && startFactor <= 1, "bad warm-up: \(steps) steps from \(startFactor)")
        self.inner = inner; self.steps = steps; self.startFactor = startFactor
    }
    public func learningRate(at t: Int) -> Float {
        let lr = inner.learningRate(at: t)
        guard t < steps else { return lr }
        return lr * (startFactor + (1 - startFactor) * Float(t) / Float(steps))
    }
}
