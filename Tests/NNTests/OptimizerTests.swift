import Testing
import Tensors
import TestSupport
@testable import NN

@Suite struct OptimizerTests {
    /// Runs three steps of `optimizer` on one parameter and checks each against `reference`, a direct
    /// transcription of torch.optim.SGD's update in double precision.
    func check(momentum: Float, dampening: Float, weightDecay: Float, nesterov: Bool) {
        let p = Tensor([0.5, -1, 2, 0.25], shape: [4], requiresGrad: true)
        let sgd = SGD(parameters: [("w", p)], learningRate: 0.1, momentum: momentum, dampening: dampening,
                      weightDecay: weightDecay, nesterov: nesterov)
        var param = p.scalars.map(Double.init)
        var buffer: [Double]? = nil
        let grads: [[Float]] = [[1, 2, -1, 0.5], [0.3, -0.2, 0.1, 0], [-1, 1, 1, -1]]
        for g in grads {
            p.grad = Tensor(g, shape: [4])
            sgd.step()
            var d = zip(g, param).map { Double($0) + Double(weightDecay) * $1 }
            if momentum != 0 {
                if let b = buffer {
                    buffer = zip(b, d).map { Double(momentum) * $0 + (1 - Double(dampening)) * $1 }
                } else {
                    buffer = d
                }
                d = nesterov ? zip(d, buffer!).map { $0 + Double(momentum) * $1 } : buffer!
            }
            param = zip(param, d).map { $0 - 0.1 * $1 }
            #expect(maxDifference(p.scalars, param.map(Float.init)) < 1e-6)
        }
    }

    @Test func plainSGD() { check(momentum: 0, dampening: 0, weightDecay: 0, nesterov: false) }
    @Test func weightDecay() { check(momentum: 0, dampening: 0, weightDecay: 5e-4, nesterov: false) }
    @Test func momentum() { check(momentum: 0.9, dampening: 0, weightDecay: 5e-4, nesterov: false) }
    @Test func dampening() { check(momentum: 0.9, dampening: 0.5, weightDecay: 0, nesterov: false) }
    @Test func nesterov() { check(momentum: 0.9, dampening: 0, weightDecay: 5e-4, nesterov: true) }

    @Test func parametersWithoutGradientsAreSkipped() {
        let a = Tensor([1], shape: [1], requiresGrad: true), b = Tensor([1], shape: [1], requiresGrad: true)
        let sgd = SGD(parameters: [("a", a), ("b", b)], learningRate: 1, momentum: 0.9, weightDecay: 0.1)
        a.grad = Tensor([1], shape: [1])
        sgd.step()
        #expect(abs(a.scalars[0] + 0.1) < 1e-6 && b.scalars == [1])
        #expect(sgd.momentumBuffers.keys.sorted() == ["a"])
        sgd.zeroGrad()
        #expect(a.grad == nil)
    }

    @Test func momentumBuffersRoundTrip() throws {
        let a = Tensor([1, 2], shape: [2], requiresGrad: true)
        let sgd = SGD(parameters: [("a", a)], learningRate: 0.1, momentum: 0.9)
        try sgd.loadMomentumBuffers(["a": Tensor([3, 4], shape: [2])])
        #expect(sgd.momentumBuffers["a"]!.scalars == [3, 4])
        #expect(throws: StateDictError.self) { try sgd.loadMomentumBuffers(["b": Tensor([1], shape: [1])]) }
    }
}

@Suite struct ScheduleTests {
    @Test func multiStep() {
        let s = MultiStepSchedule(base: 0.1, milestones: [150, 180, 210], gamma: 0.1)
        #expect(s.learningRate(at: 0) == 0.1)
        #expect(s.learningRate(at: 149) == 0.1)
        #expect(abs(s.learningRate(at: 150) - 0.01) < 1e-9)
        #expect(abs(s.learningRate(at: 209) - 0.001) < 1e-9)
        #expect(abs(s.learningRate(at: 240) - 0.0001) < 1e-9)
    }

    @Test func cosine() {
        let s = CosineSchedule(base: 0.1, total: 100)
        #expect(s.learningRate(at: 0) == 0.1)
        #expect(abs(s.learningRate(at: 50) - 0.05) < 1e-7)
        #expect(abs(s.learningRate(at: 25) - 0.1 * Float((1 + cos(Double.pi / 4)) / 2)) < 1e-7)
        #expect(s.learningRate(at: 100) < 1e-9)
        #expect(abs(CosineSchedule(base: 1, total: 10, minimum: 0.5).learningRate(at: 10) - 0.5) < 1e-7)
    }

    @Test func linearWarmup() {
        let s = LinearWarmup(ConstantSchedule(base: 0.2), steps: 4, startFactor: 0.25)
        #expect(abs(s.learningRate(at: 0) - 0.05) < 1e-7)
        #expect(abs(s.learningRate(at: 2) - 0.2 * 0.625) < 1e-7)
        #expect(s.learningRate(at: 4) == 0.2)
        let cosine = LinearWarmup(CosineSchedule(base: 0.1, total: 10), steps: 2)
        #expect(abs(cosine.learningRate(at: 5) - 0.05) < 1e-7)
    }
}

#if canImport(Glibc)
import Glibc
#endif
