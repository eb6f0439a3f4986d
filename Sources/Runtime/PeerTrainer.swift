import Foundation
import Tensors
import NN
import Data
import Distill
import Training
import Wire

/// What a peer sends the rest of the cohort after its forward pass: its unit embeddings (with MCL; with
/// layer-wise MCL also its auxiliary branches') and its logits for the step's batch. Plain values, so they
/// can cross threads and processes.
public struct PeerOutputs: Sendable {
    public let rank: Int
    public let batchSize: Int
    public let embedding: [Float]?
    public let embeddingDimension: Int
    /// The auxiliary branches' unit embeddings, branch 1 first (layer-wise MCL; empty otherwise).
    public let auxiliaryEmbeddings: [[Float]]
    public let logits: [Float]
    public let classCount: Int

    public init(rank: Int, batchSize: Int, embedding: [Float]?, embeddingDimension: Int, auxiliaryEmbeddings: [[Float]] = [],
                logits: [Float], classCount: Int) {
        self.rank = rank; self.batchSize = batchSize; self.embedding = embedding; self.embeddingDimension = embeddingDimension
        self.auxiliaryEmbeddings = auxiliaryEmbeddings
        self.logits = logits; self.classCount = classCount
    }

    public var embeddingTensor: Tensor? { embedding.map { Tensor($0, shape: [batchSize, embeddingDimension]) } }
    /// The values of `tensor` of ``CohortConfiguration/outputLayout``.
    public func values(of tensor: OutputLayout.Tensor) -> [Float] {
        switch tensor {
        case .logits: logits
        case .embedding: embedding!
        case .auxiliaryEmbedding(let branch): auxiliaryEmbeddings[branch - 1]
        }
    }

    /// Branch `l`'s embedding (`l` from 0), as a `B x d` tensor.
    public func auxiliaryEmbeddingTensor(_ l: Int) -> Tensor { Tensor(auxiliaryEmbeddings[l], shape: [batchSize, embeddingDimension]) }
    public var logitsTensor: Tensor { Tensor(logits, shape: [batchSize, classCount]) }
}

/// What the teacher provides for a step's batch: pooled feature, logits and gradient element.
public struct TeacherOutputs: Sendable {
    public let batchSize: Int
    public let featureCount: Int
    public let classCount: Int
    public let feature: [Float]
    public let logits: [Float]
    public let gradientElement: [Float]

    public init(batchSize: Int, featureCount: Int, classCount: Int, feature: [Float], logits: [Float], gradientElement: [Float]) {
        self.batchSize = batchSize; self.featureCount = featureCount; self.classCount = classCount
        self.feature = feature; self.logits = logits; self.gradientElement = gradientElement
    }

    public var featureTensor: Tensor { Tensor(feature, shape: [batchSize, featureCount]) }
    public var logitsTensor: Tensor { Tensor(logits, shape: [batchSize, classCount]) }
    public var gradientElementTensor: Tensor { Tensor(gradientElement, shape: [batchSize, featureCount]) }
}

/// A peer whose loss or gradients stayed non-finite for several steps in a row.
public struct DivergenceError: Error, CustomStringConvertible {
    public let rank: Int
    public let globalStep: Int
    public let steps: Int
    public var description: String {
        "peer \(rank) diverged: the loss or a gradient was not finite in \(steps) steps in a row (up to step \(globalStep + 1)); lower optimizer.lr or the loss weights"
    }
}

/// The teacher: a trained network in evaluation mode, run without gradients.
public final class TeacherRunner {
    public let model: any Classifier
    public let architecture: Architecture

    /// Loads `checkpoint` (a Cohort checkpoint or a PyTorch state dict in safetensors) into `model`.
    public init(settings: CohortConfiguration.TeacherSettings, dataSet: DataSetKind) throws {
        architecture = Architecture(name: settings.model)!
        model = architecture.make(inputChannels: dataSet.channels, classCount: dataSet.classCount, seed: 0)
        do {
            let file = try SafeTensors.read(settings.checkpoint)
            if let saved = file.metadata["model"], saved != settings.model {
                throw ConfigurationError.badValue(path: "teacher.checkpoint", expected: "a \(settings.model) checkpoint (teacher.model)",
                                                  found: "\(settings.checkpoint), which holds a \(saved) (its metadata says so); set teacher.model: \(saved) or give a \(settings.model) checkpoint")
            }
            try model.load(file)
        } catch let error as ConfigurationError {
            throw error
        } catch {
            throw ConfigurationError.badValue(path: "teacher.checkpoint", expected: "a \(settings.model) checkpoint for \(dataSet.rawValue)",
                                              found: "\(settings.checkpoint): \(error)")
        }
        model.eval()
    }

    public func outputs(for batch: Batch) -> TeacherOutputs {
        withNoGrad {
            let (feature, logits) = model.forward(batch.imageTensor())
            let g = gradientElement(feature: feature, weight: model.classifier.weight, bias: model.classifier.bias,
                                    labels: batch.labels)
            return TeacherOutputs(batchSize: batch.size, featureCount: feature.shape[1], classCount: logits.shape[1],
                                  feature: feature.scalars, logits: logits.scalars, gradientElement: g.scalars)
        }
    }
}

/// One member of a cohort: its network, its MCL projection head, its distillation losses with their
/// memories, and its optimizer. The same unit runs in-process or behind a transport.
///
/// A step has two halves: ``forward(_:)`` runs the network and returns what the others need;
/// ``finish(others:teacher:position:totalSteps:)`` takes the other members' outputs (constants) and the
/// teacher's, forms this peer's loss — the distributed form of MCL, whose gradient equals the joint
/// loss's — and updates the parameters.
public final class PeerTrainer {
    public let rank: Int
    public let architecture: Architecture
    public let model: any Classifier
    public let head: ProjectionHead?
    /// Layer-wise MCL's auxiliary branches (training only; saved with the state, not the weights).
    public let auxiliary: AuxiliaryBranches?
    /// Layer-wise MCL's projection heads on the auxiliary branches' features, branch 1 first.
    public let auxiliaryHeads: [ProjectionHead]
    public let crcdFeature: CRCDLoss?
    public let crcdGradient: CRCDLoss?
    public let rrd: RRDQueueLoss?
    public let rrdMemory: RRDMemoryLoss?
    public let optimizer: SGD
    let configuration: CohortConfiguration
    let schedule: any LearningRateSchedule
    let stepsPerEpoch: Int
    var pending: Pending?

    /// A forward pass awaiting the others' outputs.
    struct Pending {
        let batch: Batch
        let feature: Tensor
        let logits: Tensor
        let embedding: Tensor?
        /// The auxiliary branches' logits and unit embeddings (layer-wise MCL).
        let auxiliaryLogits: [Tensor]
        let auxiliaryEmbeddings: [Tensor]
    }
    /// Why the last step was skipped (nil: it was not).
    public private(set) var lastSkip: StepSkip?
    /// Steps skipped in a row because their loss or gradient was not finite.
    public private(set) var consecutiveSkippedSteps = 0
    /// Skipped steps in a row after which the peer gives up.
    public static let maximumSkippedSteps = 5
    /// Watches for the collapse of the final embedding (first) and of each auxiliary branch's.
    private var collapseWatches: [EmbeddingCollapse.Watch] = []
    /// Warnings raised by the last steps and not yet taken (``takeWarnings()``).
    private var warnings: [String] = []

    /// - Parameters:
    ///   - dataCount: training-set size (rows of the CRCD memories).
    ///   - teacherFeatureCount: the teacher's feature size, when there is a teacher.
    public init(rank: Int, configuration: CohortConfiguration, dataCount: Int, teacherFeatureCount: Int?, stepsPerEpoch: Int) {
        self.rank = rank
        self.configuration = configuration
        self.stepsPerEpoch = stepsPerEpoch
        let kind = configuration.data.dataSet
        architecture = Architecture(name: configuration.peers[rank].model)!
        var initial = RandomStream.generator(seed: configuration.seed, .initialisation, rank)
        model = architecture.make(inputChannels: kind.channels, classCount: kind.classCount, seed: initial.next())
        var generator = RandomStream.generator(seed: configuration.seed, .initialisation, 1000 + rank)
        head = configuration.mclActive ? ProjectionHead(inputCount: model.featureCount, dimension: configuration.mcl.embeddingDimension,
                                          generator: &generator) : nil
        if configuration.layerWiseMCL {
            // A stream of its own, so that turning layer-wise MCL on leaves every other initial weight as it was.
            var auxiliaryGenerator = RandomStream.generator(seed: configuration.seed, .initialisation, 2000 + rank)
            let branches = model.makeAuxiliaryBranches(generator: &auxiliaryGenerator)
            auxiliary = branches
            auxiliaryHeads = (0..<branches.count).map { _ in
                ProjectionHead(inputCount: branches.featureCount, dimension: configuration.mcl.embeddingDimension, generator: &auxiliaryGenerator)
            }
        } else {
            auxiliary = nil; auxiliaryHeads = []
        }
        if head != nil {
            collapseWatches = [EmbeddingCollapse.Watch(name: "peer \(rank)'s embedding")]
                + auxiliaryHeads.indices.map { EmbeddingCollapse.Watch(name: "peer \(rank)'s auxiliary branch \($0 + 1) embedding") }
        }
        let teacher = configuration.teacher
        if let c = teacher?.crcd, let t = teacherFeatureCount {
            crcdFeature = CRCDLoss(studentDimension: model.featureCount, teacherDimension: t, dimension: c.dimension,
                                   dataCount: dataCount, negatives: c.negatives, temperature: c.temperature,
                                   momentum: c.momentum, generator: &generator)
            crcdGradient = c.gradientWeight > 0
                ? CRCDLoss(studentDimension: model.featureCount, teacherDimension: t, dimension: c.dimension, dataCount: dataCount,
                           negatives: c.negatives, temperature: c.temperature, momentum: c.momentum, generator: &generator)
                : nil
        } else {
            crcdFeature = nil; crcdGradient = nil
        }
        let studentFeatures = model.featureCount
        if let r = teacher?.rrd, let t = teacherFeatureCount, r.memory == .fifo {
            rrd = RRDQueueLoss(studentDimension: studentFeatures, teacherDimension: t, dimension: r.dimension, keys: r.keys,
                               studentTemperature: r.studentTemperature, teacherTemperature: r.teacherTemperature,
                               generator: &generator)
        } else {
            rrd = nil
        }
        if let r = teacher?.rrd, let t = teacherFeatureCount, r.memory == .momentum {
            rrdMemory = RRDMemoryLoss(studentDimension: studentFeatures, teacherDimension: t, dimension: r.dimension,
                                      dataCount: dataCount, negatives: r.keys, momentum: r.momentum,
                                      studentTemperature: r.studentTemperature, teacherTemperature: r.teacherTemperature,
                                      generator: &generator)
        } else {
            rrdMemory = nil
        }
        var parameters = model.namedParameters()
        for (prefix, module) in PeerTrainer.lossModules(head: head, auxiliary: auxiliary, auxiliaryHeads: auxiliaryHeads,
                                                        crcdFeature: crcdFeature, crcdGradient: crcdGradient, rrd: rrd ?? rrdMemory) {
            parameters += module.namedParameters().map { (prefix + "." + $0.0, $0.1) }
        }
        optimizer = SGD(parameters: parameters, learningRate: configuration.learningRate, momentum: configuration.momentum,
                        weightDecay: configuration.weightDecay, nesterov: configuration.nesterov)
        schedule = configuration.trainingOptions.learningRateSchedule(stepsPerEpoch: stepsPerEpoch)
    }

    static func lossModules(head: ProjectionHead?, auxiliary: AuxiliaryBranches?, auxiliaryHeads: [ProjectionHead],
                            crcdFeature: CRCDLoss?, crcdGradient: CRCDLoss?, rrd: Module?) -> [(String, Module)] {
        var result: [(String, Module)] = []
        if let auxiliary { result.append(("auxiliary_classifier", auxiliary)) }
        if let head { result.append(("loss.mcl_head", head)) }
        for (l, h) in auxiliaryHeads.enumerated() { result.append(("loss.mcl_head_aux\(l + 1)", h)) }
        if let crcdFeature { result.append(("loss.crcd", crcdFeature)) }
        if let crcdGradient { result.append(("loss.crcd_gradient", crcdGradient)) }
        if let rrd { result.append(("loss.rrd", rrd)) }
        return result
    }

    /// The training-only modules whose state is saved with this peer's checkpoints (besides the network's
    /// weights): the auxiliary branches, projection heads, memories, normalisers and queue.
    public var lossState: [(String, Module)] {
        PeerTrainer.lossModules(head: head, auxiliary: auxiliary, auxiliaryHeads: auxiliaryHeads, crcdFeature: crcdFeature,
                                crcdGradient: crcdGradient, rrd: rrd ?? rrdMemory)
    }

    /// Restores this peer from a checkpoint written with ``lossState``: the network's weights, the SGD
    /// momentum buffers and every loss module's state (projection head, memories, normalisers, queue).
    /// - Throws: ``StateDictError`` or ``SafeTensorsError`` naming what does not fit; on error the peer may
    ///   be partly restored and must not be used.
    public func restore(weights: SafeTensors, state: SafeTensors) throws {
        try model.load(weights)
        var momentum: [String: Tensor] = [:]
        var modules: [String: SafeTensors] = [:]
        let prefixes = lossState.map(\.0)
        for name in state.names {
            if name.hasPrefix("momentum.") {
                momentum[String(name.dropFirst("momentum.".count))] = try state.floats(name)
            } else if let prefix = prefixes.first(where: { name.hasPrefix($0 + ".") }) {
                let entry = state.entry(name)!
                let key = String(name.dropFirst(prefix.count + 1))
                if entry.dtype.isFloat {
                    modules[prefix, default: SafeTensors()].add(key, floats: try state.floats(name))
                } else {
                    modules[prefix, default: SafeTensors()].add(key, integers: try state.integers(name), shape: entry.shape)
                }
            }
        }
        for (prefix, module) in lossState {
            guard let file = modules[prefix] else { throw SafeTensorsError.missing(prefix + ".*") }
            try module.load(file)
        }
        try optimizer.loadMomentumBuffers(momentum)
    }

    /// Runs the network (training mode) on `batch` and returns what the other members need.
    public func forward(_ batch: Batch) -> PeerOutputs {
        model.train()
        let feature: Tensor, logits: Tensor
        var auxiliaryLogits: [Tensor] = [], auxiliaryEmbeddings: [Tensor] = []
        if let auxiliary {
            auxiliary.train()
            let (stages, f, l) = model.forwardWithStages(batch.imageTensor())
            (feature, logits) = (f, l)
            for (h, branch) in zip(auxiliaryHeads, auxiliary(stages)) {
                auxiliaryLogits.append(branch.logits)
                auxiliaryEmbeddings.append(h(branch.feature))
            }
        } else {
            (feature, logits) = model.forward(batch.imageTensor())
        }
        let embedding = head.map { $0(feature) }
        pending = Pending(batch: batch, feature: feature, logits: logits, embedding: embedding, auxiliaryLogits: auxiliaryLogits,
                          auxiliaryEmbeddings: auxiliaryEmbeddings)
        return PeerOutputs(rank: rank, batchSize: batch.size, embedding: embedding?.scalars,
                           embeddingDimension: configuration.mcl.embeddingDimension,
                           auxiliaryEmbeddings: auxiliaryEmbeddings.map(\.scalars), logits: logits.scalars,
                           classCount: logits.shape[1])
    }

    /// This peer's loss for the pending forward pass: cross-entropy (of the auxiliary classifiers too),
    /// the distributed form of (layer-wise) MCL against the others' outputs, and the teacher's losses.
    /// Returns the total in the graph and every term (unweighted, plus layer-wise MCL's weighted sums).
    func loss(_ pass: Pending, others: [PeerOutputs], teacher: TeacherOutputs?, position: TrainingPosition,
              totalSteps: Int) -> (total: Tensor, terms: [String: Double]) {
        let (batch, feature, logits, embedding) = (pass.batch, pass.feature, pass.logits, pass.embedding)
        var terms: [String: Double] = [:]
        let ce = logits.crossEntropy(labels: batch.labels)
        terms["ce"] = Double(ce.item)
        var total = ce
        for (l, auxiliaryLogits) in pass.auxiliaryLogits.enumerated() {
            let value = auxiliaryLogits.crossEntropy(labels: batch.labels)
            terms["ce_aux\(l + 1)"] = Double(value.item)
            total = total + value
        }
        var mcl = configuration.mcl.settings
        let ramp = configuration.mcl.softRampFactor(step: position.globalStep, stepsPerEpoch: stepsPerEpoch)
        mcl.softVCL *= ramp; mcl.softICL *= ramp
        if let embedding, !others.isEmpty {
            let received = others.compactMap(\.embeddingTensor)
            let t = MCL.peerTerms(own: embedding, others: received, labels: batch.labels, settings: mcl)
            terms["vcl"] = Double(t.vcl.item); terms["soft_vcl"] = Double(t.softVCL.item)
            terms["icl"] = Double(t.icl.item); terms["soft_icl"] = Double(t.softICL.item)
            var weighted = t.weighted(mcl)
            if let w = configuration.mcl.layerWeights { weighted = weighted * w[w.count - 1] }
            total = total + weighted
            // Layer-wise MCL: the same terms between the same auxiliary branch of every pair of peers.
            for (l, own) in pass.auxiliaryEmbeddings.enumerated() {
                let layer = MCL.peerTerms(own: own, others: others.map { $0.auxiliaryEmbeddingTensor(l) }, labels: batch.labels,
                                          settings: mcl).weighted(mcl)
                terms["mcl_aux\(l + 1)"] = Double(layer.item)
                total = total + layer * configuration.mcl.layerWeights![l]
            }
            if mcl.logitDistillation > 0 {
                let mean = MCL.ensembleMean([logits.detached()] + others.map(\.logitsTensor))
                let kd = MCL.ensembleDistillation(logits: logits, ensembleMean: mean, temperature: mcl.temperature)
                terms["logit_kd"] = Double(kd.item)
                total = total + kd * mcl.logitDistillation
            }
        }
        if let teacher, let settings = configuration.teacher {
            let lambda = settings.schedule.weight(step: position.globalStep, total: totalSteps)
            terms["distillation_weight"] = Double(lambda)
            if let kd = settings.kd {
                let value = knowledgeDistillation(student: logits, teacher: teacher.logitsTensor, temperature: kd.temperature)
                terms["kd"] = Double(value.item)
                total = total + value * (lambda * kd.weight)
            }
            if crcdFeature != nil || crcdGradient != nil, let c = settings.crcd {
                var g = RandomStream.generator(seed: configuration.seed, .contrast, position.epoch, position.stepInEpoch, rank)
                if let crcd = crcdFeature {
                    let value = crcd(student: feature, teacher: teacher.featureTensor, indices: batch.indices,
                                     contrastIndices: crcd.contrastIndices(for: batch.indices, using: &g))
                    terms["crcd"] = Double(value.item)
                    total = total + value * (lambda * c.weight)
                }
                if let crcd = crcdGradient {
                    let gs = gradientElement(feature: feature, weight: model.classifier.weight, bias: model.classifier.bias,
                                             labels: batch.labels)
                    let value = crcd(student: gs, teacher: teacher.gradientElementTensor, indices: batch.indices,
                                     contrastIndices: crcd.contrastIndices(for: batch.indices, using: &g))
                    terms["crcd_gradient"] = Double(value.item)
                    total = total + value * (lambda * c.gradientWeight)
                }
            }
            if let r = settings.rrd {
                var value: Tensor?
                if let rrd { value = rrd(student: feature, teacher: teacher.featureTensor) }
                if let rrdMemory {
                    var g = RandomStream.generator(seed: configuration.seed, .contrast, position.epoch, position.stepInEpoch, 1000 + rank)
                    value = rrdMemory(student: feature, teacher: teacher.featureTensor, indices: batch.indices,
                                      contrastIndices: rrdMemory.contrastIndices(for: batch.indices, using: &g))
                }
                if let value {
                    terms["rrd"] = Double(value.item)
                    total = total + value * (lambda * r.weight)
                }
            }
        }
        return (total, terms)
    }

    /// Completes the step begun by ``forward(_:)``: forms the loss from the other members' and the
    /// teacher's outputs, back-propagates and updates. Returns every loss term (unweighted) and the total.
    /// A step whose loss or gradient is not finite is skipped (and reported as `skipped` in the terms);
    /// ``maximumSkippedSteps`` in a row throw ``DivergenceError``.
    public func finish(others: [PeerOutputs], teacher: TeacherOutputs?, position: TrainingPosition,
                       totalSteps: Int) throws(DivergenceError) -> [String: Double] {
        guard let pass = pending else { preconditionFailure("finish() without forward()") }
        pending = nil
        var (total, terms) = loss(pass, others: others, teacher: teacher, position: position, totalSteps: totalSteps)
        let logits = pass.logits, batch = pass.batch
        terms["total"] = Double(total.item)
        optimizer.learningRate = schedule.learningRate(at: position.globalStep)
        optimizer.zeroGrad()
        lastSkip = nil
        if !total.item.isFinite {
            lastSkip = .lossNotFinite
        } else {
            total.backward()
            if !optimizer.gradientsAreFinite { lastSkip = .gradientNotFinite }
        }
        if lastSkip == nil {
            optimizer.step()
            consecutiveSkippedSteps = 0
        } else {
            // A non-finite loss or gradient: skip the update (weights and momentum untouched), report it.
            optimizer.zeroGrad()
            consecutiveSkippedSteps += 1
            terms[StepSkip.term] = 1
            if consecutiveSkippedSteps >= Self.maximumSkippedSteps {
                throw DivergenceError(rank: rank, globalStep: position.globalStep, steps: consecutiveSkippedSteps)
            }
        }
        terms["accuracy"] = Double(topKCorrect(logits: logits, labels: batch.labels).top1) / Double(batch.size)
        terms["lr"] = Double(optimizer.learningRate)
        recordCollapse(pass, into: &terms)
        return terms
    }

    /// The mean pairwise cosine of the step's embeddings (`embedding_cosine`, and `embedding_cosine_aux<l>`
    /// for layer-wise MCL's branches), and a warning once an embedding has collapsed.
    private func recordCollapse(_ pass: Pending, into terms: inout [String: Double]) {
        guard let embedding = pass.embedding, pass.batch.size >= 2 else { return }
        let d = configuration.mcl.embeddingDimension
        for (index, (name, e)) in ([("embedding_cosine", embedding)]
            + pass.auxiliaryEmbeddings.enumerated().map { ("embedding_cosine_aux\($0.offset + 1)", $0.element) }).enumerated() {
            let cosine = EmbeddingCollapse.meanPairwiseCosine(e.scalars, rows: pass.batch.size, dimension: d)
            terms[name] = cosine
            if let warning = collapseWatches[index].observe(cosine) { warnings.append(warning) }
        }
    }

    /// The warnings raised since the last call (an embedding's collapse), oldest first.
    public func takeWarnings() -> [String] {
        defer { warnings = [] }
        return warnings
    }
}

/// Why a step was skipped: its update would have written non-finite numbers into the weights.
public enum StepSkip: String, Sendable {
    case lossNotFinite = "the loss was not finite"
    case gradientNotFinite = "a gradient was not finite"

    /// The term a skipped step's record carries (value 1).
    public static let term = "skipped"
}

// MARK: Codistillation

/// Another peer's weights as it last published them (codistillation).
public struct PeerWeights: Sendable {
    public let rank: Int
    /// The steps the weights have trained.
    public let globalStep: Int
    public let tensors: [TensorPayload]

    public init(rank: Int, globalStep: Int, tensors: [TensorPayload]) { self.rank = rank; self.globalStep = globalStep; self.tensors = tensors }
}

extension PeerTrainer {
    /// The modules the other peers need to compute this peer's outputs: the network, its auxiliary
    /// branches and its MCL projection heads (not the optimizer's momentum or the teacher's losses).
    var publishedModules: [(String, Module)] {
        var modules: [(String, Module)] = [("model", model)]
        if let auxiliary { modules.append(("auxiliary_classifier", auxiliary)) }
        if let head { modules.append(("loss.mcl_head", head)) }
        for (l, h) in auxiliaryHeads.enumerated() { modules.append(("loss.mcl_head_aux\(l + 1)", h)) }
        return modules
    }

    /// This peer's network, branches and heads (parameters and running statistics) as named tensors,
    /// for the other peers' copies.
    public func publishedWeights() -> [TensorPayload] {
        publishedModules.flatMap { prefix, module in
            module.stateDict().map { TensorPayload(name: prefix + "." + $0.0, shape: $0.1.shape, values: $0.1.scalars) }
        }
    }

    /// Loads another peer's ``publishedWeights()`` into this trainer (a copy of that peer).
    /// - Throws: ``StateDictError`` naming a missing, unexpected or misshapen tensor; nothing is changed then.
    public func loadPublished(_ tensors: [TensorPayload]) throws {
        var byModule: [String: [String: Tensor]] = [:]
        let prefixes = publishedModules.map(\.0)
        for t in tensors {
            guard let prefix = prefixes.first(where: { t.name.hasPrefix($0 + ".") }) else { throw StateDictError.unexpectedKeys([t.name]) }
            byModule[prefix, default: [:]][String(t.name.dropFirst(prefix.count + 1))] = Tensor(t.values, shape: t.shape)
        }
        // Check every module before changing any; errors name the published keys.
        for (prefix, module) in publishedModules {
            do { try module.checkStateDict(byModule[prefix] ?? [:]) } catch let error as StateDictError {
                throw error.prefixed(prefix + ".")
            }
        }
        for (prefix, module) in publishedModules { try module.loadStateDict(byModule[prefix]!) }
    }

    /// The outputs of this trainer's network on `batch` as a copy of another peer: training mode (batch
    /// statistics, as that peer computes its own), no gradient, nothing kept for a backward pass.
    public func copyOutputs(_ batch: Batch) -> PeerOutputs {
        defer { pending = nil }
        return withNoGrad { forward(batch) }
    }
}
