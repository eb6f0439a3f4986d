import Foundation
import Training

/// What a run directory recorded, read back from its JSON-lines metrics: a cohort's (`cohort launch`:
/// `metrics.jsonl` with the ensemble, `peer-<rank>/metrics.jsonl` per peer, `summary.json`) or a single
/// network's (`cohort train`: one `metrics.jsonl`).
public struct RunRecords: Sendable {
    /// One trained network of the run: a cohort's peer, or the single network of `cohort train`.
    public struct Member: Sendable {
        /// The line's label within the run: `p0 resnet8`, or the model for a single network.
        public var label: String
        /// The peer's rank in a cohort; `nil` for the single network of `cohort train`.
        public var rank: Int?
        /// Per-step records (`kind: step`), in order: every numeric field by name.
        public var steps: [[String: Double]] = []
        /// Per-epoch records (`kind: epoch`), in order.
        public var epochs: [[String: Double]] = []
    }

    /// The run's name: its directory's last component.
    public var name: String
    public var directory: String
    public var members: [Member] = []
    /// A cohort's per-epoch records (ensemble and peers' test accuracy, cumulative seconds); empty for a
    /// single network.
    public var cohortEpochs: [[String: Double]] = []
    /// The run's wall time from its `summary.json` (a finished cohort's); `nil` without one.
    public var seconds: Double?

    /// The fields of a cohort's `summary.json` the report uses, read once.
    private struct Summary: Decodable {
        struct Peer: Decodable { var rank: Int; var model: String }
        var peers: [Peer]?
        var seconds: Double?
        var steps: Double?
        var images_per_s: Double?
    }

    /// Images per step on average (the summary's images over its steps; `cohort train`'s batch size), for
    /// the images/s charts; `nil` when the run does not say.
    public var imagesPerStep: Double?

    /// How many networks the run trained (before any ``keepingPeers(_:)``): a cohort's peers as its
    /// epoch records list them; 1 for a single network.
    public var networkCount: Int {
        cohortEpochs.map { e in e.keys.filter { $0.hasPrefix("peer_top1.") }.count }.max().map { Swift.max($0, members.count) } ?? members.count
    }

    public var isCohort: Bool { !cohortEpochs.isEmpty || members.count > 1 || FileManager.default.fileExists(atPath: directory + "/peer-0") }

    /// Reads `directory`.
    /// - Throws: ``ReportError`` naming the directory and what is missing or unreadable.
    public init(directory: String) throws {
        self.directory = directory
        name = URL(fileURLWithPath: directory).standardizedFileURL.lastPathComponent
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw ReportError.notARun(directory, "no such directory")
        }
        let summary = fm.contents(atPath: directory + "/summary.json").flatMap { try? JSONDecoder().decode(Summary.self, from: $0) }
        seconds = summary?.seconds
        let peers = ((try? fm.contentsOfDirectory(atPath: directory)) ?? [])
            .compactMap { $0.hasPrefix("peer-") ? Int($0.dropFirst("peer-".count)) : nil }.sorted()
        if !peers.isEmpty {
            let models = Dictionary((summary?.peers ?? []).map { ($0.rank, $0.model) }, uniquingKeysWith: { first, _ in first })
            for rank in peers {
                let path = "\(directory)/peer-\(rank)/metrics.jsonl"
                guard fm.fileExists(atPath: path) else { continue }
                var member = Member(label: "p\(rank)" + (models[rank].map { " " + $0 } ?? ""), rank: rank)
                try Self.read(path) { kind, record in
                    if kind == "step" { member.steps.append(record) } else if kind == "epoch" { member.epochs.append(record) }
                }
                members.append(member)
            }
            if fm.fileExists(atPath: directory + "/metrics.jsonl") {
                try Self.read(directory + "/metrics.jsonl") { kind, record in
                    if kind == "epoch" { cohortEpochs.append(record) }
                }
            }
        } else if fm.fileExists(atPath: directory + "/metrics.jsonl") {
            var member = Member(label: Self.trainedModel(directory) ?? "network")
            try Self.read(directory + "/metrics.jsonl") { kind, record in
                if kind == "step" { member.steps.append(record) } else if kind == "epoch" { member.epochs.append(record) }
            }
            members.append(member)
        }
        if let rate = summary?.images_per_s, let seconds = summary?.seconds, let steps = summary?.steps, steps > 0 {
            imagesPerStep = (rate * seconds / steps * 1000).rounded() / 1000
        } else if let data = fm.contents(atPath: directory + "/options.json"),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                  let batch = (object["batchSize"] as? NSNumber)?.doubleValue {
            imagesPerStep = batch
        }
        guard !members.isEmpty else {
            throw ReportError.notARun(directory, "no metrics.jsonl (a run of cohort launch or cohort train)")
        }
        guard members.contains(where: { !$0.steps.isEmpty || !$0.epochs.isEmpty }) else {
            throw ReportError.notARun(directory, "its metrics files hold no step (the run stopped before its first step; its output or "
                                      + "log files say why)")
        }
    }

    /// The run with only the peers whose rank is in `ranks` (a single network is kept); for comparing
    /// runs one network each.
    public func keepingPeers(_ ranks: Set<Int>) -> RunRecords {
        var copy = self
        copy.members = members.filter { $0.rank.map(ranks.contains) ?? true }
        return copy
    }

    /// Calls `body(kind, numeric fields)` for every record of `path` (``MetricsRecord``, as the trainer,
    /// the peers and the cohort write them); lists of numbers become `name.0`, `name.1`, ... (a cohort
    /// epoch's `peer_top1`).
    static func read(_ path: String, _ body: (String, [String: Double]) -> Void) throws {
        guard let data = FileManager.default.contents(atPath: path), String(data: data, encoding: .utf8) != nil else {
            throw ReportError.notARun(path, "unreadable")
        }
        let decoder = MetricsRecord.makeDecoder()
        for (number, line) in data.split(separator: UInt8(ascii: "\n")).enumerated() where !line.isEmpty {
            guard let record = try? decoder.decode(MetricsRecord.self, from: Data(line)) else { throw ReportError.badLine(path, number + 1) }
            body(record.kind, record.numericFields)
        }
    }

    /// The model of a `cohort train` run, from its `options.json` if it has one.
    private static func trainedModel(_ directory: String) -> String? {
        guard let data = FileManager.default.contents(atPath: directory + "/options.json"),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return nil }
        return object["model"] as? String
    }
}

/// Why a report could not be made.
public enum ReportError: Error, CustomStringConvertible {
    case notARun(String, String)
    case badLine(String, Int)
    case cannotWrite(String, String)

    public var description: String {
        switch self {
        case .notARun(let path, let why): "\(path) is not a run directory: \(why)"
        case .badLine(let path, let line): "\(path), line \(line): not a JSON object"
        case .cannotWrite(let path, let why): "cannot write \(path): \(why)"
        }
    }
}
