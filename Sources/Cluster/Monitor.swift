import Foundation
import Wire
import ZeroMQ

/// A subscriber to a coordinator's log stream (`cohort monitor`).
public final class StreamSubscriber {
    private let context: ZMQContext
    private let socket: ZMQSocket

    /// Connects to `endpoint` (ZeroMQ retries until the coordinator is there); with `keys` (this
    /// monitor's pair, the coordinator's public key) over CURVE.
    public init(endpoint: String, keys: (own: CurveKeyPair, server: String)? = nil) throws {
        context = try ZMQContext()
        socket = try ZMQSocket(context, type: .subscriber)
        try socket.setLinger(milliseconds: 0)
        try socket.setMaximumMessageSize(bytes: 16 << 20)
        if let keys { try socket.makeCurveClient(serverKey: keys.server, keys: keys.own) }
        try socket.subscribe()
        try socket.connect(endpoint)
    }

    /// The next event within `milliseconds`, `nil` if none came; undecodable messages are skipped.
    public func next(milliseconds: Int) throws -> StreamEvent? {
        let deadline = Date() + Double(milliseconds) / 1000
        while true {
            let wait = max(0, Int(deadline.timeIntervalSinceNow * 1000))
            guard try socket.waitForMessage(milliseconds: wait), let frames = try socket.receive(dontWait: true) else { return nil }
            if let event = try? StreamEvent.decode(frames) { return event }
        }
    }
}

/// Which records the monitor shows.
public struct StreamFilter: Sendable {
    /// Ranks to show (`nil`: all); the coordinator is shown when `coordinator` is set.
    public var ranks: Set<Int>?
    public var coordinator: Bool
    /// The lowest level shown.
    public var minimumLevel: String

    public init(ranks: Set<Int>? = nil, coordinator: Bool = true, minimumLevel: String = "info") {
        self.ranks = ranks; self.coordinator = coordinator; self.minimumLevel = minimumLevel
    }

    public func accepts(_ event: StreamEvent) -> Bool {
        switch event {
        case .log(let r):
            guard LogRecord.severity(r.level) >= LogRecord.severity(minimumLevel) else { return false }
            if let rank = r.rank { return ranks.map { $0.contains(rank) } ?? true }
            return coordinator
        case .status(let s):
            return ranks.map { $0.contains(s.rank) } ?? true
        case .phase(let p):
            if let rank = p.rank { return ranks.map { $0.contains(rank) } ?? true }
            return coordinator
        case .end:
            return true
        }
    }
}

/// The monitor's status view: what the coordinator is doing, then one row per peer with its phase, its
/// progress, its latest test accuracy and when it was last heard of.
public struct StatusTable: Sendable {
    private var rows: [Int: PeerStatus] = [:]
    private var lastHeard: [Int: Date] = [:]
    private var phases: [Int: PhaseChange] = [:]
    private var coordinatorPhase: PhaseChange?
    /// The latest test accuracy of each peer, from its status or its epoch line.
    private var testAccuracy: [Int: Double] = [:]

    public init() {}

    /// Takes in an event received at `time`.
    public mutating func update(_ event: StreamEvent, at time: Date = Date()) {
        switch event {
        case .status(let s):
            rows[s.rank] = s
            lastHeard[s.rank] = time
            if let t = s.testAccuracy { testAccuracy[s.rank] = t }
            // A step's status means the peer trains, whatever it said before (joining, waiting, evaluating).
            if phases[s.rank]?.phase != .training {
                phases[s.rank] = PhaseChange(rank: s.rank, host: s.host, phase: .training, time: s.time)
            }
        case .log(let r):
            if let rank = r.rank { lastHeard[rank] = time }
        case .phase(let p):
            if let rank = p.rank {
                phases[rank] = p
                lastHeard[rank] = time
            } else {
                coordinatorPhase = p
            }
        case .end(let e):
            coordinatorPhase = PhaseChange(rank: nil, host: coordinatorPhase?.host ?? "", phase: e.ok ? .finished : .absent,
                                           detail: e.ok ? "run finished" : "run failed: \(e.reason)", time: e.time)
            for rank in phases.keys where phases[rank]!.phase != .absent {
                phases[rank] = PhaseChange(rank: rank, host: phases[rank]!.host, phase: .finished, time: e.time)
            }
        }
    }

    /// The phase shown for `rank` (nil before anything was heard of it).
    public func phase(of rank: Int) -> Phase? { phases[rank]?.phase }

    /// The table as text, ages measured at `now`.
    public func render(now: Date = Date()) -> String {
        var text = ""
        if let c = coordinatorPhase {
            text = "coordinator: \(c.phase.rawValue)" + (c.detail.map { " (\($0))" } ?? "") + "\n"
        }
        let header = ["peer", "host", "phase", "model", "epoch", "step", "loss", "train acc", "test acc", "emb cos", "img/s", "exchange", "heard"]
        var lines = [header]
        for rank in Set(rows.keys).union(lastHeard.keys).union(phases.keys).sorted() {
            let heard = lastHeard[rank].map { String(format: "%.0f s ago", now.timeIntervalSince($0)) } ?? "-"
            let phase = phases[rank].map { $0.phase.rawValue } ?? "-"
            let test = testAccuracy[rank].map { String(format: "%.2f%%", 100 * $0) } ?? "-"
            guard let s = rows[rank] else {
                lines.append(["\(rank)", phases[rank]?.host ?? "-", phase, "-", "-", "-", "-", "-", test, "-", "-", "-", heard])
                continue
            }
            lines.append([
                "\(rank)", s.host, phase, s.model, "\(s.epoch + 1)/\(s.epochs)", "\(s.step + 1)/\(s.stepsPerEpoch)", String(format: "%.4f", s.loss),
                String(format: "%.2f%%", 100 * s.accuracy), test,
                s.embeddingCosine.map { String(format: "%.3f", $0) + ($0 > 0.99 ? " (collapsed)" : "") } ?? "-",
                String(format: "%.0f", s.imagesPerSecond),
                String(format: "%.1f ms (%.1f%%)", 1000 * s.exchangeSeconds, 100 * s.exchangeSeconds / max(s.stepSeconds, 1e-9)), heard,
            ])
        }
        let widths = header.indices.map { c in lines.map { $0[c].count }.max()! }
        return text + lines.map { row in
            row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}
