import Tensors

/// A network component with named parameters, buffers and child modules.
///
/// Names are exactly PyTorch `state_dict` keys: a module lists its own parameters and buffers (in
/// PyTorch's registration order) and its children under their attribute names, and the full key is the
/// dotted path (`layer1.0.conv1.weight`). Lists are explicit — no reflection — so they are honest and
/// cheap. Modules are not `Sendable`; a network lives on one thread.
open class Module {
    /// Whether the module is in training mode (batch statistics in batch norm).
    public private(set) var isTraining = true

    public init() {}

    /// This module's own parameters with their local names, in registration order.
    open var ownParameters: [(String, Tensor)] { [] }
    /// This module's own buffers (running statistics) with their local names.
    open var ownBuffers: [(String, Tensor)] { [] }
    /// Direct children with their attribute names.
    open var children: [(String, Module)] { [] }
    /// This module's own integer buffers (PyTorch's `num_batches_tracked`), with their local names.
    open var ownCounters: [(String, Counter)] { [] }

    /// Every parameter of the tree, keyed by its full dotted name.
    public func namedParameters() -> [(String, Tensor)] {
        collect(prefix: "") { $0.ownParameters }
    }

    /// Every buffer of the tree, keyed by its full dotted name.
    public func namedBuffers() -> [(String, Tensor)] {
        collect(prefix: "") { $0.ownBuffers }
    }

    /// Every integer buffer of the tree, keyed by its full dotted name.
    public func namedCounters() -> [(String, Counter)] {
        var result = ownCounters
        for (name, child) in children {
            result += child.namedCounters().map { (name + "." + $0.0, $0.1) }
        }
        return result
    }

    /// Parameters and buffers in PyTorch's `state_dict` order: each module's parameters, then its
    /// buffers, then its children's entries.
    public func stateDict() -> [(String, Tensor)] {
        collect(prefix: "") { $0.ownParameters + $0.ownBuffers }
    }

    private func collect(prefix: String, _ own: (Module) -> [(String, Tensor)]) -> [(String, Tensor)] {
        var result = own(self).map { (prefix + $0.0, $0.1) }
        for (name, child) in children {
            result += child.collect(prefix: prefix + name + ".", own)
        }
        return result
    }

    /// Copies values from `entries` into the parameters and buffers of the same names, and `counters`
    /// into the integer buffers.
    ///
    /// - Parameter strict: when `true`, every float key of the module must be present and every entry must
    ///   name a key of the module. Counters may be absent (PyTorch fills in `num_batches_tracked` the same
    ///   way for old state dicts).
    /// - Throws: ``StateDictError`` for a missing or unexpected key, or a shape mismatch; nothing is
    ///   changed when it throws.
    public func loadStateDict(_ entries: [String: Tensor], counters: [String: Int] = [:], strict: Bool = true) throws {
        try checkStateDict(entries, counters: counters, strict: strict)
        let ownCounters = Dictionary(uniqueKeysWithValues: namedCounters())
        for (name, tensor) in stateDict() {
            if let source = entries[name] { tensor.assign(source) }
        }
        for (name, value) in counters { ownCounters[name]?.value = value }
    }

    /// Checks what ``loadStateDict(_:counters:strict:)`` checks, changing nothing: to load several modules
    /// all or none.
    /// - Throws: ``StateDictError`` for a missing or unexpected key, or a shape mismatch.
    public func checkStateDict(_ entries: [String: Tensor], counters: [String: Int] = [:], strict: Bool = true) throws {
        let own = stateDict()
        let ownNames = Set(own.map(\.0))
        let ownCounters = Dictionary(uniqueKeysWithValues: namedCounters())
        if strict {
            let missing = own.map(\.0).filter { entries[$0] == nil }
            if !missing.isEmpty { throw StateDictError.missingKeys(missing) }
            let unexpected = (entries.keys.filter { !ownNames.contains($0) }
                              + counters.keys.filter { ownCounters[$0] == nil }).sorted()
            if !unexpected.isEmpty { throw StateDictError.unexpectedKeys(unexpected) }
        }
        for (name, tensor) in own {
            if let source = entries[name], source.shape != tensor.shape {
                throw StateDictError.shapeMismatch(key: name, expected: tensor.shape, found: source.shape)
            }
        }
    }

    /// Sets training (`true`) or evaluation mode on this module and all its descendants.
    public func train(_ training: Bool = true) {
        isTraining = training
        for (_, child) in children { child.train(training) }
    }

    /// Evaluation mode: running statistics in batch norm.
    public func eval() { train(false) }

    /// Clears the gradients of every parameter.
    public func zeroGrad() {
        for (_, p) in namedParameters() { p.grad = nil }
    }

    /// The total number of parameter elements.
    public var parameterCount: Int { namedParameters().reduce(0) { $0 + $1.1.count } }
}

/// A mutable integer owned by a module (PyTorch's integer buffers, such as `num_batches_tracked`).
public final class Counter {
    public var value: Int
    public init(_ value: Int = 0) { self.value = value }
}

/// A module that maps one tensor to one tensor.
public protocol Layer: Module {
    /// Applies the layer.
    func callAsFunction(_ input: Tensor) -> Tensor
}

/// Why a state dictionary could not be loaded.
public enum StateDictError: Error, Equatable, CustomStringConvertible {
    case missingKeys([String])
    case unexpectedKeys([String])
    case shapeMismatch(key: String, expected: [Int], found: [Int])

    public var description: String {
        switch self {
        case .missingKeys(let keys): "state dict is missing keys: \(keys.joined(separator: ", "))"
        case .unexpectedKeys(let keys): "state dict has unexpected keys: \(keys.joined(separator: ", "))"
        case .shapeMismatch(let key, let expected, let found): "state dict key \(key) has shape \(found), expected \(expected)"
        }
    }

    /// The same error with every key under `prefix` (a module inside a larger dictionary).
    public func prefixed(_ prefix: String) -> StateDictError {
        switch self {
        case .missingKeys(let keys): .missingKeys(keys.map { prefix + $0 })
        case .unexpectedKeys(let keys): .unexpectedKeys(keys.map { prefix + $0 })
        case .shapeMismatch(let key, let expected, let found): .shapeMismatch(key: prefix + key, expected: expected, found: found)
        }
    }
}
