import Tensors
import NN
import Distill

/// The runners for the loss fixture kinds.
enum LossCases {
    static func compare(_ f: Fixture, _ name: String, _ t: Tensor?) throws -> Comparison {
        try EngineCases.compare(f, name, t)
    }

    /// A gradient that never arrived counts as zeros (the reference reports zeros for a parameter the
    /// loss does not reach).
    static func gradientOrZeros(_ t: Tensor) -> Tensor { t.grad ?? Tensor.zeros(t.shape) }

    static func leaves(_ f: Fixture, prefix: String, count: Int) throws -> [Tensor] {
        try (0..<count).map { i in
            let t = try f.tensor("\(prefix)_\(i)").tensor
            t.requiresGrad = true
            return t
        }
    }

    static func settings(_ f: Fixture) throws -> MCL.Settings {
        var s = MCL.Settings()
        s.tau = Float(try f.number("tau", default: 0.07))
        s.temperature = Float(try f.number("kd_T", default: 3))
        s.vcl = Float(try f.number("alpha", default: 0.1))
        s.softVCL = Float(try f.number("gamma", default: 1.0))
        s.icl = Float(try f.number("beta", default: 0.1))
        s.softICL = Float(try f.number("lam", default: 1.0))
        return s
    }

    /// `mcl_supmcl`: the four joint MCL losses on given unit embeddings, each with its gradient with
    /// respect to every embedding.
    static func supMCL(_ f: Fixture) throws -> [Comparison] {
        let count = Int(try f.number("number_net"))
        let labels = try f.tensor("labels").integers
        let s = try settings(f)
        var results: [Comparison] = []
        for term in ["vcl", "soft_vcl", "icl", "soft_icl"] {
            let embeddings = try leaves(f, prefix: "embedding", count: count)
            let terms = MCL.jointTerms(embeddings: embeddings, labels: labels, settings: s)
            let loss = switch term {
            case "vcl": terms.vcl
            case "soft_vcl": terms.softVCL
            case "icl": terms.icl
            default: terms.softICL
            }
            loss.backward()
            results.append(try compare(f, term, loss))
            for (i, e) in embeddings.enumerated() {
                results.append(try compare(f, "grad_\(term)_wrt_embedding_\(i)", gradientOrZeros(e)))
            }
        }
        return results
    }

    /// `mcl_with_heads`: projection heads on features, then the weighted MCL total.
    static func withHeads(_ f: Fixture) throws -> [Comparison] {
        let count = Int(try f.number("number_net"))
        let labels = try f.tensor("labels").integers
        let s = try settings(f)
        let features = try leaves(f, prefix: "feature", count: count)
        var generator = SeededGenerator(seed: 0)   // the weights come from the fixture
        var heads: [ProjectionHead] = []
        for i in 0..<count {
            let w = try f.tensor("head.embed_list.\(i).proj_head.0.weight")
            let head = ProjectionHead(inputCount: w.shape[1], dimension: w.shape[0], generator: &generator)
            var entries: [String: Tensor] = [:]
            for (name, _) in head.stateDict() { entries[name] = try f.tensor("head.embed_list.\(i).\(name)").tensor }
            try head.loadStateDict(entries)
            heads.append(head)
        }
        let embeddings = zip(heads, features).map { $0($1) }
        let terms = MCL.jointTerms(embeddings: embeddings, labels: labels, settings: s)
        let total = terms.weighted(s)
        total.backward()
        var results = [try compare(f, "vcl", terms.vcl), try compare(f, "soft_vcl", terms.softVCL),
                       try compare(f, "icl", terms.icl), try compare(f, "soft_icl", terms.softICL),
                       try compare(f, "total", total)]
        for (i, feature) in features.enumerated() {
            results.append(try compare(f, "grad_total_wrt_feature_\(i)", gradientOrZeros(feature)))
            for (name, p) in heads[i].namedParameters() {
                results.append(try compare(f, "grad_total_wrt_head.embed_list.\(i).\(name)", gradientOrZeros(p)))
            }
        }
        return results
    }

    /// `mcl_logit_ensemble_kd`: each member's KL towards the detached mean of all members' logits.
    static func ensembleKD(_ f: Fixture) throws -> [Comparison] {
        let temperature = Float(try f.number("T", default: 3))
        var count = 0
        while f.tensors["logits_\(count)"] != nil { count += 1 }
        guard count > 0 else { throw FixtureError.missingTensor(case: f.case, name: "logits_0") }
        let logits = try leaves(f, prefix: "logits", count: count)
        let mean = MCL.ensembleMean(logits)
        var results: [Comparison] = []
        for (i, l) in logits.enumerated() {
            let loss = MCL.ensembleDistillation(logits: l, ensembleMean: mean, temperature: temperature)
            loss.backward()
            results.append(try compare(f, "loss_\(i)", loss))
            results.append(try compare(f, "grad_loss_\(i)_wrt_logits_\(i)", gradientOrZeros(l)))
        }
        return results
    }

    /// `rrd_fifo`: consecutive calls of the FIFO-queue RRD loss from `init.*`; loss, gradients and the
    /// queue after each call.
    static func rrdFIFO(_ f: Fixture) throws -> [Comparison] {
        var generator = SeededGenerator(seed: 0)
        let loss = RRDQueueLoss(studentDimension: Int(try f.number("s_dim")), teacherDimension: Int(try f.number("t_dim")),
                                dimension: Int(try f.number("feat_dim")), keys: Int(try f.number("nce_k")),
                                studentTemperature: Float(try f.number("nce_t_s")),
                                teacherTemperature: Float(try f.number("nce_t_t")), generator: &generator)
        var entries: [String: Tensor] = [:]
        for (name, _) in loss.stateDict() { entries[name] = try f.tensor("init." + name).tensor }
        try loss.loadStateDict(entries, counters: ["queue_ptr": try f.tensor("init.queue_ptr").integers[0]])
        var results: [Comparison] = []
        var call = 0
        while f.tensors["call\(call).f_s"] != nil {
            let p = "call\(call)."
            loss.zeroGrad()
            let fs = try f.tensor(p + "f_s").tensor, ft = try f.tensor(p + "f_t").tensor
            fs.requiresGrad = true
            let value = loss(student: fs, teacher: ft)
            value.backward()
            results.append(try compare(f, p + "loss", value))
            results.append(try compare(f, p + "grad_f_s", gradientOrZeros(fs)))
            for (name, parameter) in loss.namedParameters() {
                results.append(try compare(f, p + "grad." + name, gradientOrZeros(parameter)))
            }
            results.append(try compare(f, p + "after.queue", loss.queue))
            results.append(try compare(f, p + "after.queue_ptr", Tensor(scalar: Float(loss.queuePointer.value))))
            call += 1
        }
        guard call > 0 else { throw FixtureError.missingTensor(case: f.case, name: "call0.f_s") }
        return results
    }
}

extension LossCases {
    static func crcd(_ f: Fixture) throws -> CRCDLoss {
        guard case .string("linear")? = f.params["embed_type"] ?? .string("linear") else {
            throw FixtureError.missingParameter(case: f.case, name: "embed_type (only linear is implemented)")
        }
        var generator = SeededGenerator(seed: 0)
        let loss = CRCDLoss(studentDimension: Int(try f.number("s_dim")), teacherDimension: Int(try f.number("t_dim")),
                            dimension: Int(try f.number("feat_dim")), dataCount: Int(try f.number("n_data")),
                            negatives: Int(try f.number("nce_k")), temperature: Float(try f.number("nce_t")),
                            momentum: Float(try f.number("nce_m")), generator: &generator)
        var entries: [String: Tensor] = [:]
        for (name, _) in loss.stateDict() { entries[name] = try f.tensor("init." + name).tensor }
        try loss.loadStateDict(entries)
        return loss
    }

    /// `crcd_feature_relation`: consecutive CRCD calls; loss, gradients, memories and normalisers.
    static func crcdFeature(_ f: Fixture) throws -> [Comparison] {
        let loss = try crcd(f)
        var results: [Comparison] = []
        var call = 0
        while f.tensors["call\(call).f_s"] != nil {
            let p = "call\(call)."
            loss.zeroGrad()
            let fs = try f.tensor(p + "f_s").tensor, ft = try f.tensor(p + "f_t").tensor
            fs.requiresGrad = true; ft.requiresGrad = true
            let value = loss(student: fs, teacher: ft, indices: try f.tensor(p + "idx").integers,
                             contrastIndices: try f.tensor(p + "contrast_idx").integers)
            value.backward()
            results.append(try compare(f, p + "loss", value))
            results.append(try compare(f, p + "grad_f_s", gradientOrZeros(fs)))
            results.append(try compare(f, p + "grad_f_t", gradientOrZeros(ft)))
            for (name, parameter) in loss.namedParameters() {
                results.append(try compare(f, p + "grad." + name, gradientOrZeros(parameter)))
            }
            for (name, buffer) in loss.namedBuffers() where f.tensors[p + "after." + name] != nil {
                results.append(try compare(f, p + "after." + name, buffer))
            }
            call += 1
        }
        guard call > 0 else { throw FixtureError.missingTensor(case: f.case, name: "call0.f_s") }
        return results
    }

    /// `crcd_gradient_relation`: the gradient elements of a student and a teacher classifier, and a
    /// CRCD loss on them, back-propagated to the features and the student's classifier.
    static func crcdGradient(_ f: Fixture) throws -> [Comparison] {
        let loss = try crcd(f)
        let labels = try f.tensor("labels").integers
        let fs = try f.tensor("f_s").tensor, ft = try f.tensor("f_t").tensor
        let ws = try f.tensor("fc_s.weight").tensor, bs = try f.tensor("fc_s.bias").tensor
        let wt = try f.tensor("fc_t.weight").tensor, bt = try f.tensor("fc_t.bias").tensor
        for t in [fs, ft, ws, bs] { t.requiresGrad = true }
        let gs = gradientElement(feature: fs, weight: ws, bias: bs, labels: labels)
        let gt = gradientElement(feature: ft, weight: wt, bias: bt, labels: labels)
        let value = loss(student: gs, teacher: gt, indices: try f.tensor("idx").integers,
                         contrastIndices: try f.tensor("contrast_idx").integers)
        value.backward()
        var results = [try compare(f, "grad_element_s", gs), try compare(f, "grad_element_t", gt),
                       try compare(f, "loss", value), try compare(f, "grad_f_s", gradientOrZeros(fs)),
                       try compare(f, "grad_fc_s.weight", gradientOrZeros(ws)), try compare(f, "grad_fc_s.bias", gradientOrZeros(bs))]
        if f.tensors["grad_f_t"] != nil { results.append(try compare(f, "grad_f_t", gradientOrZeros(ft))) }
        for (name, parameter) in loss.namedParameters() {
            results.append(try compare(f, "grad." + name, gradientOrZeros(parameter)))
        }
        return results
    }
}
