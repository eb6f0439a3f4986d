import Foundation

/// One log record of a cohort process, as it travels to the coordinator and out on the log stream.
public struct LogRecord: Codable, Sendable, Equatable {
    /// Seconds since 1970 (UTC) on the sending host.
    public let time: Double
    /// swift-log's level name: trace, debug, info, notice, warning, error, critical.
    public let level: String
    /// The peer's rank; `nil` for the coordinator.
    public let rank: Int?
    /// The sending host's name.
    public let host: String
    /// The logger's label (`cohort.peer`, `cohort.coordinator`, ...).
    public let label: String
    public let message: String
    public let metadata: [String: String]

    public init(time: Double, level: String, rank: Int?, host: String, label: String, message: String,
                metadata: [String: String] = [:]) {
        self.time = time; self.level = level; self.rank = rank; self.host = host; self.label = label
        self.message = message; self.metadata = metadata
    }

    /// The levels in increasing severity.
    public static let levels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Position of `level` in ``levels`` (unknown names rank as info).
    public static func severity(_ level: String) -> Int { levels.firstIndex(of: level) ?? 2 }
}

/// A peer's progress after a training step, for the monitor's status view.
public struct PeerStatus: Codable, Sendable, Equatable {
    public let rank: Int
    public let host: String
    public let model: String
    /// 0-based epoch and step within it.
    public let epoch: Int
    public let epochs: Int
    public let step: Int
    public let stepsPerEpoch: Int
    public let globalStep: Int
    /// The step's total loss and training accuracy (the running mean over the epoch).
    public let loss: Double
    public let accuracy: Double
    /// The last test top-1 accuracy, once an epoch has ended.
    public let testAccuracy: Double?
    public let imagesPerSecond: Double
    /// The last step's wall time and the part of it spent exchanging outputs (waiting for slower peers
    /// excluded), in seconds.
    public let stepSeconds: Double
    public let exchangeSeconds: Double
    /// Seconds since 1970 on the peer's host when the status was taken.
    public let time: Double
    /// The mean pairwise cosine of the last step's embeddings (with MCL): near 1, they have collapsed.
    public let embeddingCosine: Double?

    public init(rank: Int, host: String, model: String, epoch: Int, epochs: Int, step: Int, stepsPerEpoch: Int, globalStep: Int,
                loss: Double, accuracy: Double, testAccuracy: Double?, imagesPerSecond: Double, stepSeconds: Double,
                exchangeSeconds: Double, time: Double, embeddingCosine: Double? = nil) {
        self.rank = rank; self.host = host; self.model = model; self.epoch = epoch; self.epochs = epochs; self.step = step
        self.stepsPerEpoch = stepsPerEpoch; self.globalStep = globalStep; self.loss = loss; self.accuracy = accuracy
        self.testAccuracy = testAccuracy; self.imagesPerSecond = imagesPerSecond; self.stepSeconds = stepSeconds
        self.exchangeSeconds = exchangeSeconds; self.time = time; self.embeddingCosine = embeddingCosine
    }

    /// This status with another test accuracy (after an evaluation), taken now.
    public func with(testAccuracy: Double?) -> PeerStatus {
        PeerStatus(rank: rank, host: host, model: model, epoch: epoch, epochs: epochs, step: step, stepsPerEpoch: stepsPerEpoch,
                   globalStep: globalStep, loss: loss, accuracy: accuracy, testAccuracy: testAccuracy, imagesPerSecond: imagesPerSecond,
                   stepSeconds: stepSeconds, exchangeSeconds: exchangeSeconds, time: Date().timeIntervalSince1970,
                   embeddingCosine: embeddingCosine)
    }
}

/// What a cohort process is doing, for the monitor's status view.
public enum Phase: String, Codable, Sendable, CaseIterable {
    /// Loading data, building networks (the coordinator before it admits anyone).
    case loading
    /// Admitted while the cohort trains; takes part from the next step.
    case joining
    /// Admitted, waiting for the cohort to start (or for the coordinator).
    case waiting
    case training
    /// Computing test-set outputs (a peer at an epoch's end, the coordinator its teacher's).
    case evaluating
    case checkpointing
    case finished
    /// Marked absent by the coordinator (silent, unreachable, or stopped); the cohort goes on without it.
    case absent
}

/// A process's change of ``Phase`` on the log stream: `rank` nil for the coordinator.
public struct PhaseChange: Codable, Sendable, Equatable {
    public let rank: Int?
    public let host: String
    public let phase: Phase
    /// What exactly (e.g. "the teacher (resnet56)", or why a peer is absent).
    public let detail: String?
    /// Seconds since 1970 on the coordinator's host.
    public let time: Double

    public init(rank: Int?, host: String, phase: Phase, detail: String? = nil, time: Double) {
        self.rank = rank; self.host = host; self.phase = phase; self.detail = detail; self.time = time
    }
}

/// What the coordinator publishes on its log stream (a ZeroMQ PUB socket): two frames, the topic
/// (`log`, `status`, `phase` or `end`) and the JSON of a ``LogRecord``, a ``PeerStatus``, a ``PhaseChange``
/// or a ``StreamEnd``.
public enum StreamEvent: Sendable, Equatable {
    case log(LogRecord)
    case status(PeerStatus)
    case phase(PhaseChange)
    case end(StreamEnd)

    public var topic: String {
        switch self {
        case .log: "log"
        case .status: "status"
        case .phase: "phase"
        case .end: "end"
        }
    }

    /// The event's two frames.
    public func frames() -> [[UInt8]] {
        let encoder = WireCodec.encoder
        // Plain structs of strings and numbers: encoding cannot fail.
        let body: Data = switch self {
        case .log(let r): try! encoder.encode(r)
        case .status(let s): try! encoder.encode(s)
        case .phase(let p): try! encoder.encode(p)
        case .end(let e): try! encoder.encode(e)
        }
        return [Array(topic.utf8), Array(body)]
    }

    /// Decodes a stream message.
    /// - Throws: ``WireError`` for anything but two frames with a known topic and a valid body.
    public static func decode(_ frames: [[UInt8]]) throws -> StreamEvent {
        guard frames.count == 2 else { throw WireError.frameCount(frames.count) }
        let topic = String(decoding: frames[0], as: UTF8.self)
        let decoder = WireCodec.decoder
        do {
            switch topic {
            case "log": return .log(try decoder.decode(LogRecord.self, from: Data(frames[1])))
            case "status": return .status(try decoder.decode(PeerStatus.self, from: Data(frames[1])))
            case "phase": return .phase(try decoder.decode(PhaseChange.self, from: Data(frames[1])))
            case "end": return .end(try decoder.decode(StreamEnd.self, from: Data(frames[1])))
            default: throw WireError.unknownType(topic)
            }
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError.header("\(topic) record: \(error)")
        }
    }
}

/// The last event of a stream: the run finished (`ok`) or failed, and why.
public struct StreamEnd: Codable, Sendable, Equatable {
    public let ok: Bool
    public let reason: String
    public let time: Double
    public init(ok: Bool, reason: String, time: Double) { self.ok = ok; self.reason = reason; self.time = time }
}
