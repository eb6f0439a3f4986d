import Foundation
import Logging

/// Warnings about one sender, at most `limit` per `interval`: a flood of bad messages costs a line per
/// interval ("... and 9,997 more from 0a1b2c in the last 10 s"), not a line per message.
final class RateLimitedWarnings {
    let limit: Int
    let interval: Double
    private var windows: [String: (start: Date, count: Int)] = [:]

    init(limit: Int = 3, interval: Double = 10) { self.limit = limit; self.interval = interval }

    /// Logs `message` about `sender` unless its quota for the current interval is spent; when a new
    /// interval starts, first says how many were suppressed in the last.
    func warn(_ logger: Logger, sender: String, _ message: @autoclosure () -> Logger.Message,
              metadata: @autoclosure () -> Logger.Metadata = [:], now: Date = Date()) {
        var window = windows[sender] ?? (start: now, count: 0)
        if now.timeIntervalSince(window.start) >= interval {
            if window.count > limit {
                logger.warning("suppressed \(window.count - limit) more warning(s) about \(sender) in the last \(Int(interval)) s")
            }
            window = (start: now, count: 0)
        }
        window.count += 1
        if window.count <= limit { logger.warning(message(), metadata: metadata()) }
        if window.count == limit + 1 {
            logger.warning("further warnings about \(sender) are suppressed for \(Int(interval)) s")
        }
        windows[sender] = window
        if windows.count > 10_000 { windows = windows.filter { now.timeIntervalSince($0.value.start) < interval } }
    }
}
