/// Reverse-mode automatic differentiation, define-by-run.
///
/// Each differentiable op makes its output, and — when gradients are enabled and an input requires
/// them — attaches a ``Node`` holding the inputs and a closure that maps the output's gradient to one
/// gradient per input. ``Tensor/backward(_:)`` orders the nodes reachable from the root topologically
/// (an explicit stack, no recursion), seeds the root with ones, runs the closures in reverse order and
/// adds the results into the inputs' gradients. The graph is freed as it is consumed.

/// One recorded op: its inputs and how to send a gradient back to them.
final class Node {
    var inputs: [Tensor]
    /// Maps the output gradient to one gradient per input (`nil` where an input needs none).
    var backward: ((Tensor) -> [Tensor?])?
    let name: String

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        self.inputs = inputs
        self.backward = backward
    }
}

/// Whether ops record themselves for differentiation on the current task or thread.
public enum GradMode {
    @TaskLocal static var enabled = true

    /// `true` unless inside ``withNoGrad(_:)``.
    public static var isEnabled: Bool { enabled }
}

/// Runs `body` without recording ops: results have no gradient history. Used for evaluation, the
/// teacher's forward pass and optimizer updates.
public func withNoGrad<R>(_ body: () throws -> R) rethrows -> R {
    try GradMode.$enabled.withValue(false, operation: body)
}

extension Tensor {
    /// Records `self` as the result of an op on `inputs` when any input requires a gradient. This is how
    /// an op is added, here or in another module (a loss with a hand-written backward, say).
    ///
    /// A backward closure that needs the op's own output captures it `unowned`: the output owns the node
    /// that owns the closure, and a strong capture would keep a graph that is never back-propagated alive.
    ///
    /// - Parameters:
    ///   - name: the op's name, for error messages.
    ///   - inputs: the op's tensor inputs, in the order `backward` returns their gradients.
    ///   - backward: maps this tensor's gradient to the inputs' gradients (same shapes as the inputs).
    /// - Returns: `self`, for chaining.
    @discardableResult
    public func recorded(_ name: String, _ inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) -> Tensor {
        guard GradMode.enabled, inputs.contains(where: { $0.requiresGrad }) else { return self }
        requiresGrad = true
        node = Node(name: name, inputs: inputs, backward: backward)
        return self
    }

    /// Computes the gradient of this tensor with respect to every leaf that requires one, adding it into
    /// each leaf's ``grad``.
    ///
    /// - Parameter seed: the gradient of some scalar with respect to `self`; ones when `nil` (the usual
    ///   case of a scalar loss).
    public func backward(_ seed: Tensor? = nil) {
        precondition(requiresGrad, "backward() on a tensor that does not require a gradient")
        let rootGrad = seed ?? Tensor(repeating: 1, shape: shape)
        precondition(rootGrad.shape == shape, "backward seed shape \(rootGrad.shape) != \(shape)")

        // Topological order of the tensors with nodes, by an iterative depth-first search.
        var order: [Tensor] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Tensor, Bool)] = [(self, false)]
        while let (tensor, expanded) = stack.popLast() {
            if expanded { order.append(tensor); continue }
            let id = ObjectIdentifier(tensor)
            guard tensor.node != nil, !visited.contains(id) else { continue }
            visited.insert(id)
            stack.append((tensor, true))
            for input in tensor.node!.inputs where input.node != nil && !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }

        // Pending gradients of interior tensors; `owned` marks buffers we allocated and may add into.
        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(self): rootGrad]
        var owned = Set<ObjectIdentifier>()
        if node == nil { accumulateLeaf(self, rootGrad); return }

        for tensor in order.reversed() {
            let id = ObjectIdentifier(tensor)
            guard let node = tensor.node, let backward = node.backward else { continue }
            guard let gradient = pending.removeValue(forKey: id) else { continue }
            owned.remove(id)
            let inputGrads = withNoGrad { backward(gradient) }
            precondition(inputGrads.count == node.inputs.count,
                         "\(node.name) backward returned \(inputGrads.count) gradients for \(node.inputs.count) inputs")
            for (input, g) in zip(node.inputs, inputGrads) {
                guard let g, input.requiresGrad else { continue }
                precondition(g.shape == input.shape,
                             "\(node.name) backward: gradient shape \(g.shape) != input shape \(input.shape)")
                if input.node == nil {
                    accumulateLeaf(input, g)
                } else {
                    let key = ObjectIdentifier(input)
                    if let existing = pending[key] {
                        if owned.contains(key) {
                            existing.addInPlace(g)
                        } else {
                            pending[key] = existing.sumForAccumulation(g)
                            owned.insert(key)
                        }
                    } else {
                        pending[key] = g
                    }
                }
            }
            // Free the tape as it is consumed.
            node.backward = nil
            node.inputs = []
            tensor.node = nil
        }
    }

    private func accumulateLeaf(_ leaf: Tensor, _ g: Tensor) {
        if let existing = leaf.grad {
            existing.addInPlace(g)
        } else {
            leaf.grad = g.copy()
        }
    }

    /// `self + other` into a new tensor, outside the graph (gradient accumulation), in one pass: the same
    /// sums as a copy followed by ``addInPlace(_:)``, one read and one write of the tensor fewer.
    fileprivate func sumForAccumulation(_ other: Tensor) -> Tensor {
        precondition(other.count == count, "sumForAccumulation: \(other.shape) into \(shape)")
        let out = Tensor(uninitializedShape: shape)
        Vector.zip(data, other.data, out.data, count, { $0 + $1 }, { $0 + $1 })
        return out
    }

    /// Adds `other` (same element count) into `self`, outside the graph.
    public func addInPlace(_ other: Tensor) {
        precondition(other.count == count, "addInPlace: \(other.shape) into \(shape)")
        Vector.add(other.data, into: data, count: count)
    }

    /// Sets ``grad`` to `nil`.
    public func zeroGrad() { grad = nil }
}
