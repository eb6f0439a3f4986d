import Foundation
import Synchronization
import Wire
import ZeroMQ

/// The coordinator's log stream: publishes every record and status (its own and the peers') on a
/// ZeroMQ PUB socket and appends it to `OUTPUT/stream.jsonl`. Safe to use from any thread.
public final class StreamPublisher: LogSink {
    private struct State {
        let socket: ZMQSocket
        let file: FileHandle?
        var endpoint = ""
    }
    private let state: Mutex<State?>

    /// Creates the PUB socket (``bind(_:curveSecretKey:)`` binds it) and opens `file` for appending.
    public init(context: ZMQContext, file: String?) throws {
        let socket = try ZMQSocket(context, type: .publisher)
        try socket.setLinger(milliseconds: 1000)
        // A slow subscriber must not hold the coordinator up: beyond this many queued messages, drop.
        try socket.setSendHighWaterMark(100_000)
        var handle: FileHandle?
        if let file {
            if !FileManager.default.fileExists(atPath: file) { _ = FileManager.default.createFile(atPath: file, contents: nil) }
            handle = FileHandle(forWritingAtPath: file)
            _ = try? handle?.seekToEnd()
        }
        state = Mutex(State(socket: socket, file: handle))
    }

    /// Binds `endpoint`, as a CURVE server with `curveSecretKey` when given (subscribers are then
    /// authenticated by the ZAP handler in the stream's domain). Events before the bind go to the file only.
    public func bind(_ endpoint: String, curveSecretKey: String?) throws {
        try state.withLock { s in
            guard let socket = s?.socket else { return }
            if let curveSecretKey {
                try socket.makeCurveServer(secretKey: curveSecretKey)
                try socket.setZAPDomain(ZAPHandler.streamDomain)
            }
            try socket.bind(endpoint)
            s?.endpoint = socket.lastEndpoint
        }
    }

    /// The endpoint the stream is bound to, resolved (a port of `*` becomes the actual port).
    public var endpoint: String { state.withLock { $0?.endpoint ?? "" } }

    public func emit(_ record: LogRecord) { publish(.log(record)) }

    /// Publishes `event` and writes its line to the stream file.
    public func publish(_ event: StreamEvent) {
        let frames = event.frames()
        state.withLock { s in
            guard let s else { return }
            if !s.endpoint.isEmpty { try? s.socket.send(frames, dontWait: true) }
            s.file?.write(Data((StreamPublisher.jsonLine(frames) + "\n").utf8))
        }
    }

    /// Flushes and closes the socket and the file; later events are dropped.
    public func close() {
        state.withLock { s in
            try? s?.file?.close()
            s = nil
        }
    }

    /// A stream event as one JSON object: its record's fields and `"topic"`.
    public static func jsonLine(_ frames: [[UInt8]]) -> String {
        let topic = String(decoding: frames[0], as: UTF8.self)
        let body = String(decoding: frames[1], as: UTF8.self)
        return "{\"topic\":\"\(topic)\"," + body.dropFirst()
    }
}
