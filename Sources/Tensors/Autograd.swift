/// Reverse-mode automatic differentiation, define-by-run.
///
/// Each differentiable op makes its output, and — when gradients are enabled and an input requires
/// them — attaches a ``Node`` holding, per input, where that input's gradient goes (the input's own node,
/// or the input itself when it is a leaf) and a closure that maps the output's gradient to one gradient per
/// input. ``Tensor/backward(_:)`` orders the nodes reachable from the root topologically (an explicit
/// stack, no recursion), seeds the root with ones, runs the closures in reverse order and adds the results
/// into the inputs' gradients. The graph is freed as it is consumed.
///
/// The graph holds no interior tensor: what an op's backward pass reads, its closure captures, and nothing
/// else is kept. An input the backward pass does not read (the operands of a sum, a residual branch) is
/// freed as soon as the forward pass is done with it. A closure that reads the op's own output captures
/// it ``detached()`` (the values without the node), never the output itself: the output owns the node
/// that owns the closure, and a graph that is never back-propagated must still be freed.

/// One recorded op: where its inputs' gradients go and how to compute them.
final class Node {
    /// Per input, in the order `backward` returns their gradients.
    var edges: [Edge]
    /// Per input, its shape (a gradient must have it).
    let inputShapes: [[Int]]
    /// Maps the output gradient to one gradient per input (`nil` where an input needs none).
    var backward: ((Tensor) -> [Tensor?])?
    let name: String

    init(name: String, inputs: [Tensor], backward: @escaping (Tensor) -> [Tensor?]) {
        self.name = name
        edges = inputs.map(Edge.init)
        inputShapes = inputs.map(\.shape)
        self.backward = backward
    }
}

/// Where one input's gradient goes.
enum Edge {
    /// The input needs no gradient.
    case none
    /// A leaf (a parameter, or a tensor the caller marked): its ``Tensor/grad`` accumulates the gradient.
    case leaf(Tensor)
    /// An op's output: the gradient joins the others bound for that op's node.
    case interior(Node)

    init(_ input: Tensor) {
        if let node = input.node { self = .interior(node) } else if input.requiresGrad { self = .leaf(input) } else { self = .none }
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
    /// The node keeps no input tensor: the closure captures what it reads, and only that (a flag or a
    /// shape rather than a tensor when that is all it needs), so that inputs it does not read are freed
    /// after the forward pass. A closure that reads the op's own output captures `detached()` of it: the
    /// output owns the node that owns the closure, and a strong capture of the output itself would keep a
    /// graph that is never back-propagated alive.
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
        guard let root = node else { Tensor.accumulateLeaf(self, rootGrad); return }

        // Topological order of the nodes, by an iterative depth-first search.
        var order: [Node] = []
        var visited = Set<ObjectIdentifier>()
        var stack: [(Node, Bool)] = [(root, false)]
        while let (node, expanded) = stack.popLast() {
            if expanded { order.append(node); continue }
            let id = ObjectIdentifier(node)
            guard !visited.contains(id) else { continue }
            visited.insert(id)
            stack.append((node, true))
            for case .interior(let input) in node.edges where !visited.contains(ObjectIdentifier(input)) {
                stack.append((input, false))
            }
        }

        // Pending gradients of interior nodes' outputs. One marked exclusive (a sum allocated here, or a buffer
        // an op returned as its own) is added into in place.
        var pending: [ObjectIdentifier: Tensor] = [ObjectIdentifier(root): rootGrad]
        for node in order.reversed() {
            let id = ObjectIdentifier(node)
            guard let gradient = pending.removeValue(forKey: id) else { continue }
            guard let backward = node.backward else {
                preconditionFailure("backward(): a gradient reached \(node.name), whose graph was already back-propagated and freed")
            }
            // The closure may return its gradient (or a view of it) for several inputs.
            gradient.isExclusiveGradient = false
            let inputGrads = withNoGrad { backward(gradient) }
            precondition(inputGrads.count == node.edges.count,
                         "\(node.name) backward returned \(inputGrads.count) gradients for \(node.edges.count) inputs")
            for (index, g) in inputGrads.enumerated() {
                guard let g else { continue }
                precondition(g.shape == node.inputShapes[index],
                             "\(node.name) backward: gradient shape \(g.shape) != input shape \(node.inputShapes[index])")
                switch node.edges[index] {
                case .none:
                    continue
                case .leaf(let leaf):
                    Tensor.accumulateLeaf(leaf, g)
                case .interior(let input):
                    let key = ObjectIdentifier(input)
                    if let existing = pending[key] {
                        // Into a buffer nothing else reads when there is one (the sum is the same either way
                        // round), else into a new one.
                        if existing.isExclusiveGradient {
                            existing.addInPlace(g)
                        } else if g.isExclusiveGradient {
                            g.addInPlace(existing)
                            pending[key] = g
                        } else {
                            let sum = existing.sumForAccumulation(g)
                            sum.isExclusiveGradient = true
                            pending[key] = sum
                        }
                    } else {
                        pending[key] = g
                    }
                }
            }
            // Free the tape as it is consumed: the closure's saved tensors and the edges.
            node.backward = nil
            node.edges = []
        }
    }

    private static func accumulateLeaf(_ leaf: Tensor, _ g: Tensor) {
        if let existing = leaf.grad {
            existing.addInPlace(g)
        } else if g.isExclusiveGradient {
            g.isExclusiveGradient = false
            leaf.grad = g
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
