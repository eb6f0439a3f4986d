import Foundation
import Logging
import Synchronization
import Wire

/// Where a cohort process's log records go.
public protocol LogSink: Sendable {
    func emit(_ record: LogRecord)
}

/// A swift-log handler that turns every record into a ``LogRecord`` (level, time, rank, host, label,
/// message, metadata) and hands it to a sink.
public struct CohortLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let rank: Int?
    let host: String
    let sink: any LogSink

    public init(label: String, rank: Int?, host: String = ProcessInfo.processInfo.hostName, level: Logger.Level = .info, sink: any LogSink) {
        self.label = label; self.rank = rank; self.host = host; self.logLevel = level; self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (k, v) in metadata { fields[k] = "\(v)" }
        for (k, v) in event.metadata ?? [:] { fields[k] = "\(v)" }
        sink.emit(LogRecord(time: Date().timeIntervalSince1970, level: event.level.rawValue, rank: rank, host: host, label: label,
                            message: event.message.description, metadata: fields))
    }
}

/// Prints records on standard error, one line each: time, level, who, message, metadata.
public struct ConsoleSink: LogSink {
    public init() {}

    public func emit(_ record: LogRecord) {
        FileHandle.standardError.write(Data((ConsoleSink.format(record) + "\n").utf8))
    }

    /// `22:01:07 info  peer 1@node-a  message  key=value`
    public static func format(_ record: LogRecord, showHost: Bool = true) -> String {
        let date = Date(timeIntervalSince1970: record.time)
        let time = date.formatted(Date.ISO8601FormatStyle(timeZone: .current).time(includingFractionalSeconds: false)
            .timeSeparator(.colon))
        let who = (record.rank.map { "peer \($0)" } ?? "coordinator") + (showHost ? "@\(record.host)" : "")
        let level = record.level.padding(toLength: 8, withPad: " ", startingAt: 0)
        var line = "\(time) \(level) \(who)  \(record.message)"
        if !record.metadata.isEmpty {
            line += "  " + record.metadata.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        return line
    }
}

/// Keeps records until ``drain()`` takes them: a peer sends them to the coordinator with its next
/// message. Holds at most `capacity` records (the oldest are dropped, and counted).
public final class BufferedSink: LogSink {
    private struct State {
        var records: [LogRecord] = []
        var dropped = 0
    }
    private let state = Mutex(State())
    let capacity: Int

    public init(capacity: Int = 10_000) { self.capacity = capacity }

    public func emit(_ record: LogRecord) {
        state.withLock { s in
            if s.records.count >= capacity { s.records.removeFirst(); s.dropped += 1 }
            s.records.append(record)
        }
    }

    /// The records kept so far, oldest first, and how many were dropped since the last drain.
    public func drain() -> (records: [LogRecord], dropped: Int) {
        state.withLock { s in
            defer { s.records = []; s.dropped = 0 }
            return (s.records, s.dropped)
        }
    }
}

/// Sends every record to each of `sinks`, those at or above their threshold.
public struct FanOutSink: LogSink {
    let sinks: [(sink: any LogSink, minimum: Logger.Level)]

    public init(_ sinks: [(sink: any LogSink, minimum: Logger.Level)]) { self.sinks = sinks }

    public func emit(_ record: LogRecord) {
        let severity = LogRecord.severity(record.level)
        for (sink, minimum) in sinks where severity >= LogRecord.severity(minimum.rawValue) { sink.emit(record) }
    }
}
