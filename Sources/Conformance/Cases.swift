import Tensors
import NN

/// The runners for each fixture kind of the engine: layers, optimizer, and a whole ResNet step.
enum EngineCases {
    static func compare(_ f: Fixture, _ name: String, _ t: Tensor?) throws -> Comparison {
        guard let t else {
            return Comparison(name, computed: [], shape: [-1], expected: try f.tensor(name))
        }
        return Comparison(name, computed: t.scalars, shape: t.shape, expected: try f.tensor(name))
    }

    /// `conv2d`: forward and backward of a convolution against `y`, `grad_x`, `grad_weight`, `grad_bias`.
    static func conv2d(_ f: Fixture) throws -> [Comparison] {
        let x = try f.tensor("x").tensor, w = try f.tensor("weight").tensor
        let hasBias = try f.flag("bias", default: f.tensors["bias"] != nil)
        let b = hasBias ? try f.tensor("bias").tensor : nil
        let stride = try f.pair("stride"), padding = try f.pair("padding")
        let kernel = try f.pair("kernel")
        guard kernel == (w.shape[2], w.shape[3]) else {
            throw FixtureError.missingParameter(case: f.case, name: "kernel (\(kernel) vs weight \(w.shape))")
        }
        for t in [x, w] + (b.map { [$0] } ?? []) { t.requiresGrad = true }
        let y = x.conv2d(weight: w, bias: b, stride: stride, padding: padding)
        y.backward(try f.tensor("grad_y").tensor)
        var results = [try compare(f, "y", y), try compare(f, "grad_x", x.grad), try compare(f, "grad_weight", w.grad)]
        if let b { results.append(try compare(f, "grad_bias", b.grad)) }
        return results
    }

    /// `batchnorm2d_train`: a training-mode forward and backward, the running statistics, then evaluation.
    static func batchNormTrain(_ f: Fixture) throws -> [Comparison] {
        let channels = try f.tensor("weight").shape[0]
        let bn = BatchNorm2d(featureCount: channels, epsilon: Float(try f.number("eps", default: 1e-5)),
                             momentum: Float(try f.number("momentum", default: 0.1)))
        try bn.loadStateDict([
            "weight": try f.tensor("weight").tensor, "bias": try f.tensor("bias").tensor,
            "running_mean": try f.tensor("running_mean_before").tensor,
            "running_var": try f.tensor("running_var_before").tensor,
        ])
        let x = try f.tensor("x").tensor
        x.requiresGrad = true
        let y = bn(x)
        y.backward(try f.tensor("grad_y").tensor)
        var results = [
            try compare(f, "y", y), try compare(f, "grad_x", x.grad),
            try compare(f, "grad_weight", bn.weight.grad), try compare(f, "grad_bias", bn.bias.grad),
            try compare(f, "running_mean_after", bn.runningMean), try compare(f, "running_var_after", bn.runningVar),
        ]
        bn.eval()
        results.append(try compare(f, "y_eval_after", withNoGrad { bn(x) }))
        return results
    }

    /// `pool_linear_cross_entropy`: global average pooling, a linear layer and mean cross-entropy.
    static func poolLinearCrossEntropy(_ f: Fixture) throws -> [Comparison] {
        let x = try f.tensor("x").tensor, w = try f.tensor("weight").tensor, b = try f.tensor("bias").tensor
        for t in [x, w, b] { t.requiresGrad = true }
        let logits = x.globalAveragePool().linear(weight: w, bias: b)
        let loss = logits.crossEntropy(labels: try f.tensor("labels").integers)
        loss.backward()
        return [try compare(f, "logits", logits), try compare(f, "loss", loss), try compare(f, "grad_x", x.grad),
                try compare(f, "grad_weight", w.grad), try compare(f, "grad_bias", b.grad)]
    }

    /// `sgd_nesterov`: consecutive SGD steps from `param_before` with gradients `grad_i`.
    static func sgd(_ f: Fixture) throws -> [Comparison] {
        let p = try f.tensor("param_before").tensor
        p.requiresGrad = true
        let optimizer = SGD(parameters: [("param", p)], learningRate: Float(try f.number("lr")),
                            momentum: Float(try f.number("momentum", default: 0)),
                            dampening: Float(try f.number("dampening", default: 0)),
                            weightDecay: Float(try f.number("weight_decay", default: 0)),
                            nesterov: try f.flag("nesterov", default: false))
        var results: [Comparison] = []
        var step = 0
        while let g = f.tensors["grad_\(step)"] {
            p.grad = g.tensor
            optimizer.step()
            results.append(try compare(f, "param_after_\(step)", p))
            step += 1
        }
        if results.isEmpty { throw FixtureError.missingTensor(case: f.case, name: "grad_0") }
        return results
    }

    /// `resnet_train_step`: a RepDistiller ResNet from `init.*`; forward, cross-entropy, backward and one
    /// SGD step, compared with `logits`, `feature`, `loss`, `grad.*` and `after.*`.
    static func resnetTrainStep(_ f: Fixture) throws -> [Comparison] {
        let input = try f.tensor("input")
        var generator = SeededGenerator(seed: 0)   // the weights come from the fixture
        let net = ResNet(depth: Int(try f.number("depth")), filters: try f.integers("filters"),
                         inputChannels: input.shape[1], classCount: Int(try f.number("num_classes")),
                         generator: &generator)
        var initial: [String: Tensor] = [:]
        for (name, t) in f.tensors where name.hasPrefix("init.") { initial[String(name.dropFirst(5))] = t.tensor }
        try net.loadStateDict(initial)
        net.train()
        let parameters = net.namedParameters()
        let optimizer = SGD(parameters: parameters, learningRate: Float(try f.number("lr")),
                            momentum: Float(try f.number("momentum", default: 0)),
                            weightDecay: Float(try f.number("weight_decay", default: 0)),
                            nesterov: try f.flag("nesterov", default: false))
        let (feature, logits) = net.forward(input.tensor)
        let loss = logits.crossEntropy(labels: try f.tensor("labels").integers)
        loss.backward()
        var results = [try compare(f, "logits", logits), try compare(f, "feature", feature), try compare(f, "loss", loss)]
        let byName = Dictionary(uniqueKeysWithValues: net.stateDict())
        for name in f.tensors.keys.sorted() where name.hasPrefix("grad.") {
            results.append(try compare(f, name, byName[String(name.dropFirst(5))]?.grad))
        }
        optimizer.step()
        for name in f.tensors.keys.sorted() where name.hasPrefix("after.") {
            results.append(try compare(f, name, byName[String(name.dropFirst(6))]))
        }
        return results
    }
}
