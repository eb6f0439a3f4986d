import Foundation

/// Progress of one long phase that is not a training step — evaluating a network on the test set, loading
/// a data set, writing a checkpoint — as lines a person can follow: one when it starts, one about every
/// `interval` seconds with the count done and an ETA, one when it ends with its duration. Lines go to
/// `report` (a logger, the console), so they reach the merged output and the log stream alike.
public final class PhaseProgress {
    /// What is done, e.g. "evaluating the teacher (resnet56) on the test set".
    public let what: String
    /// The unit counted, e.g. "images".
    public let unit: String
    public let total: Int
    private let report: (String) -> Void
    private let interval: TimeInterval
    private let clock: () -> Date
    private let started: Date
    private var lastLine: Date
    /// Added to every count given to ``update(done:)`` (a phase made of several passes, e.g. one per network).
    public var offset = 0

    /// Starts the phase and reports its first line.
    /// - Parameters:
    ///   - interval: seconds between progress lines (none for a phase shorter than this).
    ///   - clock: the time source (tests pass a fake one).
    public init(_ what: String, total: Int, unit: String = "images", interval: TimeInterval = 5,
                clock: @escaping () -> Date = Date.init, report: @escaping (String) -> Void) {
        self.what = what; self.total = total; self.unit = unit; self.report = report; self.interval = interval; self.clock = clock
        started = clock()
        lastLine = started
        report("\(what): \(Self.count(total)) \(unit)")
    }

    /// Records that `done` of ``total`` are done; reports a line with the ETA when `interval` has passed.
    public func update(done: Int) {
        let done = done + offset
        let now = clock()
        guard done < total, now.timeIntervalSince(lastLine) >= interval else { return }
        lastLine = now
        let elapsed = now.timeIntervalSince(started)
        let eta = done > 0 ? elapsed * Double(total - done) / Double(done) : .infinity
        report("\(what): \(Self.count(done))/\(Self.count(total)) \(unit), ETA \(ProgressReporter.duration(eta))")
    }

    /// Ends the phase: `result` (e.g. "top-1 91.20%") and the time it took.
    public func finish(_ result: String? = nil) {
        let seconds = clock().timeIntervalSince(started)
        report("\(what): done" + (result.map { ", \($0)" } ?? "") + String(format: " (%.1f s)", seconds))
    }

    /// `12345` as "12,345".
    public static func count(_ n: Int) -> String {
        let digits = String(n.magnitude)
        var out = ""
        for (i, c) in digits.enumerated() {
            if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return (n < 0 ? "-" : "") + out
    }
}
