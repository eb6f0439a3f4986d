import Foundation

/// One line of a `metrics.jsonl`: what `cohort train`, each peer and the cohort record, and what
/// `cohort report` reads back. A JSON object with keys sorted; `kind` names the record.
///
/// - a network's step: `{"kind": "step", "epoch", "step", "global_step", <term>: number...}`
/// - a network's epoch: `{"kind": "epoch", "epoch", "global_step", "test_top1"?, "test_top5"?,
///   "test_loss"?, <train_ mean or other value>: number...}`
/// - a resume of `cohort train`: `{"kind": "resume", "global_step"}`
/// - a cohort's step: `{"kind": "step", "global_step", "present": [rank...]}`
/// - a cohort's epoch: `{"kind": "epoch", "epoch", "global_step", "ensemble_top1", "ensemble_top5",
///   "peer_top1": [...], "seconds"}`
///
/// Non-finite numbers are written as the strings `nan`, `inf`, `-inf`.
public enum MetricsRecord: Codable, Sendable, Equatable {
    case step(Step)
    case epoch(Epoch)
    case resume(globalStep: Int)
    case cohortStep(globalStep: Int, present: [Int])
    case cohortEpoch(CohortEpoch)

    /// A network's training step: where it is and every measured value (loss terms, accuracy, learning
    /// rate, timings) by name.
    public struct Step: Sendable, Equatable {
        public var epoch: Int
        public var step: Int
        /// Steps trained, this one included.
        public var globalStep: Int
        public var values: [String: Double]
        public init(epoch: Int, step: Int, globalStep: Int, values: [String: Double]) {
            self.epoch = epoch; self.step = step; self.globalStep = globalStep; self.values = values
        }
    }

    /// A network's epoch end: its test scores (on the epochs evaluated) and the epoch's values by name
    /// (the `train_` means, the learning rate, the seconds it took).
    public struct Epoch: Sendable, Equatable {
        public var epoch: Int
        public var globalStep: Int
        public var test: EvaluationResult?
        public var values: [String: Double]
        public init(epoch: Int, globalStep: Int, test: EvaluationResult?, values: [String: Double]) {
            self.epoch = epoch; self.globalStep = globalStep; self.test = test; self.values = values
        }
    }

    /// A cohort's epoch end: the ensemble's and every peer's test accuracy (0 for a peer absent).
    public struct CohortEpoch: Sendable, Equatable {
        public var epoch: Int
        public var globalStep: Int
        public var ensembleTop1: Double
        public var ensembleTop5: Double
        public var peerTop1: [Double]
        /// Seconds the run had trained at this epoch's end.
        public var seconds: Double
        public init(epoch: Int, globalStep: Int, ensembleTop1: Double, ensembleTop5: Double, peerTop1: [Double], seconds: Double) {
            self.epoch = epoch; self.globalStep = globalStep; self.ensembleTop1 = ensembleTop1; self.ensembleTop5 = ensembleTop5
            self.peerTop1 = peerTop1; self.seconds = seconds
        }
    }

    public var kind: String {
        switch self {
        case .step, .cohortStep: "step"
        case .epoch, .cohortEpoch: "epoch"
        case .resume: "resume"
        }
    }

    /// Steps trained when the record was written.
    public var globalStep: Int {
        switch self {
        case .step(let s): s.globalStep
        case .epoch(let e): e.globalStep
        case .resume(let g): g
        case .cohortStep(let g, _): g
        case .cohortEpoch(let e): e.globalStep
        }
    }

    /// Every numeric field by its key; a list of numbers as `key.0`, `key.1`, ... (what the report charts).
    public var numericFields: [String: Double] {
        var fields: [String: Double] = ["global_step": Double(globalStep)]
        switch self {
        case .step(let s):
            fields.merge(s.values) { a, _ in a }
            fields["epoch"] = Double(s.epoch); fields["step"] = Double(s.step)
        case .epoch(let e):
            fields.merge(e.values) { a, _ in a }
            fields["epoch"] = Double(e.epoch)
            if let t = e.test { fields["test_top1"] = t.top1; fields["test_top5"] = t.top5; fields["test_loss"] = t.loss }
        case .resume:
            break
        case .cohortStep(_, let present):
            for (i, r) in present.enumerated() { fields["present.\(i)"] = Double(r) }
        case .cohortEpoch(let e):
            fields["epoch"] = Double(e.epoch); fields["ensemble_top1"] = e.ensembleTop1; fields["ensemble_top5"] = e.ensembleTop5
            fields["seconds"] = e.seconds
            for (i, t) in e.peerTop1.enumerated() { fields["peer_top1.\(i)"] = t }
        }
        return fields
    }

    // MARK: Coding

    private struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    /// Keys with a meaning of their own (not a free value).
    private static let fixed: Set<String> = ["kind", "epoch", "step", "global_step", "test_top1", "test_top5", "test_loss"]

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Key.self)
        try c.encode(kind, forKey: Key("kind"))
        try c.encode(globalStep, forKey: Key("global_step"))
        func values(_ values: [String: Double]) throws {
            for (k, v) in values where !Self.fixed.contains(k) { try c.encode(v, forKey: Key(k)) }
        }
        switch self {
        case .step(let s):
            try c.encode(s.epoch, forKey: Key("epoch")); try c.encode(s.step, forKey: Key("step"))
            try values(s.values)
        case .epoch(let e):
            try c.encode(e.epoch, forKey: Key("epoch"))
            if let t = e.test {
                try c.encode(t.top1, forKey: Key("test_top1")); try c.encode(t.top5, forKey: Key("test_top5"))
                try c.encode(t.loss, forKey: Key("test_loss"))
            }
            try values(e.values)
        case .resume:
            break
        case .cohortStep(_, let present):
            try c.encode(present, forKey: Key("present"))
        case .cohortEpoch(let e):
            try c.encode(e.epoch, forKey: Key("epoch")); try c.encode(e.ensembleTop1, forKey: Key("ensemble_top1"))
            try c.encode(e.ensembleTop5, forKey: Key("ensemble_top5")); try c.encode(e.peerTop1, forKey: Key("peer_top1"))
            try c.encode(e.seconds, forKey: Key("seconds"))
        }
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: Key.self)
        let kind = try c.decode(String.self, forKey: Key("kind"))
        let globalStep = try c.decode(Int.self, forKey: Key("global_step"))
        func values(except: Set<String>) -> [String: Double] {
            var values: [String: Double] = [:]
            for key in c.allKeys where !Self.fixed.contains(key.stringValue) && !except.contains(key.stringValue) {
                if let v = try? c.decode(Double.self, forKey: key) { values[key.stringValue] = v }
            }
            return values
        }
        switch kind {
        case "resume":
            self = .resume(globalStep: globalStep)
        case "step" where c.contains(Key("present")):
            self = .cohortStep(globalStep: globalStep, present: try c.decode([Int].self, forKey: Key("present")))
        case "step":
            self = .step(Step(epoch: try c.decode(Int.self, forKey: Key("epoch")), step: try c.decode(Int.self, forKey: Key("step")),
                              globalStep: globalStep, values: values(except: [])))
        case "epoch" where c.contains(Key("ensemble_top1")):
            self = .cohortEpoch(CohortEpoch(epoch: try c.decode(Int.self, forKey: Key("epoch")), globalStep: globalStep,
                                            ensembleTop1: try c.decode(Double.self, forKey: Key("ensemble_top1")),
                                            ensembleTop5: try c.decode(Double.self, forKey: Key("ensemble_top5")),
                                            peerTop1: try c.decode([Double].self, forKey: Key("peer_top1")),
                                            seconds: try c.decodeIfPresent(Double.self, forKey: Key("seconds")) ?? 0))
        case "epoch":
            var test: EvaluationResult?
            if let top1 = try c.decodeIfPresent(Double.self, forKey: Key("test_top1")) {
                test = EvaluationResult(top1: top1, top5: try c.decodeIfPresent(Double.self, forKey: Key("test_top5")) ?? 0,
                                        loss: try c.decodeIfPresent(Double.self, forKey: Key("test_loss")) ?? 0, count: 0)
            }
            self = .epoch(Epoch(epoch: try c.decode(Int.self, forKey: Key("epoch")), globalStep: globalStep, test: test, values: values(except: [])))
        default:
            throw DecodingError.dataCorruptedError(forKey: Key("kind"), in: c, debugDescription: "unknown kind \(kind)")
        }
    }

    /// An encoder for metrics lines: keys sorted, non-finite numbers as strings.
    public static func makeEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return encoder
    }

    /// A decoder for metrics lines.
    public static func makeDecoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.nonConformingFloatDecodingStrategy = .convertFromString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        return decoder
    }
}
