import Testing
@testable import Tensors
import TestSupport

@Suite struct AutogradTests {
    @Test func gradientsAccumulateOverUses() {
        let x = Tensor([1, 2, 3], shape: [3], requiresGrad: true)
        let y = (x * x + x).sum()   // dy/dx = 2x + 1
        y.backward()
        #expect(x.grad!.scalars == [3, 5, 7])
    }

    @Test func leafGradientsAccumulateAcrossBackwardCalls() {
        let x = Tensor([1, 2], shape: [2], requiresGrad: true)
        (x * 3).sum().backward()
        (x * 2).sum().backward()
        #expect(x.grad!.scalars == [5, 5])
        x.zeroGrad()
        #expect(x.grad == nil)
    }

    @Test func noGradRecordsNothing() {
        let x = Tensor([1, 2], shape: [2], requiresGrad: true)
        let y = withNoGrad { x * 2 }
        #expect(!y.requiresGrad)
        #expect(GradMode.isEnabled)
        #expect(!withNoGrad { GradMode.isEnabled })
    }

    @Test func detachStopsTheGradient() {
        let x = Tensor([1, 2], shape: [2], requiresGrad: true)
        let y = (x * x.detached()).sum()   // gradient flows through the first factor only: d/dx = x
        y.backward()
        #expect(x.grad!.scalars == [1, 2])
    }

    @Test func sharedSubexpressionWithAliasedGradients() {
        // `a + a` returns the same gradient tensor for both inputs; accumulation must not corrupt it.
        let x = Tensor([1, 2], shape: [2], requiresGrad: true)
        let a = x * 1
        let b = a + a
        let c = (b + a).sum()  // d/dx = 3
        c.backward()
        #expect(x.grad!.scalars == [3, 3])
    }

    @Test func deepChainHasNoRecursionLimit() {
        let x = Tensor([1], shape: [1], requiresGrad: true)
        var y = x
        for _ in 0..<20_000 { y = y + 0 }
        y.sum().backward()
        #expect(x.grad!.scalars == [1])
    }

    @Test func backwardWithSeed() {
        let x = Tensor([1, 2], shape: [2], requiresGrad: true)
        (x * 3).backward(Tensor([1, -1], shape: [2]))
        #expect(x.grad!.scalars == [3, -3])
    }
}

@Suite struct GraphLifetimeTests {
    /// A graph that is built but never back-propagated is freed with its output.
    @Test func unusedGraphsAreFreed() {
        weak var weakOutput: Tensor?
        weak var weakIntermediate: Tensor?
        do {
            let x = Tensor([1, 2, 3, 4], shape: [2, 2], requiresGrad: true)
            let hidden = x.softmax()
            let out = hidden.relu().exp().normalizedRows().logSoftmax().sqrt()
            weakIntermediate = hidden
            weakOutput = out
            #expect(weakOutput != nil)
        }
        #expect(weakOutput == nil && weakIntermediate == nil)
    }
}
