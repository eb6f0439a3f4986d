import Tensors

extension Module {
    /// The module's state dict as a safetensors file: float parameters and buffers as `F32`, integer
    /// buffers (`num_batches_tracked`) as 0-d `I64` — the keys and types of PyTorch's `state_dict()`, so
    /// `model.load_state_dict(safetensors.torch.load_file(path))` reads it.
    public func safeTensors(metadata: [String: String] = [:]) -> SafeTensors {
        var file = SafeTensors(metadata: metadata)
        var counters = Dictionary(uniqueKeysWithValues: namedCounters())
        // PyTorch's order: within a module, parameters, buffers, then num_batches_tracked.
        for (name, tensor) in stateDict() {
            file.add(name, floats: tensor)
            if name.hasSuffix(".running_var") || name == "running_var" {
                let key = String(name.dropLast("running_var".count)) + "num_batches_tracked"
                if let counter = counters.removeValue(forKey: key) { file.add(key, integers: [counter.value], shape: []) }
            }
        }
        for (name, counter) in counters { file.add(name, integers: [counter.value], shape: []) }
        return file
    }

    /// Loads parameters, buffers and counters from a safetensors state dict (strict, as
    /// ``loadStateDict(_:counters:strict:)``).
    /// - Throws: ``StateDictError`` or ``SafeTensorsError``; nothing changes when it throws.
    public func load(_ file: SafeTensors, strict: Bool = true) throws {
        let counterNames = Set(namedCounters().map(\.0))
        var floats: [String: Tensor] = [:], counters: [String: Int] = [:]
        for name in file.names {
            let entry = file.entry(name)!
            if counterNames.contains(name) || !entry.dtype.isFloat {
                let values = try file.integers(name)
                guard values.count == 1 else {
                    throw StateDictError.shapeMismatch(key: name, expected: [], found: entry.shape)
                }
                counters[name] = values[0]
            } else {
                floats[name] = try file.floats(name)
            }
        }
        try loadStateDict(floats, counters: counters, strict: strict)
    }
}
