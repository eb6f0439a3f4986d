import Foundation
import NN
import Data
import Distill
import Training

/// A cohort, as a YAML file describes it (every key: `docs/configuration.md`).
public struct CohortConfiguration: Sendable, Equatable {
    public struct DataSettings: Sendable, Equatable {
        public var dataSet: DataSetKind = .fashionMNIST
        public var directory: String?
        public var trainLimit: Int?
        public var testLimit: Int?
    }

    public struct Peer: Sendable, Equatable {
        public var model: String
    }

    public struct MCLSettings: Sendable, Equatable {
        public var enabled = true
        public var embeddingDimension = 128
        public var settings = MCL.Settings()
        /// Layer-wise MCL (L-MCL): the weights of the MCL terms at each layer — the auxiliary branch after
        /// stage 1, the one after stage 2, the backbone's final embedding. `nil`: MCL on the final
        /// embedding only, no auxiliary branches.
        public var layerWeights: [Float]?
        /// The number of layers layer-wise MCL contrasts (two auxiliary branches and the backbone).
        public static let layerCount = 3
        /// Epochs over which the soft terms' weights (soft VCL, soft ICL) ramp linearly from 0 to their
        /// values, so that VCL and ICL spread the embeddings before the soft terms pull the networks'
        /// similarity distributions together (0: no ramp, the paper's training). See docs/results.md,
        /// "Embedding collapse".
        public var softRampEpochs: Float = 0

        /// The factor of the soft terms' weights at `step` (0-based) of a run with `stepsPerEpoch`.
        public func softRampFactor(step: Int, stepsPerEpoch: Int) -> Float {
            guard softRampEpochs > 0 else { return 1 }
            return min(1, Float(step) / (softRampEpochs * Float(stepsPerEpoch)))
        }
    }

    public struct KDSettings: Sendable, Equatable {
        public var weight: Float = 0.9
        public var temperature: Float = 4
    }

    public struct CRCDSettings: Sendable, Equatable {
        public var weight: Float = 1
        /// Weight of the second CRCD loss on the gradient elements (0: off).
        public var gradientWeight: Float = 1
        public var negatives = 500
        public var temperature: Float = 0.05
        public var momentum: Float = 0.5
        public var dimension = 128
    }

    public struct RRDSettings: Sendable, Equatable {
        public enum MemoryKind: String, Sendable, CaseIterable { case fifo, momentum }
        public var weight: Float = 1
        /// A FIFO queue of teacher keys (the default), or CRD's per-sample momentum memory.
        public var memory: MemoryKind = .fifo
        /// Queue length (fifo) or sampled negatives per sample (momentum).
        public var keys = 16384
        /// Momentum of the per-sample memory.
        public var momentum: Float = 0.5
        public var studentTemperature: Float = 0.1
        public var teacherTemperature: Float = 0.02
        public var dimension = 128
    }

    public struct TeacherSettings: Sendable, Equatable {
        public var model: String
        public var checkpoint: String
        public var kd: KDSettings?
        public var crcd: CRCDSettings?
        public var rrd: RRDSettings?
        public var schedule: DistillationWeightSchedule = .mimic
    }

    /// Where the distributed cohort's coordinator listens, and how long silence may last.
    public struct NetworkSettings: Sendable, Equatable {
        /// The coordinator's control endpoint (ZeroMQ ROUTER): peers connect here.
        public var coordinator = "tcp://127.0.0.1:5570"
        /// The log stream's endpoint (ZeroMQ PUB): `cohort monitor` subscribes here.
        public var stream = "tcp://127.0.0.1:5571"
        /// Seconds a peer or the coordinator may stay silent while it is awaited before the run is stopped.
        public var timeout: Double = 120
        /// Seconds the coordinator waits for every peer to join (and a peer for a coordinator to answer).
        public var joinTimeout: Double = 300
        /// Seconds between heartbeats, both ways.
        public var heartbeatInterval: Double = 1
        /// Seconds without a heartbeat after which a peer is marked absent (and a peer deems the
        /// coordinator lost and tries to rejoin).
        public var heartbeatTimeout: Double = 10
    }

    /// CURVE keys: the coordinator's public key and the public keys admitted, one per peer (by rank) and
    /// any number of monitors. Paths to files written by `cohort keygen`.
    public struct SecuritySettings: Sendable, Equatable {
        public var coordinatorKey: String
        public var peerKeys: [String]
        public var monitorKeys: [String] = []
    }

    public var data = DataSettings()
    public var seed: UInt64 = 0
    public var epochs = 3
    public var batchSize = 128
    public var sampler: TrainingOptions.SamplerKind = .mPerClass
    public var learningRate: Float = 0.1
    public var momentum: Float = 0.9
    public var weightDecay: Float = 5e-4
    public var nesterov = true
    public var schedule: TrainingOptions.ScheduleKind = .cosine
    public var milestones: [Int] = []
    public var gamma: Float = 0.1
    public var warmupEpochs = 0
    public var peers: [Peer] = []
    public var mcl = MCLSettings()
    public var teacher: TeacherSettings?
    public var output = "runs/cohort"
    public var evaluationBatchSize = 500
    /// Epochs between test-set evaluations (the last epoch is always evaluated); 1: every epoch.
    public var evaluationEvery = 1
    public var network = NetworkSettings()
    /// CURVE security; `nil`: plain TCP (loopback only, unless the processes are started with --insecure).
    public var security: SecuritySettings?
    /// Steps between cohort checkpoints (besides every epoch's end); 0: epochs only.
    public var checkpointEvery = 0

    public init() {}

    /// Whether the cohort evaluates on the test set at the end of `epoch` (0-based): every
    /// `evaluation_every`-th epoch and the last one.
    public func evaluates(epoch: Int) -> Bool { (epoch + 1) % evaluationEvery == 0 || epoch + 1 >= epochs }

    /// Reads and validates a configuration file.
    public static func load(path: String) throws -> CohortConfiguration {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigurationError.unreadable(path: path, reason: error.localizedDescription)
        }
        return try parse(text)
    }

    /// The top-level keys every configuration shares: a cohort's and a single network's (`cohort train --config`).
    public static let sharedKeys = ["data", "seed", "epochs", "batch_size", "sampler", "optimizer", "schedule", "output",
                                    "evaluation_batch_size", "evaluation_every", "checkpoint_every"]

    /// Parses and validates YAML text.
    /// - Parameter singleNetwork: the file describes one network trained alone: `model` instead of `peers`,
    ///   and none of the cohort's own keys (`mcl`, `teacher`, `network`, `security`).
    public static func parse(_ text: String, singleNetwork: Bool = false) throws -> CohortConfiguration {
        var c = CohortConfiguration()
        let top = try ConfigurationNode.parse(text).mapping(allowed: sharedKeys + (singleNetwork ? ["model"] : ["peers", "mcl", "teacher", "network", "security"]))
        if let d = top["data"] {
            let m = try d.mapping(allowed: ["dataset", "directory", "train_limit", "test_limit"])
            if let v = m["dataset"] {
                let name = try v.string()
                do { c.data.dataSet = try DataSetKind(name: name) } catch {
                    throw ConfigurationError.badValue(path: v.path, expected: "one of \(DataSetKind.allCases.map(\.rawValue).joined(separator: ", "))", found: "\"\(name)\"")
                }
            }
            c.data.directory = try m["directory"]?.string()
            c.data.trainLimit = try m["train_limit"]?.int(2...Int.max)
            c.data.testLimit = try m["test_limit"]?.int(1...Int.max)
        }
        if let v = top["seed"] { c.seed = UInt64(try v.int(0...Int.max)) }
        if let v = top["epochs"] { c.epochs = try v.int(1...100_000) }
        if let v = top["batch_size"] { c.batchSize = try v.int(2...65_536) }
        if let v = top["sampler"] { c.sampler = TrainingOptions.SamplerKind(rawValue: try v.choice(TrainingOptions.SamplerKind.allCases.map(\.rawValue)))! }
        if let v = top["evaluation_batch_size"] { c.evaluationBatchSize = try v.int(1...100_000) }
        if let v = top["evaluation_every"] { c.evaluationEvery = try v.int(1...100_000) }
        if let v = top["output"] { c.output = try v.string() }
        if let n = top["network"] {
            let m = try n.mapping(allowed: ["coordinator", "stream", "timeout", "join_timeout", "heartbeat_interval", "heartbeat_timeout"])
            for (key, keyPath) in [("coordinator", \NetworkSettings.coordinator), ("stream", \NetworkSettings.stream)] {
                guard let v = m[key] else { continue }
                let endpoint = try v.string()
                guard ["tcp://", "ipc://"].contains(where: { endpoint.hasPrefix($0) }), endpoint.contains(":") else {
                    throw ConfigurationError.badValue(path: v.path, expected: "a ZeroMQ endpoint such as tcp://127.0.0.1:5570, tcp://*:5570 or ipc:///tmp/cohort",
                                                      found: "\"\(endpoint)\"")
                }
                c.network[keyPath: keyPath] = endpoint
            }
            if let v = m["timeout"] { c.network.timeout = Double(try v.float(minimum: 0.1)) }
            if let v = m["join_timeout"] { c.network.joinTimeout = Double(try v.float(minimum: 0.1)) }
            if let v = m["heartbeat_interval"] { c.network.heartbeatInterval = Double(try v.float(minimum: 0.01)) }
            if let v = m["heartbeat_timeout"] { c.network.heartbeatTimeout = Double(try v.float(minimum: 0.1)) }
            if c.network.heartbeatTimeout <= 2 * c.network.heartbeatInterval {
                throw ConfigurationError.badValue(path: "network.heartbeat_timeout", expected: "more than twice network.heartbeat_interval (\(c.network.heartbeatInterval))",
                                                  found: "\(c.network.heartbeatTimeout)")
            }
        }
        if let v = top["checkpoint_every"] { c.checkpointEvery = try v.int(0...Int.max) }
        if let n = top["security"] {
            let m = try n.mapping(allowed: ["coordinator_key", "peer_keys", "monitor_keys"])
            guard let coordinator = m["coordinator_key"] else {
                throw ConfigurationError.missing(path: "security.coordinator_key", expected: "the coordinator's public key file (cohort keygen)")
            }
            guard let peers = m["peer_keys"] else {
                throw ConfigurationError.missing(path: "security.peer_keys", expected: "one public key file per peer, in rank order (cohort keygen)")
            }
            c.security = SecuritySettings(coordinatorKey: try coordinator.string(), peerKeys: try peers.list().map { try $0.string() },
                                          monitorKeys: try m["monitor_keys"]?.list().map { try $0.string() } ?? [])
        }
        if let o = top["optimizer"] {
            let m = try o.mapping(allowed: ["lr", "momentum", "weight_decay", "nesterov"])
            if let v = m["lr"] { c.learningRate = try v.float(minimum: 1e-12) }
            if let v = m["momentum"] { c.momentum = try v.float(minimum: 0, maximum: 0.999) }
            if let v = m["weight_decay"] { c.weightDecay = try v.float(minimum: 0) }
            if let v = m["nesterov"] { c.nesterov = try v.bool() }
            if c.nesterov && c.momentum == 0 {
                throw ConfigurationError.badValue(path: "optimizer.nesterov", expected: "false when optimizer.momentum is 0", found: "true")
            }
        }
        if let s = top["schedule"] {
            let m = try s.mapping(allowed: ["kind", "milestones", "gamma", "warmup_epochs"])
            if let v = m["kind"] { c.schedule = TrainingOptions.ScheduleKind(rawValue: try v.choice(TrainingOptions.ScheduleKind.allCases.map(\.rawValue)))! }
            if let v = m["milestones"] { c.milestones = try v.list().map { try $0.int(1...Int.max) } }
            if let v = m["gamma"] { c.gamma = try v.float(minimum: 1e-12) }
            if let v = m["warmup_epochs"] {
                c.warmupEpochs = try v.int(0...Int.max)
                guard c.warmupEpochs < c.epochs else {
                    throw ConfigurationError.badValue(path: v.path, expected: "fewer than epochs (\(c.epochs))", found: "\(c.warmupEpochs)")
                }
            }
            if c.schedule == .multistep && c.milestones.isEmpty {
                throw ConfigurationError.missing(path: "schedule.milestones", expected: "epochs at which the rate drops, for kind: multistep")
            }
        }
        if singleNetwork {
            guard let model = top["model"] else { throw ConfigurationError.missing(path: "model", expected: Architecture.allNames) }
            let name = try model.string()
            guard Architecture(name: name) != nil else {
                throw ConfigurationError.badValue(path: model.path, expected: "one of \(Architecture.allNames)", found: "\"\(name)\"\(suggestion(for: name, among: Architecture.allCases.map(\.rawValue)))")
            }
            c.peers = [Peer(model: name)]
            return c
        }
        guard let peers = top["peers"] else {
            throw ConfigurationError.missing(path: "peers", expected: "a list of peers, each with a model")
        }
        for p in try peers.list() {
            let m = try p.mapping(allowed: ["model"])
            guard let model = m["model"] else { throw ConfigurationError.missing(path: p.path + ".model", expected: Architecture.allNames) }
            let name = try model.string()
            guard Architecture(name: name) != nil else {
                throw ConfigurationError.badValue(path: model.path, expected: "one of \(Architecture.allNames)", found: "\"\(name)\"\(suggestion(for: name, among: Architecture.allCases.map(\.rawValue)))")
            }
            c.peers.append(Peer(model: name))
        }
        guard !c.peers.isEmpty else { throw ConfigurationError.badValue(path: "peers", expected: "at least one peer", found: "an empty list") }
        if let keys = c.security?.peerKeys, keys.count != c.peers.count {
            throw ConfigurationError.badValue(path: "security.peer_keys", expected: "one key per peer (\(c.peers.count))", found: "\(keys.count)")
        }
        if let v = top["mcl"] {
            let m = try v.mapping(allowed: ["enabled", "tau", "temperature", "embedding_dim", "weights", "layer_weights", "soft_ramp_epochs"])
            if let x = m["enabled"] { c.mcl.enabled = try x.bool() }
            if let x = m["tau"] { c.mcl.settings.tau = try x.float(minimum: 1e-6) }
            if let x = m["temperature"] { c.mcl.settings.temperature = try x.float(minimum: 1e-6) }
            if let x = m["embedding_dim"] { c.mcl.embeddingDimension = try x.int(1...65_536) }
            if let x = m["soft_ramp_epochs"] { c.mcl.softRampEpochs = try x.float(minimum: 0) }
            if let w = m["weights"] {
                let ws = try w.mapping(allowed: ["vcl", "soft_vcl", "icl", "soft_icl", "logit"])
                if let x = ws["vcl"] { c.mcl.settings.vcl = try x.float(minimum: 0) }
                if let x = ws["soft_vcl"] { c.mcl.settings.softVCL = try x.float(minimum: 0) }
                if let x = ws["icl"] { c.mcl.settings.icl = try x.float(minimum: 0) }
                if let x = ws["soft_icl"] { c.mcl.settings.softICL = try x.float(minimum: 0) }
                if let x = ws["logit"] { c.mcl.settings.logitDistillation = try x.float(minimum: 0) }
            }
            if let v = m["layer_weights"] {
                let ws = try v.list().map { try $0.float(minimum: 0) }
                guard ws.count == MCLSettings.layerCount else {
                    throw ConfigurationError.badValue(path: v.path, expected: "\(MCLSettings.layerCount) weights (auxiliary branch after stage 1, after stage 2, final embedding)",
                                                      found: "\(ws.count)")
                }
                c.mcl.layerWeights = ws
            }
        }
        if let t = top["teacher"] {
            let m = try t.mapping(allowed: ["model", "checkpoint", "kd", "crcd", "rrd", "schedule"])
            guard let model = m["model"] else { throw ConfigurationError.missing(path: "teacher.model", expected: Architecture.allNames) }
            let name = try model.string()
            guard Architecture(name: name) != nil else {
                throw ConfigurationError.badValue(path: "teacher.model", expected: "one of \(Architecture.allNames)", found: "\"\(name)\"\(suggestion(for: name, among: Architecture.allCases.map(\.rawValue)))")
            }
            guard let checkpoint = m["checkpoint"] else {
                throw ConfigurationError.missing(path: "teacher.checkpoint", expected: "a safetensors file, e.g. from cohort train")
            }
            var teacher = TeacherSettings(model: name, checkpoint: try checkpoint.string())
            if let v = m["schedule"] {
                teacher.schedule = DistillationWeightSchedule(rawValue: try v.choice(DistillationWeightSchedule.allCases.map(\.rawValue)))!
            }
            if let v = m["kd"] {
                let k = try v.mapping(allowed: ["weight", "temperature"])
                var s = KDSettings()
                if let x = k["weight"] { s.weight = try x.float(minimum: 0) }
                if let x = k["temperature"] { s.temperature = try x.float(minimum: 1e-6) }
                teacher.kd = s
            }
            if let v = m["crcd"] {
                let k = try v.mapping(allowed: ["weight", "gradient_weight", "negatives", "temperature", "momentum", "embedding_dim"])
                var s = CRCDSettings()
                if let x = k["weight"] { s.weight = try x.float(minimum: 0) }
                if let x = k["gradient_weight"] { s.gradientWeight = try x.float(minimum: 0) }
                if let x = k["negatives"] { s.negatives = try x.int(1...1_000_000) }
                if let x = k["temperature"] { s.temperature = try x.float(minimum: 1e-6) }
                if let x = k["momentum"] { s.momentum = try x.float(minimum: 0, maximum: 1) }
                if let x = k["embedding_dim"] { s.dimension = try x.int(1...65_536) }
                teacher.crcd = s
            }
            if let v = m["rrd"] {
                let k = try v.mapping(allowed: ["weight", "memory", "keys", "momentum", "student_temperature", "teacher_temperature", "embedding_dim"])
                var s = RRDSettings()
                if let x = k["weight"] { s.weight = try x.float(minimum: 0) }
                if let x = k["memory"] { s.memory = RRDSettings.MemoryKind(rawValue: try x.choice(RRDSettings.MemoryKind.allCases.map(\.rawValue)))! }
                if let x = k["momentum"] { s.momentum = try x.float(minimum: 0, maximum: 1) }
                if let x = k["keys"] { s.keys = try x.int(1...10_000_000) }
                if let x = k["student_temperature"] { s.studentTemperature = try x.float(minimum: 1e-6) }
                if let x = k["teacher_temperature"] { s.teacherTemperature = try x.float(minimum: 1e-6) }
                if let x = k["embedding_dim"] { s.dimension = try x.int(1...65_536) }
                if s.memory == .fifo && s.keys % c.batchSize != 0 {
                    throw ConfigurationError.badValue(path: "teacher.rrd.keys", expected: "a multiple of batch_size (\(c.batchSize))", found: "\(s.keys)")
                }
                teacher.rrd = s
            }
            c.teacher = teacher
        }
        return c
    }

    /// Whether the peers exchange embeddings (MCL on, more than one peer).
    public var mclActive: Bool { mcl.enabled && peers.count > 1 }

    /// Whether the peers train auxiliary branches and exchange their embeddings (layer-wise MCL).
    public var layerWiseMCL: Bool { mclActive && mcl.layerWeights != nil }

    /// The names and shapes of the tensors of a peer's `outputs` message for a batch of `b`, in order:
    /// the auxiliary branches' embeddings (layer-wise MCL), the final embedding (MCL), the logits.
    public func outputTensorShapes(batchSize b: Int) -> [(name: String, shape: [Int])] {
        var result: [(name: String, shape: [Int])] = []
        let d = mcl.embeddingDimension
        if layerWiseMCL { for l in 1..<MCLSettings.layerCount { result.append(("embedding.aux\(l)", [b, d])) } }
        if mclActive { result.append(("embedding", [b, d])) }
        result.append(("logits", [b, data.dataSet.classCount]))
        return result
    }

    /// The SHA-256 (hexadecimal) of ``canonicalSettings``. Peers and the coordinator exchange it with
    /// every message: a process started with another configuration is refused.
    public var digest: String { SHA256.hex(Array(canonicalSettings.utf8)) }

    /// The settings of one peer's SGD and schedule, in `cohort train`'s terms.
    var trainingOptions: TrainingOptions {
        var o = TrainingOptions()
        o.model = peers.first?.model ?? o.model
        o.checkpointEvery = checkpointEvery
        o.dataSet = data.dataSet; o.dataDirectory = data.directory
        o.trainLimit = data.trainLimit; o.testLimit = data.testLimit
        o.epochs = epochs; o.batchSize = batchSize; o.sampler = sampler
        o.learningRate = learningRate; o.momentum = momentum; o.weightDecay = weightDecay; o.nesterov = nesterov
        o.schedule = schedule; o.milestones = milestones; o.gamma = gamma; o.warmupEpochs = warmupEpochs
        o.seed = seed; o.evaluationBatchSize = evaluationBatchSize
        o.evaluateEvery = evaluationEvery == 1 ? nil : evaluationEvery
        return o
    }
}
