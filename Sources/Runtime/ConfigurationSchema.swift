import Foundation
import NN
import Data
import Distill
import Training

/// One key of a configuration file: where it sits, what it accepts, its default, what it means, whether it
/// enters the configuration digest, and how it is read from YAML and shown back. ``ConfigurationSchema``
/// lists every key once; parsing, validation, the defaults shown by `cohort config check`, the canonical
/// settings text (the digest) and the key reference (`cohort config reference`, `docs/configuration.md`)
/// are all produced from that list.
public struct ConfigurationKey: Sendable {
    /// What a key's value is.
    public enum Kind: Sendable {
        case integer(ClosedRange<Int>)
        case number(minimum: Float?, maximum: Float?)
        case boolean
        case name([String])
        case path
        case endpoint
        case integers(ClosedRange<Int>)
        case numbers(count: Int?, minimum: Float)
        case paths
        /// A mapping of the keys below this one (present or absent as a whole).
        case section
        /// A list of mappings (`peers`).
        case mappings
    }

    /// Whether the key enters the configuration digest.
    public enum Digest: Sendable, Equatable {
        case yes
        case no
        /// With its section present (a teacher's loss: present = on).
        case withSection
        /// One line per list item (`peers.<index>.model`).
        case perItem
        /// Only with `codistillation` (each peer then decides on its own what the coordinator awaits).
        case withCodistillation
        /// A section: its keys say.
        case ofKeys
    }

    /// Which files have the key.
    public enum Scope: Sendable, Equatable {
        /// A cohort's file and a single network's (`cohort train --config`).
        case every
        case cohort
        case singleNetwork
    }

    public let path: String
    public let kind: Kind
    /// The default as the reference shows it ("0.1", "absent (off)", "required").
    public let defaultText: String
    /// What the key does, one line.
    public let doc: String
    public let digest: Digest
    public let scope: Scope
    /// A constraint beyond the kind (another key's value), for the reference.
    public let note: String?
    /// When the key must be present (in its section): what is expected, for the error.
    public let required: String?
    /// Reads the key's node into the configuration (nil: read by its parent, e.g. `peers[].model`).
    let read: (@Sendable (ConfigurationNode, inout CohortConfiguration) throws -> Void)?
    /// The effective value as text (nil: absent), for the canonical settings and `config check`.
    let value: (@Sendable (CohortConfiguration) -> String?)?

    /// The key's parent section ("" at the top).
    var section: String {
        guard let dot = path.lastIndex(of: ".") else { return "" }
        return String(path[..<dot])
    }

    /// The key's own name within its section.
    var name: String { String(path.split(separator: ".").last ?? "") }

    func applies(to singleNetwork: Bool) -> Bool {
        switch scope {
        case .every: true
        case .cohort: !singleNetwork
        case .singleNetwork: singleNetwork
        }
    }

    /// The type column of the reference.
    var typeText: String {
        switch kind {
        case .integer: "integer"
        case .number: "number"
        case .boolean: "boolean"
        case .name: "name"
        case .path: "path"
        case .endpoint: "endpoint"
        case .integers: "list of integers"
        case .numbers(let count, _): count.map { "list of \($0) numbers" } ?? "list of numbers"
        case .paths: "list of paths"
        case .section: "mapping"
        case .mappings: "list of mappings"
        }
    }

    /// The allowed column of the reference: from the kind, then the note.
    var allowedText: String {
        var parts: [String] = []
        switch kind {
        case .integer(let range), .integers(let range): parts.append(Self.describe(range) + (kind.isList ? " each" : ""))
        case .number(let minimum, let maximum):
            switch (minimum, maximum) {
            case let (lo?, hi?): parts.append("\(Self.number(lo)) ... \(Self.number(hi))")
            case let (lo?, nil): parts.append("≥ \(Self.number(lo))")
            case let (nil, hi?): parts.append("≤ \(Self.number(hi))")
            case (nil, nil): break
            }
        case .numbers(_, let minimum): parts.append("each ≥ \(Self.number(minimum))")
        case .name(let names): parts.append(names.map { "`\($0)`" }.joined(separator: ", "))
        case .endpoint: parts.append("`tcp://HOST:PORT` (PORT `*`: any free port) or `ipc://PATH`")
        case .boolean, .path, .paths, .section, .mappings: break
        }
        if let note { parts.append(note) }
        return parts.joined(separator: "; ")
    }

    var digestText: String {
        switch digest {
        case .yes: "yes"
        case .no: "no"
        case .withSection: "yes, with `\(section)`"
        case .perItem: "yes, one line per item"
        case .withCodistillation: "with `codistillation`"
        case .ofKeys: "its keys"
        }
    }

    static func describe(_ range: ClosedRange<Int>) -> String {
        range.upperBound == Int.max ? "≥ \(range.lowerBound)" : "\(PhaseProgress.count(range.lowerBound)) ... \(PhaseProgress.count(range.upperBound))"
    }

    /// `0`, `0.999`, `1e-6`: the shortest form a reader expects.
    static func number(_ x: Float) -> String {
        if x == x.rounded(), abs(x) < 1e6 { return String(Int(x)) }
        return "\(x)".replacingOccurrences(of: "e-0", with: "e-")
    }
}

extension ConfigurationKey.Kind {
    var isList: Bool {
        switch self {
        case .integers, .numbers, .paths, .mappings: true
        default: false
        }
    }
}

/// Every key of a configuration file, in the order of the reference.
public enum ConfigurationSchema {
    typealias Key = ConfigurationKey
    typealias Config = CohortConfiguration

    // MARK: Constructors, one per kind

    static func integer(_ path: String, _ range: ClosedRange<Int>, _ defaultText: String, _ doc: String, digest: Key.Digest = .yes,
                        scope: Key.Scope = .every, note: String? = nil,
                        get: @escaping @Sendable (Config) -> Int?, set: @escaping @Sendable (inout Config, Int) -> Void) -> Key {
        Key(path: path, kind: .integer(range), defaultText: defaultText, doc: doc, digest: digest, scope: scope, note: note, required: nil,
            read: { node, c in set(&c, try node.int(range)) }, value: { get($0).map(String.init) })
    }

    static func number(_ path: String, minimum: Float? = nil, maximum: Float? = nil, _ defaultText: String, _ doc: String,
                       digest: Key.Digest = .yes, scope: Key.Scope = .every, note: String? = nil,
                       get: @escaping @Sendable (Config) -> Float?, set: @escaping @Sendable (inout Config, Float) -> Void) -> Key {
        Key(path: path, kind: .number(minimum: minimum, maximum: maximum), defaultText: defaultText, doc: doc, digest: digest, scope: scope,
            note: note, required: nil, read: { node, c in set(&c, try node.float(minimum: minimum, maximum: maximum)) },
            value: { get($0).map { "\($0)" } })
    }

    static func seconds(_ path: String, minimum: Float, _ defaultText: String, _ doc: String, note: String? = nil,
                        get: @escaping @Sendable (Config.NetworkSettings) -> Double,
                        set: @escaping @Sendable (inout Config.NetworkSettings, Double) -> Void) -> Key {
        number(path, minimum: minimum, defaultText, doc, digest: .no, scope: .cohort, note: note,
               get: { Float(get($0.network)) }, set: { set(&$0.network, Double($1)) })
    }

    static func boolean(_ path: String, _ defaultText: String, _ doc: String, scope: Key.Scope = .every, note: String? = nil,
                        get: @escaping @Sendable (Config) -> Bool?, set: @escaping @Sendable (inout Config, Bool) -> Void) -> Key {
        Key(path: path, kind: .boolean, defaultText: defaultText, doc: doc, digest: .yes, scope: scope, note: note, required: nil,
            read: { node, c in set(&c, try node.bool()) }, value: { get($0).map { "\($0)" } })
    }

    static func name(_ path: String, _ names: [String], _ defaultText: String, _ doc: String, digest: Key.Digest = .yes,
                     scope: Key.Scope = .every, get: @escaping @Sendable (Config) -> String?, set: @escaping @Sendable (inout Config, String) -> Void) -> Key {
        Key(path: path, kind: .name(names), defaultText: defaultText, doc: doc, digest: digest, scope: scope, note: nil, required: nil,
            read: { node, c in set(&c, try node.choice(names)) }, value: get)
    }

    static func section(_ path: String, _ defaultText: String, _ doc: String, scope: Key.Scope = .every, note: String? = nil,
                        open: (@Sendable (inout Config) -> Void)? = nil) -> Key {
        Key(path: path, kind: .section, defaultText: defaultText, doc: doc, digest: .ofKeys, scope: scope, note: note, required: nil,
            read: open.map { open in { @Sendable _, c in open(&c) } }, value: nil)
    }

    /// A network's name (any case, `-` for `_`), checked against the architectures with a suggestion.
    static func architecture(_ node: ConfigurationNode) throws -> String {
        let name = try node.string()
        guard Architecture(name: name) != nil else {
            throw ConfigurationError.badValue(path: node.path, expected: "one of \(Architecture.allNames)",
                                              found: "\"\(name)\"\(suggestion(for: name, among: Architecture.allCases.map(\.rawValue)))")
        }
        return name
    }

    static let architectures = Architecture.allCases.map(\.rawValue)

    // MARK: The keys

    /// Every key, in the reference's order.
    public static let keys: [ConfigurationKey] = [
        // The model of a single network's file (`cohort train --config`).
        Key(path: "model", kind: .name(architectures), defaultText: "required", doc: "the network to train (any case, `-` for `_`)",
            digest: .yes, scope: .singleNetwork, note: nil, required: Architecture.allNames,
            read: { node, c in c.peers = [.init(model: try architecture(node))] }, value: { $0.peers.first?.model }),
        section("data", "", "the data set"),
        Key(path: "data.dataset", kind: .name(DataSetKind.allCases.map(\.rawValue)), defaultText: "`fashion-mnist`",
            doc: "the data set (any case, `_` for `-`; also `fashionmnist`, `cifar-10`, `cifar-100`); enters the digest as its canonical name",
            digest: .yes, scope: .every, note: nil, required: nil,
            read: { node, c in
                let name = try node.string()
                do { c.data.dataSet = try DataSetKind(name: name) } catch {
                    throw ConfigurationError.badValue(path: node.path, expected: "one of \(DataSetKind.allCases.map(\.rawValue).joined(separator: ", "))",
                                                      found: "\"\(name)\"")
                }
            }, value: { $0.data.dataSet.rawValue }),
        Key(path: "data.directory", kind: .path, defaultText: "`/usr/share/datasets/fashion-mnist` for `fashion-mnist`; required for the others",
            doc: "the data set's files", digest: .no, scope: .every, note: nil, required: nil,
            read: { node, c in c.data.directory = try node.string() }, value: { $0.data.directory }),
        Key(path: "data.train_limit", kind: .integer(2...Int.max), defaultText: "all", doc: "train on the first N training images",
            digest: .yes, scope: .every, note: "at most the split's size (checked when the data is loaded)", required: nil,
            read: { node, c in c.data.trainLimit = try node.int(2...Int.max) }, value: { $0.data.trainLimit.map(String.init) ?? "none" }),
        Key(path: "data.test_limit", kind: .integer(1...Int.max), defaultText: "all", doc: "evaluate on the first N test images",
            digest: .yes, scope: .every, note: "at most the split's size (likewise)", required: nil,
            read: { node, c in c.data.testLimit = try node.int(1...Int.max) }, value: { $0.data.testLimit.map(String.init) ?? "none" }),
        integer("seed", 0...Int.max, "0", "every random choice (initial weights, batches, augmentation) derives from it",
                get: { Int($0.seed) }, set: { $0.seed = UInt64($1) }),
        integer("epochs", 1...100_000, "3", "passes over the training set", get: { $0.epochs }, set: { $0.epochs = $1 }),
        integer("batch_size", 2...65_536, "128", "images per step, the same batch for every peer", get: { $0.batchSize }, set: { $0.batchSize = $1 }),
        name("sampler", TrainingOptions.SamplerKind.allCases.map(\.rawValue), "`m-per-class`",
             "how batches are drawn: each class at least twice per batch (MCL's; drops the remainder), or a plain shuffle",
             get: { $0.sampler.rawValue }, set: { $0.sampler = TrainingOptions.SamplerKind(rawValue: $1)! }),
        section("optimizer", "", "SGD, for every peer's network, heads and loss projections"),
        number("optimizer.lr", minimum: 1e-12, "0.1", "the initial learning rate", get: { $0.learningRate }, set: { $0.learningRate = $1 }),
        number("optimizer.momentum", minimum: 0, maximum: 0.999, "0.9", "SGD momentum", get: { $0.momentum }, set: { $0.momentum = $1 }),
        number("optimizer.weight_decay", minimum: 0, "5e-4", "L2 weight decay", get: { $0.weightDecay }, set: { $0.weightDecay = $1 }),
        boolean("optimizer.nesterov", "`true`", "Nesterov momentum", note: "`false` when `optimizer.momentum` is 0",
                get: { $0.nesterov }, set: { $0.nesterov = $1 }),
        section("schedule", "", "the learning rate per step"),
        name("schedule.kind", TrainingOptions.ScheduleKind.allCases.map(\.rawValue), "`cosine`", "the learning rate's shape over the steps",
             get: { $0.schedule.rawValue }, set: { $0.schedule = TrainingOptions.ScheduleKind(rawValue: $1)! }),
        Key(path: "schedule.milestones", kind: .integers(1...Int.max), defaultText: "none", doc: "epochs at which a multistep schedule multiplies the rate by `gamma`",
            digest: .yes, scope: .every, note: "required, not empty, with `multistep`", required: nil,
            read: { node, c in c.milestones = try node.list().map { try $0.int(1...Int.max) } },
            value: { $0.milestones.map(String.init).joined(separator: ",") }),
        number("schedule.gamma", minimum: 1e-12, "0.1", "a multistep schedule's factor", get: { $0.gamma }, set: { $0.gamma = $1 }),
        integer("schedule.warmup_epochs", 0...Int.max, "0", "linear warm-up from 10% of the rate", note: "fewer than `epochs`",
                get: { $0.warmupEpochs }, set: { $0.warmupEpochs = $1 }),
        Key(path: "peers", kind: .mappings, defaultText: "required", doc: "the cohort's networks, one per peer, in rank order",
            digest: .ofKeys, scope: .cohort, note: "at least one; each has exactly the key `model`", required: "a list of peers, each with a model",
            read: { node, c in
                for item in try node.list() {
                    let m = try item.mapping(allowed: ["model"])
                    guard let model = m["model"] else { throw ConfigurationError.missing(path: item.path + ".model", expected: Architecture.allNames) }
                    c.peers.append(.init(model: try architecture(model)))
                }
                guard !c.peers.isEmpty else { throw ConfigurationError.badValue(path: "peers", expected: "at least one peer", found: "an empty list") }
            }, value: nil),
        Key(path: "peers[].model", kind: .name(architectures), defaultText: "required", doc: "a peer's network (any case, `-` for `_`); enters the digest as written",
            digest: .perItem, scope: .cohort, note: nil, required: nil, read: nil, value: nil),
        section("mcl", "", "Mutual Contrastive Learning between the peers (with two or more)", scope: .cohort),
        boolean("mcl.enabled", "`true`", "MCL on or off", scope: .cohort, get: { $0.mcl.enabled }, set: { $0.mcl.enabled = $1 }),
        number("mcl.tau", minimum: 1e-6, "0.07", "the contrastive similarity temperature", scope: .cohort,
               get: { $0.mcl.settings.tau }, set: { $0.mcl.settings.tau = $1 }),
        number("mcl.temperature", minimum: 1e-6, "3", "the soft losses' and logit distillation's temperature T", scope: .cohort,
               get: { $0.mcl.settings.temperature }, set: { $0.mcl.settings.temperature = $1 }),
        integer("mcl.embedding_dim", 1...65_536, "128", "the projection heads' output", scope: .cohort,
                get: { $0.mcl.embeddingDimension }, set: { $0.mcl.embeddingDimension = $1 }),
        section("mcl.weights", "", "the MCL terms' weights (the paper's CIFAR weights by default)", scope: .cohort),
        number("mcl.weights.vcl", minimum: 0, "0.1", "vanilla contrastive learning between peers", scope: .cohort,
               get: { $0.mcl.settings.vcl }, set: { $0.mcl.settings.vcl = $1 }),
        number("mcl.weights.soft_vcl", minimum: 0, "1.0", "soft VCL (similarity distributions matched)", scope: .cohort,
               get: { $0.mcl.settings.softVCL }, set: { $0.mcl.settings.softVCL = $1 }),
        number("mcl.weights.icl", minimum: 0, "0.1", "interactive contrastive learning", scope: .cohort,
               get: { $0.mcl.settings.icl }, set: { $0.mcl.settings.icl = $1 }),
        number("mcl.weights.soft_icl", minimum: 0, "1.0", "soft ICL", scope: .cohort,
               get: { $0.mcl.settings.softICL }, set: { $0.mcl.settings.softICL = $1 }),
        number("mcl.weights.logit", minimum: 0, "1.0", "KL towards the ensemble mean of the logits (0: off)", scope: .cohort,
               get: { $0.mcl.settings.logitDistillation }, set: { $0.mcl.settings.logitDistillation = $1 }),
        Key(path: "mcl.layer_weights", kind: .numbers(count: CohortConfiguration.MCLSettings.layerCount, minimum: 0), defaultText: "absent (no branches)",
            doc: "layer-wise MCL: auxiliary branches after stages 1 and 2, and the MCL weights at branch 1, branch 2, the final embedding",
            digest: .yes, scope: .cohort, note: nil, required: nil,
            read: { node, c in
                let ws = try node.list().map { try $0.float(minimum: 0) }
                guard ws.count == CohortConfiguration.MCLSettings.layerCount else {
                    throw ConfigurationError.badValue(path: node.path, expected: "\(CohortConfiguration.MCLSettings.layerCount) weights (auxiliary branch after stage 1, after stage 2, final embedding)",
                                                      found: "\(ws.count)")
                }
                c.mcl.layerWeights = ws
            }, value: { $0.mcl.layerWeights.map { $0.map { "\($0)" }.joined(separator: ",") } }),
        number("mcl.soft_ramp_epochs", minimum: 0, "0 (off)", "epochs over which the soft terms' weights ramp up from 0 (keeps embeddings from collapsing)",
               scope: .cohort, get: { $0.mcl.softRampEpochs }, set: { $0.mcl.softRampEpochs = $1 }),
        section("teacher", "absent (no teacher)", "a trained network guiding every peer", scope: .cohort,
                open: { $0.teacher = .init(model: "", checkpoint: "") }),
        Key(path: "teacher.model", kind: .name(architectures), defaultText: "required with `teacher`", doc: "the teacher's network; enters the digest as written",
            digest: .yes, scope: .cohort, note: nil, required: Architecture.allNames,
            read: { node, c in c.teacher!.model = try architecture(node) }, value: { $0.teacher?.model }),
        Key(path: "teacher.checkpoint", kind: .path, defaultText: "required with `teacher`",
            doc: "its weights: cohort train's checkpoint, or a PyTorch state dict in safetensors", digest: .no, scope: .cohort, note: nil,
            required: "a safetensors file, e.g. from cohort train",
            read: { node, c in c.teacher!.checkpoint = try node.string() }, value: { $0.teacher?.checkpoint }),
        name("teacher.schedule", DistillationWeightSchedule.allCases.map(\.rawValue), "`mimic`",
             "the weight of every teacher term over training: 1 then 0 for the last 1/25 of steps (mimic), constant, or linear decay",
             scope: .cohort, get: { $0.teacher?.schedule.rawValue }, set: { $0.teacher!.schedule = DistillationWeightSchedule(rawValue: $1)! }),
        section("teacher.kd", "absent (off)", "Hinton's KD on the logits (present: on; `{}`: every default)", scope: .cohort,
                open: { $0.teacher!.kd = .init() }),
        number("teacher.kd.weight", minimum: 0, "0.9", "KD's weight", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.kd?.weight }, set: { $0.teacher!.kd!.weight = $1 }),
        number("teacher.kd.temperature", minimum: 1e-6, "4", "KD's temperature", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.kd?.temperature }, set: { $0.teacher!.kd!.temperature = $1 }),
        section("teacher.crcd", "absent (off)", "CRCD on features and gradient elements (present: on; `{}`: every default)", scope: .cohort,
                open: { $0.teacher!.crcd = .init() }),
        number("teacher.crcd.weight", minimum: 0, "1.0", "CRCD on the features", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.crcd?.weight }, set: { $0.teacher!.crcd!.weight = $1 }),
        number("teacher.crcd.gradient_weight", minimum: 0, "1.0", "CRCD on the gradient elements (0: off)", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.crcd?.gradientWeight }, set: { $0.teacher!.crcd!.gradientWeight = $1 }),
        integer("teacher.crcd.negatives", 1...1_000_000, "500", "negatives drawn per sample", digest: .withSection, scope: .cohort,
                get: { $0.teacher?.crcd?.negatives }, set: { $0.teacher!.crcd!.negatives = $1 }),
        number("teacher.crcd.temperature", minimum: 1e-6, "0.05", "the contrast temperature", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.crcd?.temperature }, set: { $0.teacher!.crcd!.temperature = $1 }),
        number("teacher.crcd.momentum", minimum: 0, maximum: 1, "0.5", "the memory's momentum", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.crcd?.momentum }, set: { $0.teacher!.crcd!.momentum = $1 }),
        integer("teacher.crcd.embedding_dim", 1...65_536, "128", "the relation embeddings' size", digest: .withSection, scope: .cohort,
                get: { $0.teacher?.crcd?.dimension }, set: { $0.teacher!.crcd!.dimension = $1 }),
        section("teacher.rrd", "absent (off)", "RRD, relational representation distillation (present: on; `{}`: every default)", scope: .cohort,
                open: { $0.teacher!.rrd = .init() }),
        number("teacher.rrd.weight", minimum: 0, "1.0", "RRD's weight", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.rrd?.weight }, set: { $0.teacher!.rrd!.weight = $1 }),
        name("teacher.rrd.memory", CohortConfiguration.RRDSettings.MemoryKind.allCases.map(\.rawValue), "`fifo`",
             "a FIFO queue of teacher keys, or CRD's per-sample momentum memory", digest: .withSection, scope: .cohort,
             get: { $0.teacher?.rrd?.memory.rawValue }, set: { $0.teacher!.rrd!.memory = .init(rawValue: $1)! }),
        integer("teacher.rrd.keys", 1...10_000_000, "16384", "queue length (fifo) or negatives per sample (momentum)", digest: .withSection,
                scope: .cohort, note: "with `fifo` a multiple of `batch_size`",
                get: { $0.teacher?.rrd?.keys }, set: { $0.teacher!.rrd!.keys = $1 }),
        number("teacher.rrd.momentum", minimum: 0, maximum: 1, "0.5", "the momentum memory's momentum", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.rrd?.momentum }, set: { $0.teacher!.rrd!.momentum = $1 }),
        number("teacher.rrd.student_temperature", minimum: 1e-6, "0.1", "the student side's temperature", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.rrd?.studentTemperature }, set: { $0.teacher!.rrd!.studentTemperature = $1 }),
        number("teacher.rrd.teacher_temperature", minimum: 1e-6, "0.02", "the teacher side's temperature", digest: .withSection, scope: .cohort,
               get: { $0.teacher?.rrd?.teacherTemperature }, set: { $0.teacher!.rrd!.teacherTemperature = $1 }),
        integer("teacher.rrd.embedding_dim", 1...65_536, "128", "the relation embeddings' size", digest: .withSection, scope: .cohort,
                get: { $0.teacher?.rrd?.dimension }, set: { $0.teacher!.rrd!.dimension = $1 }),
        section("codistillation", "absent (outputs every step)",
                "codistillation: no step barrier; each peer learns from the others' weights as last published (needs `network.exchange: mesh`)",
                scope: .cohort, open: { $0.codistillation = .init() }),
        integer("codistillation.every", 1...1_000_000, "50", "steps between a peer's publications of its weights", digest: .withSection, scope: .cohort,
                get: { $0.codistillation?.every }, set: { $0.codistillation!.every = $1 }),
        Key(path: "output", kind: .path, defaultText: "`runs/cohort` (`runs/train` for one network)", doc: "the run directory",
            digest: .no, scope: .every, note: nil, required: nil, read: { node, c in c.output = try node.string() }, value: { $0.output }),
        integer("evaluation_batch_size", 1...100_000, "500", "images per batch when evaluating", get: { $0.evaluationBatchSize }, set: { $0.evaluationBatchSize = $1 }),
        integer("evaluation_every", 1...100_000, "1", "epochs between test-set evaluations (the last is always evaluated)", digest: .withCodistillation,
                get: { $0.evaluationEvery }, set: { $0.evaluationEvery = $1 }),
        section("network", "", "where the coordinator listens, and how long silence may last", scope: .cohort),
        Key(path: "network.coordinator", kind: .endpoint, defaultText: "`tcp://127.0.0.1:5570`", doc: "the coordinator's control endpoint: peers connect here",
            digest: .no, scope: .cohort, note: nil, required: nil, read: { node, c in c.network.coordinator = try endpoint(node) },
            value: { $0.network.coordinator }),
        Key(path: "network.stream", kind: .endpoint, defaultText: "`tcp://127.0.0.1:5571`", doc: "the log stream's endpoint: cohort monitor subscribes here",
            digest: .no, scope: .cohort, note: nil, required: nil, read: { node, c in c.network.stream = try endpoint(node) },
            value: { $0.network.stream }),
        seconds("network.timeout", minimum: 0.1, "120", "seconds the coordinator awaits a peer's outputs or evaluation", get: { $0.timeout }, set: { $0.timeout = $1 }),
        seconds("network.join_timeout", minimum: 0.1, "300", "seconds to wait for peers to join (and a peer for its coordinator)", get: { $0.joinTimeout }, set: { $0.joinTimeout = $1 }),
        seconds("network.heartbeat_interval", minimum: 0.01, "1", "seconds between heartbeats", get: { $0.heartbeatInterval }, set: { $0.heartbeatInterval = $1 }),
        seconds("network.heartbeat_timeout", minimum: 0.1, "10", "seconds of silence before a peer is absent (or the coordinator lost)",
                note: "more than twice `network.heartbeat_interval`", get: { $0.heartbeatTimeout }, set: { $0.heartbeatTimeout = $1 }),
        name("network.exchange", CohortConfiguration.NetworkSettings.ExchangeMode.allCases.map(\.rawValue), "`coordinator`",
             "how the outputs travel: through the coordinator, or peer to peer (`mesh`: the coordinator keeps the control plane)",
             digest: .no, scope: .cohort, get: { $0.network.exchange.rawValue }, set: { $0.network.exchange = .init(rawValue: $1)! }),
        integer("checkpoint_every", 0...Int.max, "0 (epoch ends only)", "steps between checkpoints besides every epoch's end", digest: .no,
                get: { $0.checkpointEvery }, set: { $0.checkpointEvery = $1 }),
        section("security", "absent (plain TCP, loopback only)", "CURVE keys from cohort keygen", scope: .cohort,
                open: { $0.security = .init(coordinatorKey: "", peerKeys: []) }),
        Key(path: "security.coordinator_key", kind: .path, defaultText: "required with `security`", doc: "the coordinator's public key file",
            digest: .no, scope: .cohort, note: nil, required: "the coordinator's public key file (cohort keygen)",
            read: { node, c in c.security!.coordinatorKey = try node.string() }, value: { $0.security?.coordinatorKey }),
        Key(path: "security.peer_keys", kind: .paths, defaultText: "required with `security`", doc: "the peers' public key files",
            digest: .no, scope: .cohort, note: "exactly one per peer, in rank order", required: "one public key file per peer, in rank order (cohort keygen)",
            read: { node, c in c.security!.peerKeys = try node.list().map { try $0.string() } },
            value: { $0.security.map { $0.peerKeys.joined(separator: ",") } }),
        Key(path: "security.monitor_keys", kind: .paths, defaultText: "none", doc: "public key files of the monitors admitted to the log stream",
            digest: .no, scope: .cohort, note: nil, required: nil,
            read: { node, c in c.security!.monitorKeys = try node.list().map { try $0.string() } },
            value: { $0.security.map { $0.monitorKeys.joined(separator: ",") } }),
    ]

    static func endpoint(_ node: ConfigurationNode) throws -> String {
        let endpoint = try node.string()
        guard ["tcp://", "ipc://"].contains(where: { endpoint.hasPrefix($0) }), endpoint.contains(":") else {
            throw ConfigurationError.badValue(path: node.path, expected: "a ZeroMQ endpoint such as tcp://127.0.0.1:5570, tcp://*:5570 or ipc:///tmp/cohort",
                                              found: "\"\(endpoint)\"")
        }
        return endpoint
    }

    static let byPath: [String: ConfigurationKey] = Dictionary(uniqueKeysWithValues: keys.map { ($0.path, $0) })

    // MARK: Reading

    /// Reads a whole document: every key by the table, then the checks that involve several keys.
    static func read(_ text: String, singleNetwork: Bool) throws -> CohortConfiguration {
        var c = CohortConfiguration()
        try read(ConfigurationNode.parse(text), section: "", singleNetwork: singleNetwork, into: &c)
        try checkTogether(c, singleNetwork: singleNetwork)
        return c
    }

    /// Reads the keys of `section` from `node`, then requires those that must be there.
    static func read(_ node: ConfigurationNode, section: String, singleNetwork: Bool, into c: inout CohortConfiguration) throws {
        let children = keys.filter { $0.section == section && !$0.path.contains("[") && $0.applies(to: singleNetwork) }
        let entries = try node.mapping(allowed: children.map(\.name))
        for key in children {
            guard let child = entries[key.name] else {
                if let expected = key.required { throw ConfigurationError.missing(path: key.path, expected: expected) }
                continue
            }
            try key.read?(child, &c)
            if case .section = key.kind { try read(child, section: key.path, singleNetwork: singleNetwork, into: &c) }
        }
    }

    /// The rules that involve two keys, checked once everything is read.
    static func checkTogether(_ c: CohortConfiguration, singleNetwork: Bool) throws {
        if c.network.heartbeatTimeout <= 2 * c.network.heartbeatInterval {
            throw ConfigurationError.badValue(path: "network.heartbeat_timeout", expected: "more than twice network.heartbeat_interval (\(c.network.heartbeatInterval))",
                                              found: "\(c.network.heartbeatTimeout)")
        }
        if c.nesterov && c.momentum == 0 {
            throw ConfigurationError.badValue(path: "optimizer.nesterov", expected: "false when optimizer.momentum is 0", found: "true")
        }
        if c.schedule == .multistep && c.milestones.isEmpty {
            throw ConfigurationError.missing(path: "schedule.milestones", expected: "epochs at which the rate drops, for kind: multistep")
        }
        if c.warmupEpochs >= c.epochs {
            throw ConfigurationError.badValue(path: "schedule.warmup_epochs", expected: "fewer than epochs (\(c.epochs))", found: "\(c.warmupEpochs)")
        }
        if let keys = c.security?.peerKeys, keys.count != c.peers.count {
            throw ConfigurationError.badValue(path: "security.peer_keys", expected: "one key per peer (\(c.peers.count))", found: "\(keys.count)")
        }
        if c.codistillation != nil {
            if c.network.exchange != .mesh {
                throw ConfigurationError.badValue(path: "network.exchange", expected: "mesh with codistillation (the peers send each other their weights)",
                                                  found: c.network.exchange.rawValue)
            }
            if c.teacher != nil {
                throw ConfigurationError.badValue(path: "codistillation", expected: "absent with a teacher (codistillation with a teacher is not supported yet)",
                                                  found: "present")
            }
            if c.peers.count < 2 || !c.mcl.enabled {
                throw ConfigurationError.badValue(path: "codistillation", expected: "two or more peers with mcl.enabled", found: "\(c.peers.count) peer(s)")
            }
        }
        if let rrd = c.teacher?.rrd, rrd.memory == .fifo, rrd.keys % c.batchSize != 0 {
            throw ConfigurationError.badValue(path: "teacher.rrd.keys", expected: "a multiple of batch_size (\(c.batchSize))", found: "\(rrd.keys)")
        }
    }

    // MARK: Writing

    /// The canonical settings text: every key in the digest, `key=value` lines sorted by key.
    static func canonicalSettings(_ c: CohortConfiguration) -> String {
        var lines: [(String, String)] = []
        for key in keys where key.scope != .singleNetwork {
            switch key.digest {
            case .yes:
                // Keys of an absent section (no teacher) have no value, so no line.
                if let value = key.value?(c) { lines.append((key.path, value)) }
            case .withSection:
                if let value = key.value?(c) { lines.append((key.path, value)) }
            case .perItem:
                for (i, p) in c.peers.enumerated() { lines.append(("peers.\(i).model", p.model)) }
            case .withCodistillation:
                if c.codistillation != nil, let value = key.value?(c) { lines.append((key.path, value)) }
            case .no, .ofKeys:
                break
            }
        }
        return lines.sorted { $0.0 < $1.0 }.map { "\($0.0)=\($0.1)\n" }.joined()
    }

    /// Whether `section` is in the configuration (the optional ones: a teacher, its losses, security).
    static func isPresent(_ section: String, in c: CohortConfiguration) -> Bool {
        switch section {
        case "teacher": c.teacher != nil
        case "teacher.kd": c.teacher?.kd != nil
        case "teacher.crcd": c.teacher?.crcd != nil
        case "teacher.rrd": c.teacher?.rrd != nil
        case "security": c.security != nil
        default: true
        }
    }

    /// Every key's effective value, defaults filled in, in the reference's order (`cohort config check`);
    /// an optional section that is absent is one line, `absent`.
    public static func effectiveSettings(_ c: CohortConfiguration, singleNetwork: Bool) -> [(key: String, value: String)] {
        var result: [(key: String, value: String)] = []
        for key in keys where key.applies(to: singleNetwork) && isPresent(key.section, in: c) {
            switch key.kind {
            case .section:
                if !isPresent(key.path, in: c) { result.append((key.path, "absent")) }
            case .mappings:
                break
            default:
                if key.path == "peers[].model" {
                    for (i, p) in c.peers.enumerated() { result.append(("peers[\(i)].model", p.model)) }
                } else if key.path == "data.directory" && c.data.directory == nil {
                    result.append((key.path, c.data.dataSet.defaultDirectory ?? "none (required)"))
                } else {
                    result.append((key.path, key.value?(c) ?? "none"))
                }
            }
        }
        return result
    }

    /// The key reference as a markdown table (`cohort config reference`; `docs/configuration.md` has it verbatim).
    public static func reference() -> String {
        var lines = ["| key | type | allowed | default | digest | what it does |", "|---|---|---|---|---|---|"]
        for key in keys {
            let scope = key.scope == .cohort ? " (cohort)" : key.scope == .singleNetwork ? " (one network)" : ""
            lines.append("| `\(key.path)`\(scope) | \(key.typeText) | \(key.allowedText) | \(key.defaultText) | \(key.digestText) | \(key.doc) |")
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
