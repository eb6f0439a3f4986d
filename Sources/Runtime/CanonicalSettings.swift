extension CohortConfiguration {
    /// Every setting that shapes the training, one `key=value` line each, sorted by key: the text the
    /// configuration digest is the SHA-256 of (`docs/protocol.md` specifies it for other implementations).
    ///
    /// Keys are the YAML key paths (peers as `peers.<index>.model`); every value is the effective one,
    /// defaults included; numbers of the float settings print as the shortest decimal that reads back
    /// as the same 32-bit float; absent optional parts (no teacher, no KD) have no lines; an absent
    /// limit prints `none`. The output directory, the data directory, the teacher's checkpoint path, the
    /// network and security settings and `checkpoint_every` are left out: they differ between hosts, or
    /// do not change the training.
    public var canonicalSettings: String {
        var lines: [(String, String)] = [
            ("data.dataset", data.dataSet.rawValue), ("data.train_limit", data.trainLimit.map(String.init) ?? "none"),
            ("data.test_limit", data.testLimit.map(String.init) ?? "none"), ("seed", "\(seed)"), ("epochs", "\(epochs)"),
            ("batch_size", "\(batchSize)"), ("sampler", sampler.rawValue), ("evaluation_batch_size", "\(evaluationBatchSize)"),
            ("optimizer.lr", "\(learningRate)"), ("optimizer.momentum", "\(momentum)"), ("optimizer.weight_decay", "\(weightDecay)"),
            ("optimizer.nesterov", "\(nesterov)"), ("schedule.kind", schedule.rawValue),
            ("schedule.milestones", milestones.map(String.init).joined(separator: ",")), ("schedule.gamma", "\(gamma)"),
            ("schedule.warmup_epochs", "\(warmupEpochs)"), ("mcl.enabled", "\(mcl.enabled)"), ("mcl.tau", "\(mcl.settings.tau)"),
            ("mcl.temperature", "\(mcl.settings.temperature)"), ("mcl.embedding_dim", "\(mcl.embeddingDimension)"),
            ("mcl.weights.vcl", "\(mcl.settings.vcl)"), ("mcl.weights.soft_vcl", "\(mcl.settings.softVCL)"),
            ("mcl.weights.icl", "\(mcl.settings.icl)"), ("mcl.weights.soft_icl", "\(mcl.settings.softICL)"),
            ("mcl.weights.logit", "\(mcl.settings.logitDistillation)"), ("mcl.soft_ramp_epochs", "\(mcl.softRampEpochs)"),
        ]
        if let w = mcl.layerWeights { lines.append(("mcl.layer_weights", w.map { "\($0)" }.joined(separator: ","))) }
        for (i, p) in peers.enumerated() { lines.append(("peers.\(i).model", p.model)) }
        if let t = teacher {
            lines += [("teacher.model", t.model), ("teacher.schedule", t.schedule.rawValue)]
            if let k = t.kd { lines += [("teacher.kd.weight", "\(k.weight)"), ("teacher.kd.temperature", "\(k.temperature)")] }
            if let c = t.crcd {
                lines += [("teacher.crcd.weight", "\(c.weight)"), ("teacher.crcd.gradient_weight", "\(c.gradientWeight)"),
                          ("teacher.crcd.negatives", "\(c.negatives)"), ("teacher.crcd.temperature", "\(c.temperature)"),
                          ("teacher.crcd.momentum", "\(c.momentum)"), ("teacher.crcd.embedding_dim", "\(c.dimension)")]
            }
            if let r = t.rrd {
                lines += [("teacher.rrd.weight", "\(r.weight)"), ("teacher.rrd.memory", r.memory.rawValue), ("teacher.rrd.keys", "\(r.keys)"),
                          ("teacher.rrd.momentum", "\(r.momentum)"), ("teacher.rrd.student_temperature", "\(r.studentTemperature)"),
                          ("teacher.rrd.teacher_temperature", "\(r.teacherTemperature)"), ("teacher.rrd.embedding_dim", "\(r.dimension)")]
            }
        }
        return lines.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)\n" }.joined()
    }
}
