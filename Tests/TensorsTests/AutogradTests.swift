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

    /// A gradient sent into a part of a graph that was already back-propagated (and freed) stops the
    /// program with a message, instead of vanishing.
    @Test func aGradientIntoAFreedGraphStops() async {
        await #expect(processExitsWith: .failure) {
            let x = Tensor([1, 2], shape: [2], requiresGrad: true)
            let hidden = x * 2
            hidden.sum().backward()
            hidden.sum().backward()
        }
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

    /// A graph that is never back-propagated frees every storage it made, also those its backward closures
    /// saved (the ops that read their own output, the residual join).
    @Test func unusedGraphsFreeTheirStorage() {
        let x = randn([4, 3, 5, 5], seed: 1)
        x.requiresGrad = true
        let trace = MemoryTrace()
        MemoryTrace.$current.withValue(trace) {
            let w = Tensor(repeating: 1, shape: [3], requiresGrad: true), b = Tensor.zeros([3], requiresGrad: true)
            let normalized = x.batchNormAddingReLU(x.relu(), weight: w, bias: b, runningMean: Tensor.zeros([3]),
                                                   runningVariance: Tensor(repeating: 1, shape: [3]), training: true)
            let rows = normalized.reshaped([4, 75])
            _ = (rows.softmax().exp().sqrt() / rows.exp().normalizedRows()).logSoftmax().sum()
        }
        #expect(trace.liveBytes == 0)
    }

    /// The graph keeps what the backward passes read and nothing else: a sum's operands are freed once the
    /// forward pass is done with them, a product's are kept (each is the other's gradient).
    @Test func theGraphKeepsOnlyWhatBackwardPassesRead() {
        let x = randn([64, 64], seed: 2)
        x.requiresGrad = true
        let bytes = x.count * MemoryLayout<Float>.stride
        for (op, kept) in [("sum", 1), ("product", 3)] {
            let trace = MemoryTrace()
            let y = MemoryTrace.$current.withValue(trace) {
                op == "sum" ? x.squared() + x.squared() : x.squared() * x.squared()
            }
            #expect(trace.liveBytes == kept * bytes, "\(op): \(trace.liveBytes / bytes) tensors kept")
            y.backward(Tensor(repeating: 1, shape: y.shape))
            // d/dx of 2 x^2 is 4x; of x^4, 4x^3.
            let expected = x.scalars.map { op == "sum" ? 4 * $0 : 4 * $0 * $0 * $0 }
            #expect(maxDifference(x.grad!.scalars, expected) <= 1e-4 * (expected.map(abs).max() ?? 1))
            x.zeroGrad()
        }
    }

    /// A matrix product keeps a factor only when the other factor needs a gradient (each factor's gradient
    /// reads only the other), and a row copy keeps neither input (its gradients read only the output's).
    @Test func productsAndRowCopiesKeepOnlyTheFactorsTheirGradientsRead() {
        let w = randn([64, 64], seed: 3)
        w.requiresGrad = true
        let bytes = w.count * MemoryLayout<Float>.stride
        // x (made inside the trace, no gradient) times w: dW reads x, nothing reads w. Kept: x squared and the
        // output.
        let trace = MemoryTrace()
        let y = MemoryTrace.$current.withValue(trace) { randn([64, 64], seed: 4).squared().matmul(w.squared()) }
        #expect(trace.liveBytes == 2 * bytes, "\(trace.liveBytes / bytes) tensors kept")
        y.backward(Tensor(repeating: 1, shape: y.shape))
        #expect(w.grad != nil)
        w.zeroGrad()
        let copyTrace = MemoryTrace()
        let z = MemoryTrace.$current.withValue(copyTrace) {
            w.squared().indexCopy(rows: [1, 3], from: w.squared().indexSelect(rows: [0, 2]))
        }
        #expect(copyTrace.liveBytes == bytes, "\(copyTrace.liveBytes / bytes) tensors kept")
        z.backward(Tensor(repeating: 1, shape: z.shape))
        // Rows 1 and 3 of w^2 are replaced by rows 0 and 2: their gradient is zero, rows 0 and 2 get twice 2w.
        let expected = (0..<64).flatMap { r in (0..<64).map { c -> Float in
            let v = w.scalars[r * 64 + c]
            return r == 1 || r == 3 ? 0 : (r == 0 || r == 2 ? 4 * v : 2 * v)
        } }
        #expect(maxDifference(w.grad!.scalars, expected) <= 1e-5)
    }
}
