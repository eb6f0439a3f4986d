import Foundation
import NN
import Data
import Distill
import Training
import Wire

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
        /// How the peers' outputs travel each step.
        public var exchange = ExchangeMode.coordinator

        /// How the peers' outputs travel each step (`network.exchange`).
        public enum ExchangeMode: String, Sendable, Equatable, CaseIterable {
            /// Each peer sends its outputs to the coordinator, which sends each the others'.
            case coordinator
            /// Each peer sends its outputs straight to the others (ZeroMQ, CURVE where configured); the
            /// coordinator keeps admission, membership, the step barrier, checkpoints and the teacher's
            /// outputs, and its traffic no longer grows with the square of the cohort's size.
            case mesh
        }
    }

    /// Codistillation (Anil et al., 2018): each peer trains at its own pace and every `every` steps sends
    /// its weights to the others over the mesh; each computes the others' embeddings and logits on its own
    /// batch with the copies it holds (inference only) and feeds them to the same MCL terms.
    public struct CodistillationSettings: Sendable, Equatable {
        /// Steps between a peer's publications of its weights.
        public var every = 50
    }

    /// CURVE keys: the coordinator's public key and the public keys admitted, one per peer (by rank) and
    /// any number of monitors. Paths to files written by `cohort keygen`.
    public struct SecuritySettings: Sendable, Equatable {
        public var coordinatorKey: String
        public var peerKeys: [String]
        public var monitorKeys: [String] = []

        public init(coordinatorKey: String, peerKeys: [String], monitorKeys: [String] = []) {
            self.coordinatorKey = coordinatorKey; self.peerKeys = peerKeys; self.monitorKeys = monitorKeys
        }
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
    /// Codistillation: the peers train without a step barrier and learn from each other's weights as
    /// last published (`nil`: every step's outputs are exchanged).
    public var codistillation: CodistillationSettings?
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

    /// Parses and validates YAML text, key by key as ``ConfigurationSchema`` lists them.
    /// - Parameter singleNetwork: the file describes one network trained alone: `model` instead of `peers`,
    ///   and none of the cohort's own keys (`mcl`, `teacher`, `network`, `security`).
    public static func parse(_ text: String, singleNetwork: Bool = false) throws -> CohortConfiguration {
        try ConfigurationSchema.read(text, singleNetwork: singleNetwork)
    }

    /// Whether the peers exchange embeddings (MCL on, more than one peer).
    public var mclActive: Bool { mcl.enabled && peers.count > 1 }

    /// Whether the peers train auxiliary branches and exchange their embeddings (layer-wise MCL).
    public var layerWiseMCL: Bool { mclActive && mcl.layerWeights != nil }

    /// The tensors of a peer's `outputs` message: the auxiliary branches' embeddings (layer-wise MCL), the
    /// final embedding (MCL), the logits.
    public var outputLayout: OutputLayout {
        OutputLayout(auxiliaryBranches: layerWiseMCL ? MCLSettings.layerCount - 1 : 0, embeddings: mclActive,
                     embeddingDimension: mcl.embeddingDimension, classCount: data.dataSet.classCount)
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
